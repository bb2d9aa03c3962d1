"""The flow-matching training loop (NumPy): regress the conditional velocity of an affine path.

Each step n, with one seeded generator rng:
    x1 (, y) ~ data,   t ~ p(t) (uniform or logit-normal, fm_numpy.schedules),   x0 ~ N(0, I),
    (y -> null class with prob. label_dropout)
    xt = alpha_t x1 + sigma_t x0,   ut = d_alpha_t x1 + d_sigma_t x0
    L = mean over batch and coordinates of (v_theta(xt, t, y) - ut)^2
    dL/dv = 2 (v - ut) / (B D), then the MLP's manual backward and one Adam step at the
    learning rate eta_n of the schedule, then the EMA update of the weights (fm_numpy.ema).

A run folder holds config.json, loss.csv (step,loss), model.npz (the MLP with the EMA
weights, for sampling) and checkpoint.npz (raw weights, EMA, Adam moments, the
generator's state as JSON, the step), each
written atomically every ckpt_every steps, so `resume=True` continues to exactly the
weights an uninterrupted run reaches.

Few-step hooks (docs/math.md, "Few-step generation"): `coupling` re-pairs x0 with x1 in
each batch (fm_numpy.coupling; its share of the step time goes to the progress bar and
timing.json); `objective="meanflow"` trains the average velocity u(z, r, t) instead
(fm_numpy.meanflow; the uniform t above is then unused); `pairs` (an .npz of fixed
(x0, x1) pairs, fm_numpy.reflow) replaces the data and the noise, and `distill` fixes t = 0.
"""

import json
import math
import os
import signal
import threading
import time

import numpy as np

from fm_numpy.ema import EMA
from fm_numpy.io import load_npz, read_log, save_json, save_npz, write_log
from fm_numpy.models import ARCHITECTURES, model_class
from fm_numpy.models.threads import threaded
from fm_numpy.optim import Adam
from fm_numpy.paths import AffinePath, make_scheduler
from fm_numpy.schedules import LEGACY, RECIPE_DEFAULTS, horizon_changed, make_recipe

__all__ = ["DEFAULTS", "MNIST_DEFAULTS", "MNIST_RESMLP_DEFAULTS",
           "MNIST_CONVNET_DEFAULTS", "TrainingDiverged",
           "TrainingInterrupted", "DeferredSigint", "train", "resolve_config"]

DEFAULTS = {
    "data": "8gaussians", "steps": 6000, "batch": 512, "lr": 2e-3, "hidden": 256, "depth": 3,
    "time_features": 32, "scheduler": "condot", "seed": 0, "ckpt_every": 1000,
    "label_dropout": 0.1, "weight_decay": 0.0, "max_grad_norm": None, "dtype": "float32",
    "n_train": None, "arch": "mlp", "coupling": "independent", "coupling_block": None,
    "objective": "fm", "meanflow_ratio": 0.25, "meanflow_norm_p": 1.0, "pairs": None,
    "distill": False, "ema_decay": 0.99, "time_scale": 1000.0, **RECIPE_DEFAULTS,
}
# EMA 0.99 on the 2-D sets: at the CLI's size (256 x 3, batch 512, 4000 steps, checkerboard,
# seeds 0 and 1) it cut the energy distance from 0.0067 to 0.0021 and sliced W1 from 0.078
# to 0.043; on Meta's notebook recipe it is what beats Meta (docs/benchmarks.md, issue 13).
# The MNIST networks keep their measured recipes, without an EMA (ema_decay 0 below).
MNIST_DEFAULTS = {"steps": 3000, "batch": 128, "lr": 1e-3, "hidden": 512, "depth": 3,
                  "ema_decay": 0.0}
# `--arch resmlp` on MNIST: the residual LayerNorm MLP of fm_numpy/models/resmlp.py (issue 13;
# docs/numpy.md section 7); MNIST_DEFAULTS above stay those of `--arch mlp`
MNIST_RESMLP_DEFAULTS = {"steps": 6000, "batch": 128, "lr": 1e-3, "hidden": 768, "depth": 4,
                         "arch": "resmlp", "ema_decay": 0.0}
