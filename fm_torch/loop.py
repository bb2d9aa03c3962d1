"""The training loop (PyTorch): it receives every piece and knows none of them by name.

    state = fit(net, data, objective, recipe, steps=N, batch=B, coupling=None, draws=draws)

One step n (the order of the random draws is fixed; docs/training_core.md):
    x1, y, x0_src = data.batch(draws, B)          # (B, *shape), (B,) or None, pairs' x0 or None
    t  = recipe.times.sample(draws, B, x1.dtype)   # (B,)
    x0 = draws.normal("x0", x1.shape, x1.dtype)    # replaced by x0_src when the source has it
    x0 = x0[coupling(x0, x1, y, draws)]            # only with a coupling
    y  = num_classes where draws.uniform("drop", (B,)) < p   # only with labels and p > 0
    objective.prepare(batch, draws)                # extra draws (MeanFlow's r, t)
    L = objective.loss(net, batch)                 # under bf16 autocast if asked and allowed
    L.backward(); clip to recipe.max_grad_norm; AdamW at eta_n = recipe.lr_at(n); EMA update
The network is any nn.Module with forward(x, t, y=None) (MeanFlow: also r=); the null label
of classifier-free guidance is y == data.num_classes.

Device and speed (arguments of fit): the draws are made on the draws' device (GeneratorDraws
on the training device); `bf16` autocasts the objective (those with mixed_precision);
`compile` is a torch.compile backend name (True: inductor); under torchrun (world_size > 1,
process group initialised by the caller) the net is wrapped in DistributedDataParallel,
each rank drawing from its own shard and generator.

Host syncs: the losses stay on the device and are read every `sync_every` steps, at every
step a callback asks for (`sync_needed`), at a stop request and at the last step, with one
all-reduce of [losses, stop flag] under DDP. The first non-finite loss is named by its exact
step (TrainingDiverged). A stop request (state.stop_requested, e.g. set by a signal
callback) ends a single process after the current step; under DDP the ranks agree on it
at the next sync, so every rank stops after the same step.

Callbacks (any object; each method optional): on_start(state); on_step(state, loss) with
the loss a detached device tensor (reading it costs a host sync); sync_needed(state) -> bool;
on_sync(state, rows) after each sync with rows [(step, loss, images_per_s)], where
state.stop says the run ends after this step (checkpoints, loss.csv, progress samples and
the signal stop are callbacks built by fm_torch/train.py); on_end(state).
"""

import math
import time
from contextlib import nullcontext

import torch
import torch.distributed as dist

from fm_torch.ema import EMA
from fm_torch.schedules import set_lr

