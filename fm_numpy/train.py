"""Training runs (NumPy): settings -> objects -> the loop (fm_numpy/loop.py), in a run folder.

train(out, **settings) builds, from the settings of fm_numpy/train_config.py (the only place
besides this file that knows the names "mnist", "moons", "meanflow", "ot"):
    data       open_data: ToySource, MnistSource, PairSource (reflow pairs), or the user's
               source / array (data=...)
    net        the MLP / ResMLP / ConvUNet sized from the data, or the user's net (net=...)
    objective  FlowMatching(path) or MeanFlow(path, ratio, norm_p) (fm_numpy.objectives)
    coupling   None (independent) or OT, OTClass, Sinkhorn (fm_numpy.coupling)
    recipe     Recipe(lr schedule, time sampler (Fixed(0) when distilling), EMA decay, ...)
    draws      RngDraws(default_rng(seed)) unless draws=... (e.g. a Recorder or Replay)
and hands them to fit() with callbacks for the run folder and the stop signals.

A run folder holds config.json, loss.csv (step,loss), model.npz (the network with the EMA
weights, for sampling), checkpoint.npz (raw weights, EMA, Adam moments, the draws' state,
the step) and, with a coupling or MeanFlow, timing.json (the coupling's share of the step
time); each written atomically every ckpt_every steps, so `resume=True` continues to
exactly the weights an uninterrupted run reaches. SIGINT or SIGTERM stops at a whole step
with a checkpoint (TrainingInterrupted); a second signal aborts.
"""

import json
import os

import numpy as np

from fm_numpy.coupling import make_coupling
from fm_numpy.data import open_data
from fm_numpy.draws import RngDraws
from fm_numpy.ema import EMA
from fm_numpy.interrupt import DeferredSigint, DeferredStop, TrainingInterrupted
from fm_numpy.io import load_npz, read_log, save_json, save_npz, write_log
from fm_numpy.loop import Callback, Progress, TrainingDiverged, TrainState, fit
from fm_numpy.models import network_for
from fm_numpy.models.threads import threaded
from fm_numpy.objectives import FlowMatching, MeanFlow
from fm_numpy.optim import Adam
from fm_numpy.paths import AffinePath, make_scheduler
from fm_numpy.schedules import LEGACY, Recipe, horizon_changed, make_recipe, make_times
from fm_numpy.train_config import (  # noqa: F401
    CUSTOM,
    DEFAULTS,
    MNIST_CONVNET_DEFAULTS,
    MNIST_DEFAULTS,
    MNIST_RESMLP_DEFAULTS,
    RESUMABLE,
    resolve_config,
)

__all__ = ["DEFAULTS", "MNIST_DEFAULTS", "MNIST_RESMLP_DEFAULTS", "MNIST_CONVNET_DEFAULTS",
           "TrainingDiverged", "TrainingInterrupted", "DeferredSigint", "DeferredStop", "train",
           "resolve_config", "build"]


def build(config, data=None, net=None, threads=None):
    """(model, net, source, objective, coupling, recipe) of a resolved config; `data`/`net`
    are the user's objects (or None: the config's). `net` is what the loop calls: the model
    itself, or the model on batch slices in threads (fm_numpy/models/threads.py)."""
    dtype = np.dtype(config["dtype"])
    source = open_data(config["data"] if data is None else data, dtype, config["n_train"],
                       config["pairs"], config["label_column"], config["val_fraction"],
                       config["seed"])  # the user's file: its split is seeded by the run
    path = AffinePath(make_scheduler(config["scheduler"]))
    meanflow = config["objective"] == "meanflow"
    if meanflow:
        objective = MeanFlow(path, config["meanflow_ratio"], config["meanflow_norm_p"])
    else:
        objective = FlowMatching(path)
    model = net
    if model is None:
        extra = {"mean_flow": True} if meanflow else {}
        if config["arch"] == "mlp":
            extra["time_scale"] = config["time_scale"]
        model = network_for(source.shape, source.num_classes, config["arch"],
                            config["seed"], dtype, hidden=config["hidden"],
                            depth=config["depth"], time_features=config["time_features"],
                            **extra)  # images (C, H, W) of any size for the ConvUNet
    # MeanFlow's loss calls the model's own JVP; a user's net runs as it is
    loop_net = model if (meanflow or net is not None) else threaded(model, config["arch"],
                                                                    threads)
    coupling = None
    if config["coupling"] != "independent":
        coupling = make_coupling(config["coupling"], config["coupling_block"])
    lr_at, _ = make_recipe(config)
    recipe = Recipe(lr_at, make_times(config), config["ema_decay"], config["weight_decay"],
                    config["max_grad_norm"], config["label_dropout"])
    return model, loop_net, source, objective, coupling, recipe