# MNIST's default network (issue 13, docs/numpy.md section 8): the NumPy U-Net of
# fm_numpy/models/convnet.py (base width 16, widths 16-32-32 at 28-14-7), 2800 steps of 32
# (89,600 images: 6 min 17 s on 2 cores as two batch slices with OMP_NUM_THREADS=1, inside
# the 10-minute budget), warm-up and cosine lr decay (docs/benchmarks.md: batch 32 beat
# 800 steps of 64; FD 56.8, 43.8, 39.8 at w = 2 for 1600, 2400, 2800 steps)
MNIST_CONVNET_DEFAULTS = {"steps": 2800, "batch": 32, "lr": 2e-3, "hidden": 16, "depth": 3,
                          "warmup": 100, "lr_schedule": "cosine", "arch": "convnet",
                          "ema_decay": 0.0}

# settings that may change when a run is resumed; everything else must match the checkpoint
_RESUMABLE = ("steps", "ckpt_every")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT (Ctrl-C) stopped training after a whole step, and a checkpoint of it was written."""


class DeferredSigint:
    """Context manager: the first SIGINT only sets `.requested`, checked between steps, so a
    checkpoint is never taken halfway through an optimizer update; a second SIGINT raises
    KeyboardInterrupt at once. Outside the main thread it does nothing (signals go there)."""

    def __enter__(self):
        self.requested = False
        self._old = None
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False


def resolve_config(**overrides):
    """Defaults (MNIST's for data="mnist"), then the given non-None overrides; validated."""
    data = overrides.get("data") or DEFAULTS["data"]
    config = dict(DEFAULTS)
    if data == "mnist":
        config.update({"mlp": MNIST_DEFAULTS, "resmlp": MNIST_RESMLP_DEFAULTS}.get(
            overrides.get("arch"), MNIST_CONVNET_DEFAULTS))
    config.update({k: v for k, v in overrides.items() if v is not None})
    unknown = set(config) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown training settings: {', '.join(sorted(unknown))}")
    for key in ("steps", "batch", "hidden", "depth", "ckpt_every", "time_features", "n_train",
                "coupling_block"):
        value = config[key]
        if key in ("n_train", "coupling_block") and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or (
                not math.isfinite(value) or int(value) != value or value < 1):
            raise ValueError(f"{key} must be a positive integer, got {value!r}")
    if config["time_features"] % 2:
        raise ValueError(f"time_features must be even, got {config['time_features']}")
    if not (isinstance(config["seed"], (int, np.integer)) and config["seed"] >= 0):
        raise ValueError(f"seed must be a non-negative integer, got {config['seed']!r}")
    def real(value):
        return isinstance(value, (int, float, np.number)) and not isinstance(value, bool)

    if not (real(config["lr"]) and 0 < config["lr"] < math.inf):
        raise ValueError(f"lr must be a positive finite number, got {config['lr']!r}")
    if not (real(config["weight_decay"]) and 0 <= config["weight_decay"] < math.inf):
        raise ValueError(f"weight_decay must be a finite number >= 0, "
                         f"got {config['weight_decay']!r}")
    mgn = config["max_grad_norm"]
    if mgn is not None and not (real(mgn) and 0 < mgn < math.inf):
        raise ValueError(f"max_grad_norm must be positive, got {mgn!r}")
    if config["dtype"] not in ("float32", "float64"):
        raise ValueError(f"dtype must be float32 or float64, got {config['dtype']!r}")
    if not 0 <= config["label_dropout"] < 1:
        raise ValueError(f"label_dropout must lie in [0, 1), got {config['label_dropout']}")
    from fm_numpy.data import TOY_DATASETS

    if config["data"] != "mnist" and config["data"] not in TOY_DATASETS:
        raise ValueError(f"unknown data set {config['data']!r}; choose mnist or one of "
                         f"{', '.join(TOY_DATASETS)}")
    make_scheduler(config["scheduler"])  # raises ValueError for an unknown name
    if config["arch"] not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {config['arch']!r}; choose one of "
                         f"{', '.join(ARCHITECTURES)}")
    if config["arch"] == "convnet" and config["data"] != "mnist":
        raise ValueError(f"the convnet U-Net needs images (data mnist), not {config['data']!r}")
    from fm_numpy.fewstep import check_fewstep_settings

    check_fewstep_settings(config)
    if not (real(config["time_scale"]) and 0 < config["time_scale"] < math.inf):
        raise ValueError(f"time_scale must be a positive finite number, "
                         f"got {config['time_scale']!r}")
    if not (real(config["ema_decay"]) and 0 <= config["ema_decay"] < 1):
        raise ValueError(f"ema_decay must lie in [0, 1), got {config['ema_decay']!r}")
    make_recipe(config)  # lr schedule and time sampling: ValueError for a bad setting
    return config


