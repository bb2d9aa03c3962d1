"""The training loop (NumPy): it receives every piece and knows none of them by name.

    state = fit(net, data, objective, recipe, steps=N, batch=B, coupling=None, draws=draws)

One step n (the order of the random draws is fixed; docs/training_core.md):
    x1, y, x0_src = data.batch(draws, B)          # (B, D), (B,) or None, (B, D) or None
    t  = recipe.times.sample(draws, B, dtype)      # (B,)
    x0 = draws.normal("x0", (B, D), dtype)         # replaced by x0_src when the source has it
    x0 = x0[coupling(x0, x1, y, draws)]            # only with a coupling
    y  = num_classes where draws.uniform("drop", (B,)) < p   # only with labels and p > 0
    objective.prepare(batch, draws)                # extra draws (MeanFlow's r, t)
    loss, dv = objective.loss_and_dv(net, batch)   # dv = dL/d(output of the latest pass)
    Adam at eta_n = recipe.lr_at(n):  opt.step(net.backward(dv));  ema.update(net.params)
    callbacks: on_step(state, loss); any may set state.stop (the loop ends after the step)
A non-finite loss raises TrainingDiverged before the update, so the weights stay finite.

The network protocol (any object, ours or the user's):
    net.params                 dict name -> ndarray, updated in place by the optimizer
    net.forward(x, t, y=None)  x (B, D) flat, t (B,) in [0, 1], y (B,) int or None; returns
                               v (B, D) and caches what backward needs. With labels the
                               null class (classifier-free guidance) is y == num_classes,
                               so a conditional net has num_classes + 1 label embeddings.
    net.backward(dv)           dv (B, D) = dL/dv of the latest forward; returns the gradients,
                               a dict with the keys of params (arrays of the same shapes)
    optional: net.jvp(x, t, dx, y=None, r=None, dr=0., dt=0.) -> (u, du) for MeanFlow (then
    net.forward takes r= too and backward follows the jvp's primal pass);
    net.divergence(x, t, y) for the exact likelihood; net.save_npz(path) and a class
    from_npz(path) for run folders (train.py writes model.npz with them when they exist).
Image nets take flat vectors too and reshape to (C, H, W) themselves (fm_numpy's ConvUNet).

A data source: `.shape` (one sample in model space), `.num_classes` (int or None) and
`.batch(draws, B) -> (x1, y, x0)`, x1 flat (B, prod(shape)) (fm_numpy.data has them).
An objective: `.check(net)`, `.prepare(batch, draws)`, `.loss_and_dv(net, batch)`
(fm_numpy.objectives). A coupling: `coupling(x0, x1, y, draws) -> perm` (fm_numpy.coupling).
"""

import math
import time

import numpy as np

from fm_numpy.ema import EMA
from fm_numpy.optim import Adam

