"""The flow-matching training loop (PyTorch): regress the conditional velocity of an affine path.

Each step n, with one seeded torch.Generator per process:
    x1 (, y) ~ data shard,   t ~ p(t) (uniform or logit-normal, fm_torch.schedules),   x0 ~ N(0, I)
    (y -> null class with probability label_dropout, for classifier-free guidance)
    xt = alpha_t x1 + sigma_t x0,   ut = d_alpha_t x1 + d_sigma_t x0
    L = mean over batch and coordinates of (v_theta(xt, t, y) - ut)^2
then AdamW at the schedule's learning rate eta_n (written into its param_groups) with
gradient clipping, and an EMA of the weights. The same arithmetic as
fm_numpy/train.py; the model is the U-Net for MNIST and the MLP for 2-D toy sets.

Under torchrun (WORLD_SIZE > 1) each process trains on its own shard of the data with
DistributedDataParallel (NCCL on GPU, gloo on CPU), which averages the gradients, so
world_size processes of batch B take the step of one process with batch world_size * B.
Only rank 0 writes. A run folder holds config.json, loss.csv (step,loss,images_per_s),
ckpt.pt (model, EMA, optimizer, step, every rank's generator state; written atomically
every ckpt_every steps, read with weights_only=True) and samples_<step>.png (every
sample_every steps).

Few-step hooks, as fm_numpy/train.py (fm_torch/fewstep.py): `coupling` re-pairs the noise
in each batch, `objective="meanflow"` trains the average velocity (torch.func.jvp),
`pairs` trains on fixed reflow pairs, `distill` fixes t = 0.
"""

import math
import os
import time

import torch
import torch.distributed as dist
from torch.nn import functional as F

from fm_numpy.io import read_log, save_json, write_log
from fm_numpy.schedules import LEGACY, horizon_changed, make_recipe
from fm_numpy.train import DeferredSigint, TrainingInterrupted
from fm_torch.data import load_mnist_tensors, shard, toy_tensor
from fm_torch.ema import EMA
from fm_torch.io import load_checkpoint, save_checkpoint
from fm_torch.paths import AffinePath, make_scheduler
from fm_torch.plots import plot_progress
from fm_torch.schedules import TimeSampler, set_lr
from fm_torch.train_config import (  # the settings and the networks they describe
    _RESUMABLE,
    DEFAULTS,
    MNIST_DEFAULTS,
    build_model,
    load_model,
    resolve_config,
)

_CKPT = "ckpt.pt"

__all__ = [
    "DEFAULTS",
    "MNIST_DEFAULTS",
    "TrainingDiverged",
    "TrainingInterrupted",
    "resolve_config",
    "build_model",
    "load_model",
    "flow_matching_loss",
    "train",
    "sample",
]

class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def flow_matching_loss(model, path, x1, y, x0, t):
    """L = mean((v_theta(xt, t, y) - ut)^2) with (xt, ut) = path.sample(x0, x1, t)."""
    xt, ut = path.sample(x0, x1, t)  # (B, ...) each
    v = model(xt, t, y)  # (B, ...)
    # Under bf16 autocast v is bf16: take the loss in float32 at least, float64 for float64 data.
    dtype = torch.promote_types(ut.dtype, torch.float32)
    return F.mse_loss(v.to(dtype), ut.to(dtype))


def _dist_info():
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    return world_size, rank, local_rank


def _make_data(config, data_dir, rank, world_size):
    if config["pairs"] is not None:  # reflow: the teacher's x1 (and y) in place of the data
        from fm_torch.reflow import pair_tensors

        x0, x1, y = pair_tensors(config["pairs"])
        return shard(x1, y, rank, world_size)
    if config["data"] == "mnist":
        x1, y = load_mnist_tensors("train", data_dir=data_dir)
        if config["n_train"] is not None:
            x1, y = x1[: config["n_train"]], y[: config["n_train"]]
        return shard(x1, y, rank, world_size)
    x1 = toy_tensor(config["data"], config["toy_pool"], seed=config["seed"])  # (N, 2)
    return shard(x1, None, rank, world_size)