class _ToyData:
    num_classes = None
    dim = 2

    def __init__(self, name, dtype):
        from fm_numpy.data import TOY_DATASETS

        if name not in TOY_DATASETS:
            raise ValueError(f"unknown data set {name!r}; choose mnist or one of "
                             f"{', '.join(TOY_DATASETS)}")
        self.name, self.dtype = name, dtype

    def draw(self, rng, B):
        from fm_numpy.data import sample_toy

        return sample_toy(self.name, B, rng, dtype=self.dtype), None


class _MnistData:
    num_classes = 10
    dim = 784

    def __init__(self, dtype, n_train=None):
        from fm_numpy.data import load_mnist

        images, labels = load_mnist("train")
        if n_train is not None:
            images, labels = images[:n_train], labels[:n_train]
        self.x = (images.reshape(len(images), 784) * 2 - 1).astype(dtype)  # (N, 784) in [-1, 1]
        self.y = np.asarray(labels, dtype=np.int64)

    def draw(self, rng, B):
        idx = rng.integers(0, len(self.x), B)
        return self.x[idx], self.y[idx]


def _make_data(config):
    if config["pairs"] is not None:
        from fm_numpy.reflow import PairData

        return PairData(config["pairs"], config["dtype"])
    if config["data"] == "mnist":
        return _MnistData(config["dtype"], config["n_train"])
    return _ToyData(config["data"], config["dtype"])


def _read_losses(path, up_to_step):
    return [(int(s), float(v)) for s, v in read_log(path, up_to_step)]


def _write_losses(path, rows, append):
    write_log(path, ["step", "loss"], [(s, repr(v)) for s, v in rows], append)