__all__ = ["TrainingDiverged", "TrainState", "Callback", "Progress", "fit"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class TrainState:
    """Everything a step changes: step count, net, EMA, optimizer, draws, losses
    [(step, loss), ...]; `stop` (a callback's request), `note` (appended to a divergence's
    message, e.g. where the last checkpoint is) and the seconds spent in coupling and steps."""

    def __init__(self, net, ema, optimizer, draws, step=0, losses=None):
        self.net, self.ema, self.optimizer, self.draws = net, ema, optimizer, draws
        self.step = int(step)
        self.losses = [] if losses is None else list(losses)
        self.stop = False
        self.note = ""
        self.coupling = None
        self.steps = None
        self.coupling_s, self.step_s, self.steps_timed = 0.0, 0.0, 0


class Callback:
    """Hooks of the loop; subclass and override what you need."""

    def on_start(self, state):
        pass

    def on_step(self, state, loss):
        pass

    def on_end(self, state):
        pass


class Progress(Callback):
    """A tqdm bar (mean loss of the last 100 steps; the coupling's share of the step time
    when there is a coupling) when tqdm is importable; without tqdm, nothing."""

    def __init__(self, desc="train"):
        self.desc, self.bar, self.window = desc, None, []

    def on_start(self, state):
        try:
            from tqdm import tqdm
        except ImportError:  # the NumPy-only promise: tqdm is optional
            return
        self.bar = tqdm(total=state.steps, initial=state.step, desc=self.desc,
                        mininterval=0.5, dynamic_ncols=True)

    def on_step(self, state, loss):
        if self.bar is None:
            return
        self.window = (self.window + [loss])[-100:]
        if state.step % 100 == 0:
            extra = {}
            if state.coupling is not None and state.step_s > 0:
                extra["cpl"] = f"{100 * state.coupling_s / state.step_s:.0f}%"
            self.bar.set_postfix(loss=f"{np.mean(self.window):.4f}", refresh=False, **extra)
        self.bar.update(1)

    def on_end(self, state):
        if self.bar is not None:
            self.bar.close()


def _drop_labels(y, num_classes, p, draws):
    """y -> the null class num_classes where a uniform < p (classifier-free guidance)."""
    drop = draws.uniform("drop", (len(y),), np.float64) < p  # (B,)
    return np.where(drop, num_classes, y)


def fit(net, data, objective, recipe, *, steps, batch, coupling=None, draws, optimizer=None,
        ema=None, callbacks=(), state=None):
    """Train `net` until state.step == steps (module docstring); returns the TrainState.

    optimizer: default Adam(net.params, decoupled weight decay and clipping of the recipe);
    ema: default EMA(net.params, recipe.ema_decay); state: a TrainState to continue (resume).
    """
    B = int(batch)
    if optimizer is None:
        optimizer = Adam(net.params, lr=recipe.lr_at(0), weight_decay=recipe.weight_decay,
                         decoupled=True, max_grad_norm=recipe.max_grad_norm)
    if ema is None:
        ema = EMA(net.params, recipe.ema_decay)
    if state is None:
        state = TrainState(net, ema, optimizer, draws)
    state.net, state.ema, state.optimizer, state.draws = net, ema, optimizer, draws
    state.coupling, state.steps, state.stop = coupling, int(steps), False
    objective.check(net)
    p, num_classes = recipe.label_dropout, data.num_classes
    for cb in callbacks:
        cb.on_start(state)
    try:
        while state.step < state.steps and not state.stop:
            step_start = time.perf_counter()
            x1, y, x0_src = data.batch(draws, B)  # (B, D), (B,) or None, (B, D) or None
            t = recipe.times.sample(draws, B, x1.dtype)  # (B,)
            # drawn even when the source brings x0 (reflow pairs): the stream of older runs
            x0 = draws.normal("x0", x1.shape, x1.dtype)  # (B, D)
            if x0_src is not None:
                x0 = x0_src
            if coupling is not None:
                start = time.perf_counter()
                x0 = x0[coupling(x0, x1, y, draws)]  # (B, D) re-paired noise
                state.coupling_s += time.perf_counter() - start
            if y is not None and num_classes is not None and p > 0:
                y = _drop_labels(y, num_classes, p, draws)  # (B,)
            pieces = {"x0": x0, "x1": x1, "y": y, "t": t}
            objective.prepare(pieces, draws)
            loss, dv = objective.loss_and_dv(net, pieces)
            if not math.isfinite(loss):
                raise TrainingDiverged(f"loss is {loss} at step {state.step + 1}; stopped"
                                       f"{state.note}")
            optimizer.lr = recipe.lr_at(state.step)
            optimizer.step(net.backward(dv))
            ema.update(net.params)
            state.step_s += time.perf_counter() - step_start
            state.steps_timed += 1
            state.step += 1
            state.losses.append((state.step, loss))
            for cb in callbacks:
                cb.on_step(state, loss)
    finally:
        for cb in callbacks:
            cb.on_end(state)
    return state