def _read_losses(path, up_to_step):
    return [(int(s), float(v), float(r)) for s, v, r in read_log(path, up_to_step)]


def _write_losses(path, rows, append):
    header = ["step", "loss", "images_per_s"]
    write_log(path, header, [(s, repr(v), f"{r:.1f}") for s, v, r in rows], append)


def train(out, resume=False, progress=True, device=None, data_dir=None, sync_every=None,
          **settings):
    """Train a velocity field; returns (model, losses) with losses [(step, loss, images/s), ...].

    `settings` are the keys of DEFAULTS (see resolve_config); `batch` is per process.
    With resume=True the run in `out` continues from out/ckpt.pt (settings left out, or
    None, are the checkpoint's; given ones must match it, except
    steps/ckpt_every/sample_every/bf16/compile) to the same weights as an uninterrupted
    run. Raises TrainingDiverged at the first non-finite loss, keeping the last checkpoint.
    bf16 autocast applies on CUDA and CPU, torch.compile on CUDA only unless
    FM_TORCH_COMPILE_CPU names a backend for CPU ("inductor", "aot_eager": tests).

    Host syncs (see `_sync`): the losses stay on the device and are read, with one
    all-reduce of [losses, stop flag] under DDP, every `sync_every` steps (default 1 on
    one CPU process, 50 otherwise) and at every checkpoint, progress sample and the last
    step. The first non-finite loss is still named by its exact step, and no checkpoint
    is written after it; the stop at Ctrl-C under DDP waits for the next sync.
    """
    from tqdm import tqdm

    out = os.fspath(out)
    ckpt_path = os.path.join(out, _CKPT)
    checkpoint = load_checkpoint(ckpt_path) if resume and os.path.exists(ckpt_path) else None
    if checkpoint is not None and isinstance(checkpoint.get("config"), dict):
        # settings not given are the run's own (as fm_numpy.train)
        settings = {**{k: v for k, v in checkpoint["config"].items() if k in DEFAULTS},
                    **{k: v for k, v in settings.items() if v is not None}}
    config = resolve_config(**settings)
    world_size, rank, local_rank = _dist_info()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and world_size > 1:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    own_group = False
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        own_group = True
    try:
        if sync_every is None:
            sync_every = 1 if device.type == "cpu" and world_size == 1 else 50
        if isinstance(sync_every, bool) or int(sync_every) != sync_every or sync_every < 1:
            raise ValueError(f"sync_every must be a positive integer, got {sync_every!r}")
        return _train(out, resume, progress, device, data_dir, config, world_size, rank, tqdm,
                      int(sync_every), checkpoint)
    finally:
        if own_group:
            dist.destroy_process_group()