class _StopOnSignal(Callback):
    """Turns a DeferredStop's request into the loop's stop after the current step."""

    def __init__(self, stopper):
        self.stopper = stopper

    def on_step(self, state, loss):
        state.stop = state.stop or self.stopper.requested


class _RunFolder(Callback):
    """loss.csv rows, checkpoint.npz, model.npz and timing.json every ckpt_every steps, at
    the last step and at a requested stop; the weights must be finite to be saved."""

    def __init__(self, out, config, model, timing):
        self.out, self.config, self.model, self.timing = out, config, model, timing
        self.pending = []

    def _note(self, state):
        state.note = f", the last good checkpoint (step {state.step}) is kept in {self.out}"

    def on_start(self, state):
        self._note(state)
        self.last_good = state.step

    def on_step(self, state, loss):
        self.pending.append((state.step, loss))
        step = state.step
        if step % self.config["ckpt_every"] and step != state.steps and not state.stop:
            return
        if not all(np.all(np.isfinite(p)) for p in self.model.params.values()):
            raise TrainingDiverged(
                f"weights became NaN or infinite at step {step}; stopped, the last good "
                f"checkpoint (step {self.last_good}) is kept in {self.out}")
        _write_losses(os.path.join(self.out, "loss.csv"), self.pending, append=True)
        self.pending = []
        _save_checkpoint(self.out, self.config, self.model, state)
        if self.timing:
            share = state.coupling_s / state.step_s if state.step_s > 0 else 0.0
            save_json(os.path.join(self.out, "timing.json"), {
                "coupling": self.config["coupling"], "steps_timed": state.steps_timed,
                "coupling_s": state.coupling_s, "step_s": state.step_s,
                "coupling_share": share})
        self.last_good = step
        self._note(state)


def _read_losses(path, up_to_step):
    return [(int(s), float(v)) for s, v in read_log(path, up_to_step)]


def _write_losses(path, rows, append):
    write_log(path, ["step", "loss"], [(s, repr(v)) for s, v in rows], append)


def train(out, resume=False, progress=True, threads=None, draws=None, net=None, data=None,
          **settings):
    """Train a velocity field; returns (model, losses) with losses [(step, loss), ...].

    `settings` are the keys of DEFAULTS (see resolve_config). With resume=True the run in
    `out` continues from its checkpoint (settings left out, or None, are the checkpoint's;
    given ones must match it, except steps/ckpt_every).
    `threads` batch slices run at once (fm_numpy/models/threads.py; default 1 for the MLP,
    else the usable cores up to 4); not a setting of the run: the same gradient up to
    rounding, so a run may resume with another count.
    `draws`: a fm_numpy.draws.Draws (default RngDraws(default_rng(seed))); `net`: the user's
    network (the protocol in fm_numpy/loop.py); `data`: a data set's name, or the user's
    data source or array (N, ...) (fm_numpy.data.ArraySource). With objects the config
    records data/arch "custom"; a resume must pass the same objects again.
    Raises TrainingDiverged at the first non-finite loss, keeping the last checkpoint, and
    TrainingInterrupted after a SIGINT/SIGTERM stop (with a checkpoint: resume continues).
    """
    out = os.fspath(out)
    if isinstance(data, str) or data is None:
        settings["data"], data = data if data is not None else settings.get("data"), None
    else:
        settings["data"] = CUSTOM
    if net is not None:
        settings["arch"] = CUSTOM
    ckpt_path = os.path.join(out, "checkpoint.npz")
    arrays = load_npz(ckpt_path) if resume and os.path.exists(ckpt_path) else None
    if arrays is not None:  # settings not given are the run's own
        settings = {**_saved_settings(arrays, ckpt_path),
                    **{k: v for k, v in settings.items() if v is not None}}
    config = resolve_config(**settings)
    if CUSTOM in (config["data"], config["arch"]) and (
            (config["data"] == CUSTOM) != (data is not None)
            or (config["arch"] == CUSTOM) != (net is not None)):
        raise ValueError("data/arch 'custom' stand for objects: pass data=... / net=... "
                         "(the same ones the run was started with)")
    loss_path = os.path.join(out, "loss.csv")
    if resume and not os.path.exists(ckpt_path):
        raise FileNotFoundError(f"nothing to resume: {ckpt_path} does not exist")
    if not resume and os.path.exists(ckpt_path):
        raise ValueError(f"{out} already holds a run; resume it or choose another output folder")

    model, loop_net, source, objective, coupling, recipe = build(config, data, net, threads)
    ema = EMA(model.params, recipe.ema_decay)
    opt = Adam(model.params, lr=config["lr"], weight_decay=recipe.weight_decay,
               decoupled=True, max_grad_norm=recipe.max_grad_norm)
    draws = RngDraws(np.random.default_rng(config["seed"])) if draws is None else draws
    state = TrainState(loop_net, ema, opt, draws)
    if resume:
        state.step = _load_checkpoint(ckpt_path, arrays, config, model, opt, draws, ema)
        state.losses = _read_losses(loss_path, state.step)
        _write_losses(loss_path, state.losses, append=False)  # drop rows after the checkpoint
    else:
        _write_losses(loss_path, [], append=False)
    save_json(os.path.join(out, "config.json"), config)
    if getattr(source, "info", None):  # the user's file: scaling, split, class names
        save_json(os.path.join(out, "data.json"), source.info)

    timing = coupling is not None or config["objective"] == "meanflow"
    with DeferredStop() as stopper:
        callbacks = [_StopOnSignal(stopper), _RunFolder(out, config, model, timing)]
        if progress:
            callbacks.append(Progress())
        state = fit(loop_net, source, objective, recipe, steps=config["steps"],
                    batch=config["batch"], coupling=coupling, draws=draws, optimizer=opt,
                    ema=ema, callbacks=callbacks, state=state)
        if state.stop or stopper.requested:
            raise TrainingInterrupted(f"interrupted at step {state.step} ({stopper.signal}); "
                                      f"checkpoint saved in {out}, resume to continue")
    return model, state.losses