__all__ = ["TrainingDiverged", "TrainState", "Progress", "fit", "check_finite_weights"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class TrainState:
    """Everything a step changes: step count, net, EMA, optimizer, draws, losses
    [(step, loss, images/s), ...] read so far; `stop_requested` (a callback's wish), `stop`
    (agreed: the loop ends after this step), `note` (appended to a divergence's message,
    e.g. where the last checkpoint is) and the seconds spent in coupling and steps."""

    def __init__(self, net, ema, optimizer, draws, step=0, losses=None):
        self.net, self.ema, self.optimizer, self.draws = net, ema, optimizer, draws
        self.step = int(step)
        self.losses = [] if losses is None else list(losses)
        self.stop_requested = self.stop = False
        self.note = ""
        self.coupling = None
        self.steps = None
        self.world_size = 1
        self.coupling_s, self.step_s, self.steps_timed = 0.0, 0.0, 0


class Progress:
    """A tqdm bar: the mean loss of the last 50 read steps, images/s, and the coupling's
    share of the step time when there is a coupling."""

    def __init__(self, desc="train", enabled=True):
        self.desc, self.enabled, self.bar = desc, enabled, None

    def on_start(self, state):
        from tqdm import tqdm

        self.bar = tqdm(total=state.steps, initial=state.step, desc=self.desc,
                        disable=not self.enabled, mininterval=0.5, dynamic_ncols=True)

    def on_step(self, state, loss):
        self.bar.update(1)

    def on_sync(self, state, rows):
        recent = state.losses[-50:]
        extra = {}
        if state.coupling is not None and state.step_s > 0:
            extra["cpl"] = f"{100 * state.coupling_s / state.step_s:.0f}%"
        self.bar.set_postfix(loss=f"{sum(v for _, v, _ in recent) / len(recent):.4f}",
                             img_s=f"{rows[-1][2]:.0f}", refresh=False, **extra)

    def on_end(self, state):
        if self.bar is not None:
            self.bar.close()


def check_finite_weights(model, step, note=""):
    """TrainingDiverged when a parameter is NaN or infinite (one host sync for all)."""
    finite = torch.stack([torch.isfinite(p).all() for p in model.parameters()])
    if not bool(finite.all()):
        raise TrainingDiverged(f"weights became NaN or infinite at step {step}; stopped{note}")


def _sync(window, stop, world_size):
    """(rows, stop): the losses of `window` [(step, loss tensor, rate)] read in one host sync.

    Under DDP the losses and this rank's stop flag travel in one all-reduce (sum), so
    every rank sees the mean loss of every step (and a NaN on any rank) and the same
    stop decision, at the same step.
    """
    values = torch.stack([loss for _, loss, _ in window])  # (k,) on the device
    if world_size > 1:
        values = torch.cat([values, values.new_tensor([float(stop)])])
        dist.all_reduce(values)
        stop = bool(values[-1] > 0)
        values = values[:-1] / world_size
    rows = [(s, v, r) for (s, _, r), v in zip(window, values.tolist(), strict=True)]
    return rows, stop


def _call(callbacks, method, *args):
    for cb in callbacks:
        hook = getattr(cb, method, None)
        if hook is not None:
            hook(*args)


def fit(net, data, objective, recipe, *, steps, batch, coupling=None, draws, optimizer=None,
        ema=None, callbacks=(), state=None, device=None, bf16=False, compile=False,
        world_size=None, sync_every=1):
    """Train `net` until state.step == steps (module docstring); returns the TrainState.

    optimizer: default AdamW(lr = recipe.lr_at(0), recipe.weight_decay); ema: default
    EMA(net, recipe.ema_decay); state: a TrainState to continue (resume); device: where the
    net and data live (default: the net's); world_size: default the process group's size.
    """
    B = int(batch)
    if world_size is None:
        world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if device is None:
        device = next(net.parameters()).device
    device = torch.device(device)
    if optimizer is None:
        optimizer = torch.optim.AdamW(net.parameters(), lr=recipe.lr_at(0),
                                      weight_decay=recipe.weight_decay)
    if ema is None:
        ema = EMA(net, recipe.ema_decay)
    if state is None:
        state = TrainState(net, ema, optimizer, draws)
    state.net, state.ema, state.optimizer, state.draws = net, ema, optimizer, draws
    state.coupling, state.steps, state.world_size = coupling, int(steps), world_size
    state.stop_requested = state.stop = False
    objective.check(net)
    if hasattr(data, "to"):
        data = data.to(device)
    run = net
    if world_size > 1:
        run = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None)
    if compile:
        run = torch.compile(run, backend="inductor" if compile is True else compile)
    mixed = bf16 and getattr(objective, "mixed_precision", True)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if mixed else nullcontext()
    p, num_classes = recipe.label_dropout, data.num_classes
    window, t_start, images = [], time.perf_counter(), 0
    net.train()
    _call(callbacks, "on_start", state)
    try:
        while state.step < state.steps and not state.stop:
            step_start = time.perf_counter()
            x1, y, x0_src = data.batch(draws, B)  # (B, *shape), (B,) or None, pairs' x0
            t = recipe.times.sample(draws, B, x1.dtype)  # (B,)
            # drawn even when the source brings x0 (reflow pairs): the stream of older runs
            x0 = draws.normal("x0", x1.shape, x1.dtype)  # (B, *shape)
            if x0_src is not None:
                x0 = x0_src
            if coupling is not None:
                start = time.perf_counter()
                x0 = x0[coupling(x0, x1, y, draws)]  # (B, *shape) re-paired noise
                state.coupling_s += time.perf_counter() - start
            if y is not None and num_classes is not None and p > 0:
                drop = draws.uniform("drop", (B,), torch.float32) < p  # (B,)
                y = torch.where(drop, torch.full_like(y, num_classes), y)  # null class (CFG)
            pieces = {"x0": x0, "x1": x1, "y": y, "t": t}
            objective.prepare(pieces, draws)
            with autocast:
                loss = objective.loss(run, pieces)
            loss, logged = loss if isinstance(loss, tuple) else (loss, loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if recipe.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(net.parameters(), recipe.max_grad_norm)
            set_lr(optimizer, recipe.lr_at(state.step))
            optimizer.step()
            ema.update(net)
            state.step_s += time.perf_counter() - step_start
            state.steps_timed += 1
            state.step += 1
            images += B * world_size
            window.append((state.step, logged.detach(), images / (time.perf_counter() - t_start)))
            _call(callbacks, "on_step", state, logged.detach())
            # one process stops at once on a request; under DDP the ranks agree at a sync
            stop = state.stop_requested and world_size == 1
            needed = any(cb.sync_needed(state) for cb in callbacks if hasattr(cb, "sync_needed"))
            if (stop or needed or state.step == state.steps
                    or state.step % sync_every == 0):
                rows, state.stop = _sync(window, state.stop_requested, world_size)
                window = []
                bad = next(((s, v) for s, v, _ in rows if not math.isfinite(v)), None)
                if bad is not None:
                    raise TrainingDiverged(f"loss is {bad[1]} at step {bad[0]}; "
                                           f"stopped{state.note}")
                state.losses.extend(rows)
                _call(callbacks, "on_sync", state, rows)
    finally:
        _call(callbacks, "on_end", state)
    return state