def _train(out, resume, progress, device, data_dir, config, world_size, rank, tqdm,
           sync_every=1, checkpoint=None):
    is_main = rank == 0
    ckpt_path = os.path.join(out, _CKPT)
    loss_path = os.path.join(out, "loss.csv")
    if resume and not os.path.exists(ckpt_path):
        raise FileNotFoundError(f"nothing to resume: {ckpt_path} does not exist")
    if not resume and os.path.exists(ckpt_path):
        raise ValueError(f"{out} already holds a run; resume it or choose another output folder")

    x1_all, y_all = _make_data(config, data_dir, rank, world_size)
    # the shard lives on the device and batches are drawn there: no per-step host copy
    x1_all = x1_all.to(device)
    y_all = None if y_all is None else y_all.to(device)
    from fm_torch.fewstep import FewStepHooks

    hooks = FewStepHooks(config, out, rank, world_size)
    torch.manual_seed(config["seed"])  # the same initial weights in every process
    model = build_model(config).to(device)
    if config["init_from"] is not None and not resume:
        from fm_torch.train_diffusion import load_init_weights

        load_init_weights(model, config)  # a fine-tune: start from that run's EMA weights
    ema = EMA(model, config["ema_decay"])
    opt = torch.optim.AdamW(model.parameters(), lr=config["lr"],
                            weight_decay=config["weight_decay"])
    # this rank's draws, made on the training device (on CPU: the same numbers as ever)
    gen = torch.Generator(device=device).manual_seed(config["seed"] + 1000 * rank)
    lr_at, sampler = make_recipe(config)
    time_sampler = TimeSampler(sampler.name, sampler.mean, sampler.std)
    path = AffinePath(make_scheduler(config["scheduler"]))
    from fm_torch.train_diffusion import training_loss, velocity_view

    loss_fn = training_loss(config)  # flow_matching_loss, or a DDPM / Diff2Flow objective
    step = 0
    if resume:
        step = _load_state(ckpt_path, checkpoint, config, model, ema, opt, gen, rank,
                           world_size)
    losses = _read_losses(loss_path, step) if resume else []
    if is_main:
        _write_losses(loss_path, losses, append=False)  # drops rows logged after the checkpoint
        save_json(os.path.join(out, "config.json"), config)

    on_cuda = device.type == "cuda"
    net = model
    if world_size > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if on_cuda else None)
    cpu_backend = os.environ.get("FM_TORCH_COMPILE_CPU")  # tests: "inductor" or "aot_eager"
    if config["compile"] and (on_cuda or cpu_backend):
        net = torch.compile(net, backend="inductor" if on_cuda else cpu_backend)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config["bf16"])

    B, C = config["batch"], (10 if config["data"] == "mnist" else None)
    pending, window, last_good = [], [], step
    bar = tqdm(total=config["steps"], initial=step, disable=not (progress and is_main),
               desc="train", mininterval=0.5, dynamic_ncols=True)
    t_start, images = time.perf_counter(), 0
    model.train()
    sigint = DeferredSigint().__enter__()  # Ctrl-C: finish the step, checkpoint, stop
    try:
        while step < config["steps"]:
            idx = torch.randint(0, len(x1_all), (B,), generator=gen, device=device)  # (B,)
            x1 = x1_all[idx]  # (B, ...)
            t = time_sampler.sample(B, gen)  # (B,) on the device
            x0 = torch.randn(x1.shape, generator=gen, device=device)  # (B, ...)
            y = None if C is None else y_all[idx]  # (B,)
            x0, t = hooks.couple(x0, x1, y, t, gen, idx)  # re-paired noise; distill: t = 0
            if C is not None:
                drop = torch.rand(B, generator=gen, device=device) < config["label_dropout"]
                y = torch.where(drop, torch.full_like(y, C), y)  # null class for CFG
            if hooks.meanflow:  # full precision: the JVP target is a small difference
                loss, logged = hooks.meanflow_loss(net, path, x1, y, x0, gen, device)
            else:
                with autocast:
                    loss = loss_fn(net, path, x1, y, x0, t)
                logged = loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config["max_grad_norm"] is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config["max_grad_norm"])
            set_lr(opt, lr_at(step))
            opt.step()
            ema.update(model)
            hooks.step_done()
            step += 1
            images += B * world_size
            rate = images / (time.perf_counter() - t_start)
            window.append((step, logged.detach(), rate))  # read at the next sync
            bar.update(1)
            boundary = (step % config["ckpt_every"] == 0 or step == config["steps"]
                        or step % config["sample_every"] == 0)
            # one process stops at once on Ctrl-C; under DDP the ranks agree at a sync
            stop = sigint.requested and world_size == 1
            if stop or boundary or step % sync_every == 0:
                rows, stop = _sync(window, sigint.requested, world_size)
                window = []
                pending.extend(rows)
                bad = next(((s, v) for s, v, _ in rows if not math.isfinite(v)), None)
                if bad is not None:
                    raise TrainingDiverged(
                        f"loss is {bad[1]} at step {bad[0]}; stopped, the last good "
                        f"checkpoint (step {last_good}) is kept in {out}")
                avg = sum(v for _, v, _ in pending[-50:]) / len(pending[-50:])
                bar.set_postfix(loss=f"{avg:.4f}", img_s=f"{rate:.0f}", refresh=False,
                                **hooks.postfix())
            if step % config["ckpt_every"] == 0 or step == config["steps"] or stop:
                finite = torch.stack([torch.isfinite(p).all() for p in model.parameters()])
                if not bool(finite.all()):  # one host sync for all parameters
                    raise TrainingDiverged(
                        f"weights became NaN or infinite at step {step}; stopped, the last "
                        f"good checkpoint (step {last_good}) is kept in {out}")
                states = _gather_rng(gen, world_size)
                if is_main:
                    _write_losses(loss_path, pending, append=True)
                    _save_state(ckpt_path, config, model, ema, opt, states, step, world_size)
                    hooks.save_timing()
                losses.extend(pending)
                pending = []
                last_good = step
            if stop:
                raise TrainingInterrupted(
                    f"interrupted at step {step}; checkpoint saved in {out}, resume to continue")
            if is_main and step % config["sample_every"] == 0:
                plot_progress(out, config, velocity_view(config, ema.model), step, device)
    finally:
        sigint.__exit__(None, None, None)
        bar.close()
    return model, losses


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