def _save_checkpoint(out, config, model, state):
    arrays = {f"model.{k}": p for k, p in model.params.items()}
    arrays.update({f"adam.{k}": v for k, v in state.optimizer.state_dict().items()})
    arrays.update({f"ema.{k}": v for k, v in state.ema.state_dict().items()})
    arrays.update({k: np.asarray(v) for k, v in state.draws.state_dict().items()})
    save_npz(os.path.join(out, "checkpoint.npz"), step=np.array(state.step, dtype=np.int64),
             config=np.array(json.dumps(config)), **arrays)
    # model.npz holds the EMA weights (what sampling uses), in the network's save_npz format
    save_npz(os.path.join(out, "model.npz"),
             config=np.array(json.dumps(getattr(model, "config", {}))), **state.ema.params)


def _saved_settings(arrays, ckpt_path):
    """The training settings stored in a checkpoint's arrays (those DEFAULTS knows), for a
    resume that leaves them out; {} when it holds none (then _load_checkpoint refuses it)."""
    if "config" not in arrays:
        return {}
    try:
        saved = json.loads(str(arrays["config"]))
    except ValueError:
        raise ValueError(f"{ckpt_path}: its stored settings are not readable JSON") from None
    return {k: v for k, v in saved.items() if k in DEFAULTS} if isinstance(saved, dict) else {}


def _load_checkpoint(ckpt_path, arrays, config, model, opt, draws, ema):
    for key in ("step", "config"):
        if key not in arrays:
            raise ValueError(f"{ckpt_path} is not a training checkpoint (no {key!r})")
    saved = {**LEGACY, "ema_decay": 0.0, **json.loads(str(arrays["config"]))}
    saved.setdefault("arch", "mlp")  # checkpoints from before --arch hold the MLP
    changed = [k for k in config  # a key older runs lack holds its default
               if k not in RESUMABLE and saved.get(k, DEFAULTS.get(k)) != config[k]]
    changed += ["steps"] if horizon_changed(saved, config) else []  # the lr decays over steps
    if changed:
        diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {config[k]!r}" for k in changed)
        raise ValueError(f"cannot resume {ckpt_path} with different settings ({diffs})")
    for name, p in model.params.items():
        key = f"model.{name}"
        if key not in arrays or arrays[key].shape != p.shape:
            raise ValueError(f"{ckpt_path}: {key} is missing or has the wrong shape")
        p[...] = arrays[key]
    opt.load_state_dict({k[len("adam."):]: v for k, v in arrays.items() if k.startswith("adam.")})
    ema_state = {k[len("ema."):]: v for k, v in arrays.items() if k.startswith("ema.")}
    if ema_state:
        ema.load_state_dict(ema_state)
    else:  # a checkpoint from before the EMA: decay 0 there, so the average is the weights
        ema.load_state_dict({**{f"param.{k}": p for k, p in model.params.items()},
                             "updates": np.array(int(arrays["step"])),
                             "decay": np.array(ema.decay)})
    try:
        draws.load_state_dict(arrays)
    except KeyError as e:
        raise ValueError(f"{ckpt_path} holds no state for these draws ({e})") from None
    return int(arrays["step"])