def train(out, resume=False, progress=True, threads=None, **settings):
    """Train an MLP velocity field; returns (model, losses) with losses [(step, loss), ...].

    `settings` are the keys of DEFAULTS (see resolve_config). With resume=True the run in
    `out` continues from its checkpoint (settings left out, or None, are the checkpoint's;
    given ones must match it, except steps/ckpt_every).
    `threads` batch slices run at once (fm_numpy/models/threads.py; default 1 for the MLP,
    else the usable cores up to 4); not a setting of the run: the same gradient up to
    rounding, so a run may resume with another count.
    Raises TrainingDiverged at the first non-finite loss, keeping the last checkpoint.
    """
    from tqdm import tqdm

    out = os.fspath(out)
    ckpt_path = os.path.join(out, "checkpoint.npz")
    arrays = load_npz(ckpt_path) if resume and os.path.exists(ckpt_path) else None
    if arrays is not None:  # settings not given are the run's own
        settings = {**_saved_settings(arrays, ckpt_path),
                    **{k: v for k, v in settings.items() if v is not None}}
    config = resolve_config(**settings)
    loss_path = os.path.join(out, "loss.csv")
    if resume and not os.path.exists(ckpt_path):
        raise FileNotFoundError(f"nothing to resume: {ckpt_path} does not exist")
    if not resume and os.path.exists(ckpt_path):
        raise ValueError(f"{out} already holds a run; resume it or choose another output folder")

    data = _make_data(config)
    dtype = np.dtype(config["dtype"])
    mean_flow = {"mean_flow": True} if config["objective"] == "meanflow" else {}
    time_scale = {"time_scale": config["time_scale"]} if config["arch"] == "mlp" else {}
    model = model_class(config["arch"])(data.dim, config["hidden"], config["depth"],
                                        config["time_features"], data.num_classes,
                                        seed=config["seed"], dtype=dtype, **mean_flow,
                                        **time_scale)
    ema = EMA(model.params, config["ema_decay"])
    lr_at, time_sampler = make_recipe(config)
    opt = Adam(model.params, lr=config["lr"], weight_decay=config["weight_decay"],
               decoupled=True, max_grad_norm=config["max_grad_norm"])
    rng = np.random.default_rng(config["seed"])
    path = AffinePath(make_scheduler(config["scheduler"]))
    step = 0
    if resume:
        step = _load_checkpoint(ckpt_path, arrays, config, model, opt, rng, ema)
        losses = _read_losses(loss_path, step)
        _write_losses(loss_path, losses, append=False)  # drop rows logged after the checkpoint
    else:
        losses = []
        _write_losses(loss_path, [], append=False)
    save_json(os.path.join(out, "config.json"), config)

    B, D, C = config["batch"], data.dim, data.num_classes
    from fm_numpy.fewstep import FewStepHooks

    hooks = FewStepHooks(config, path, out)
    net = model  # what the step calls; the same network on batch slices in threads
    if not hooks.meanflow:  # MeanFlow's loss calls the model's own JVP
        net = threaded(model, config["arch"], threads)
    pending = []
    last_good = step
    bar = tqdm(total=config["steps"], initial=step, disable=not progress, desc="train",
               mininterval=0.5, dynamic_ncols=True)
    sigint = DeferredSigint().__enter__()
    try:
        while step < config["steps"]:
            step_start = time.perf_counter()
            x1, y = data.draw(rng, B)  # (B, D), (B,) or None
            t = time_sampler.sample(B, rng, dtype)  # (B,)
            x0 = rng.standard_normal((B, D), dtype=dtype)  # (B, D)
            x0, t = hooks.couple(x0, x1, y, t, rng, data)  # re-paired noise; distill: t = 0
            if C is not None and config["label_dropout"] > 0:
                drop = rng.random(B) < config["label_dropout"]
                y = np.where(drop, C, y)  # null class for classifier-free guidance
            if hooks.meanflow:
                loss, diff = hooks.meanflow_loss(model, x0, x1, y, rng)  # diff = dL/du
            else:
                xt, ut = path.sample(x0, x1, t)  # (B, D) each
                v = net.forward(xt, t, y)  # (B, D)
                diff = v - ut  # (B, D)
                loss = float(np.mean(diff * diff))
            if not np.isfinite(loss):
                raise TrainingDiverged(
                    f"loss is {loss} at step {step + 1}; stopped, the last good checkpoint "
                    f"(step {last_good}) is kept in {out}")
            if not hooks.meanflow:
                diff *= 2.0 / diff.size  # dL/dv
            opt.lr = lr_at(step)
            opt.step(net.backward(diff))
            ema.update(model.params)
            hooks.step_done(time.perf_counter() - step_start)
            step += 1
            pending.append((step, loss))
            if step % 100 == 0:
                bar.set_postfix(loss=f"{np.mean([v for _, v in pending[-100:]]):.4f}",
                                refresh=False, **hooks.postfix())
            bar.update(1)
            if step % config["ckpt_every"] == 0 or step == config["steps"] or sigint.requested:
                if not all(np.all(np.isfinite(p)) for p in model.params.values()):
                    raise TrainingDiverged(
                        f"weights became NaN or infinite at step {step}; stopped, the last good "
                        f"checkpoint (step {last_good}) is kept in {out}")
                _write_losses(loss_path, pending, append=True)
                losses.extend(pending)
                pending = []
                _save_checkpoint(out, ckpt_path, config, model, opt, rng, step, ema)
                hooks.save_timing()
                last_good = step
            if sigint.requested:
                raise TrainingInterrupted(
                    f"interrupted at step {step}; checkpoint saved in {out}, resume to continue")
    finally:
        sigint.__exit__(None, None, None)
        bar.close()
    return model, losses


def _save_checkpoint(out, ckpt_path, config, model, opt, rng, step, ema):
    arrays = {f"model.{k}": p for k, p in model.params.items()}
    arrays.update({f"adam.{k}": v for k, v in opt.state_dict().items()})
    arrays.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    save_npz(ckpt_path, step=np.array(step, dtype=np.int64),
             rng_state=np.array(json.dumps(rng.bit_generator.state)),
             config=np.array(json.dumps(config)), **arrays)
    # model.npz holds the EMA weights (what sampling uses), in MLP.save_npz's format
    save_npz(os.path.join(out, "model.npz"), config=np.array(json.dumps(model.config)),
             **ema.params)


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


def _load_checkpoint(ckpt_path, arrays, config, model, opt, rng, ema):
    for key in ("step", "rng_state", "config"):
        if key not in arrays:
            raise ValueError(f"{ckpt_path} is not a training checkpoint (no {key!r})")
    saved = {**LEGACY, "ema_decay": 0.0, **json.loads(str(arrays["config"]))}
    saved.setdefault("arch", "mlp")  # checkpoints from before --arch hold the MLP
    changed = [k for k in config  # a key older runs lack holds its default
               if k not in _RESUMABLE and saved.get(k, DEFAULTS.get(k)) != config[k]]
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
    rng.bit_generator.state = json.loads(str(arrays["rng_state"]))
    return int(arrays["step"])