def _gather_rng(gen, world_size):
    state = gen.get_state()
    if world_size == 1:
        return [state]
    states = [None] * world_size
    dist.all_gather_object(states, state)
    return states


def _save_state(ckpt_path, config, model, ema, opt, rng_states, step, world_size):
    save_checkpoint(ckpt_path, {
        "config": config,
        "model": model.state_dict(),
        "ema": ema.state_dict(),
        "optimizer": opt.state_dict(),
        "step": step,
        "rng": rng_states,
        "world_size": world_size,
    })


def _load_state(ckpt_path, checkpoint, config, model, ema, opt, gen, rank, world_size):
    for key in ("config", "model", "ema", "optimizer", "step", "rng"):
        if key not in checkpoint:
            raise ValueError(f"{ckpt_path} is not an fm-torch training checkpoint (no {key!r})")
    saved = resolve_config(**{**LEGACY, **checkpoint["config"]})
    changed = [k for k in config if k not in _RESUMABLE and saved.get(k) != config[k]]
    changed += ["steps"] if horizon_changed(saved, config) else []  # the lr decays over steps
    if changed:
        diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {config[k]!r}" for k in changed)
        raise ValueError(f"cannot resume {ckpt_path} with different settings ({diffs})")
    if checkpoint.get("world_size", 1) != world_size:
        raise ValueError(f"{ckpt_path} was written by {checkpoint.get('world_size')} processes; "
                         f"resume it with the same number, not {world_size}")
    model.load_state_dict(checkpoint["model"])
    ema.load_state_dict(checkpoint["ema"])
    opt.load_state_dict(checkpoint["optimizer"])
    gen.set_state(checkpoint["rng"][rank])
    return int(checkpoint["step"])


@torch.no_grad()
def sample(model, x0, y=None, guidance=1.0, method="midpoint", steps=20, return_nfe=False):
    """Integrate dx/dt = v(x, t) from x0 (t=0) to t=1 on a uniform grid of `steps` intervals.

    With labels y, v is classifier-free guided: v_uncond + w (v_cond - v_uncond).
    A MeanFlow model with method "euler" takes `steps` average-velocity steps instead
    (fm_torch.meanflow.sample; NFE = steps). Returns the trajectory (steps + 1, *x0.shape)
    [and the NFE].
    """
    from fm_torch.solvers import ClassifierFreeGuidance, odeint

    if hasattr(model, "flow_sample"):  # a diffusion model's flow starts at t_min (train_diffusion)
        return model.flow_sample(x0, y, guidance, method, steps, return_nfe)
    if getattr(model, "mean_flow", False) and method == "euler":
        from fm_torch.meanflow import sample as meanflow_sample

        xs = meanflow_sample(model, x0, steps, y, guidance)  # (steps + 1, *x0.shape)
        return (xs, int(steps)) if return_nfe else xs
    if int(steps) < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    v = ClassifierFreeGuidance(model, y, guidance) if y is not None else (
        lambda x, t: model(x, t, None))
    t_grid = torch.linspace(0, 1, int(steps) + 1, dtype=torch.float64)
    return odeint(v, x0, t_grid, method=method, return_nfe=return_nfe)
