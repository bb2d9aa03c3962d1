"""Training runs of fm-torch: settings -> objects -> fm_torch.loop.fit, with a run folder.

The loop (fm_torch/loop.py) regresses the conditional velocity of an affine path; each
step n, with one seeded torch.Generator per process (GeneratorDraws):
    x1 (, y) ~ data shard,   t ~ p(t) (uniform or logit-normal, fm_torch.schedules),   x0 ~ N(0, I)
    (y -> null class with probability label_dropout, for classifier-free guidance)
    xt = alpha_t x1 + sigma_t x0,   ut = d_alpha_t x1 + d_sigma_t x0
    L = mean over batch and coordinates of (v_theta(xt, t, y) - ut)^2
then AdamW at the schedule's learning rate eta_n (written into its param_groups) with
gradient clipping, and an EMA of the weights. The same arithmetic as fm_numpy/train.py;
the model is the U-Net for MNIST and the MLP for 2-D toy sets, or any nn.Module with
forward(x, t, y) passed as `net`. This module is the only one that knows the names
("mnist", "moons", "meanflow", "ot", the diffusion modes): it builds the data source,
network, objective, coupling and recipe, and the callbacks that write the run folder.

The label-dropout uniforms are drawn only when the data has labels AND label_dropout > 0
(before the training core, whenever there were labels): at the default 0.1 nothing
changes; a run with label_dropout = 0 now skips that draw (its later numbers differ).

Under torchrun (WORLD_SIZE > 1) each process trains on its own shard of the data with
DistributedDataParallel (NCCL on GPU, gloo on CPU), which averages the gradients, so
world_size processes of batch B take the step of one process with batch world_size * B.
Only rank 0 writes. A run folder holds config.json, loss.csv (step,loss,images_per_s),
ckpt.pt (model, EMA, optimizer, step, every rank's generator state; written atomically
every ckpt_every steps, read with weights_only=True) and samples_<step>.png (every
sample_every steps).

Few-step settings (fm_torch/fewstep.py): `coupling` re-pairs the noise in each batch,
`objective="meanflow"` trains the average velocity (torch.func.jvp), `pairs` trains on
fixed reflow pairs, `distill` fixes t = 0.
"""

import os

import torch
import torch.distributed as dist

from fm_numpy.io import read_log, save_json, write_log
from fm_numpy.schedules import LEGACY, horizon_changed, make_recipe
from fm_torch.coupling import make_coupling
from fm_torch.cpu import configure_cpu
from fm_torch.data import ArraySource, PairSource, open_data
from fm_torch.draws import GeneratorDraws
from fm_torch.ema import EMA
from fm_torch.interrupt import DeferredSigint, DeferredStop, TrainingInterrupted
from fm_torch.io import load_checkpoint, save_checkpoint
from fm_torch.loop import Progress, TrainingDiverged, TrainState, check_finite_weights, fit
from fm_torch.models import network_for
from fm_torch.objectives import FlowMatching, MeanFlow, flow_matching_loss
from fm_torch.paths import AffinePath, make_scheduler
from fm_torch.plots import plot_progress
from fm_torch.sampling import sample
from fm_torch.schedules import Recipe, make_times
from fm_torch.train_config import (  # the settings and the networks they describe
    _RESUMABLE,
    CUSTOM,
    DEFAULTS,
    MNIST_DEFAULTS,
    build_model,
    load_model,
    resolve_config,
)
from fm_torch.train_diffusion import load_init_weights, make_objective, velocity_view

_CKPT = "ckpt.pt"

__all__ = [
    "DEFAULTS",
    "MNIST_DEFAULTS",
    "TrainingDiverged",
    "TrainingInterrupted",
    "DeferredSigint",
    "DeferredStop",
    "resolve_config",
    "build",
    "build_model",
    "load_model",
    "flow_matching_loss",
    "train",
    "sample",
]


def _dist_info():
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    return world_size, rank, local_rank


def build(config, data=None, net=None, data_dir=None, rank=0, world_size=1):
    """(model, net, source, objective, coupling, recipe) of a resolved config; `data`/`net`
    are the user's objects (or None: the config's). `net` is what the loop calls: here the
    model itself (fm_torch.loop.fit wraps it in DDP / torch.compile)."""
    if data is not None:
        source = data if hasattr(data, "batch") else ArraySource(data, rank=rank,
                                                                 world_size=world_size)
    elif config["pairs"] is not None:  # reflow: the teacher's pairs in place of the data
        num_classes = 10 if config["data"] == "mnist" else None
        source = PairSource.from_file(config["pairs"], num_classes, rank, world_size)
    else:
        source = open_data(config["data"], data_dir, config["n_train"], config["toy_pool"],
                           config["seed"], rank, world_size, config["label_column"],
                           config["val_fraction"])  # the user's file: a seeded split
    path = AffinePath(make_scheduler(config["scheduler"]))
    if config["diffusion"] is not None:
        objective = make_objective(config, path)  # DDPM or Diff2Flow
    elif config["objective"] == "meanflow":
        objective = MeanFlow(path, config["meanflow_ratio"], config["meanflow_norm_p"])
    else:
        objective = FlowMatching(path)
    model = net
    if model is None:
        torch.manual_seed(config["seed"])  # the same initial weights in every process
        if config["data"] == CUSTOM or getattr(source, "info", None):  # sized from the data
            model = network_for(source.shape, source.num_classes, seed=config["seed"])
        else:
            model = build_model(config)
    coupling = None
    if config["coupling"] != "independent":
        coupling = make_coupling(config["coupling"], config["coupling_block"])
    lr_at, _ = make_recipe(config)
    recipe = Recipe(lr_at, make_times(config), config["ema_decay"], config["weight_decay"],
                    config["max_grad_norm"], config["label_dropout"])
    return model, model, source, objective, coupling, recipe


class _StopOnSignal:
    """Turns a DeferredStop's request into the loop's stop request (after the current step;
    under DDP at the next sync, where the ranks agree)."""

    def __init__(self, stopper):
        self.stopper = stopper

    def on_step(self, state, loss):
        state.stop_requested = state.stop_requested or self.stopper.requested


class _RunFolder:
    """loss.csv rows and ckpt.pt (every rank's draws' state) every ckpt_every steps, at the
    last step and at an agreed stop, plus timing.json with a coupling or MeanFlow; the
    weights must be finite to be saved. Every rank runs it (the gather); rank 0 writes."""

    def __init__(self, out, config, model, world_size, is_main, timing):
        self.out, self.config, self.model = out, config, model
        self.world_size, self.is_main, self.timing = world_size, is_main, timing
        self.pending = []

    def _note(self, state):
        self.last_good = state.step
        state.note = f", the last good checkpoint (step {state.step}) is kept in {self.out}"

    def on_start(self, state):
        self._note(state)

    def sync_needed(self, state):
        return state.step % self.config["ckpt_every"] == 0 or state.step == state.steps

    def on_sync(self, state, rows):
        self.pending.extend(rows)
        if not (self.sync_needed(state) or state.stop):
            return
        check_finite_weights(self.model, state.step, state.note)
        states = _gather_draws(state.draws, self.world_size)
        if self.is_main:
            _write_losses(os.path.join(self.out, "loss.csv"), self.pending, append=True)
            _save_state(os.path.join(self.out, _CKPT), self.config, self.model, state,
                        states, self.world_size)
            if self.timing:
                share = state.coupling_s / state.step_s if state.step_s > 0 else 0.0
                save_json(os.path.join(self.out, "timing.json"), {
                    "coupling": self.config["coupling"], "steps_timed": state.steps_timed,
                    "coupling_s": state.coupling_s, "step_s": state.step_s,
                    "coupling_share": share})
        self.pending = []
        self._note(state)


class _ProgressSamples:
    """out/samples_<step>.png every sample_every steps (rank 0; fm_torch.plots), EMA weights."""

    def __init__(self, out, config, ema, device, is_main):
        self.out, self.config, self.ema = out, config, ema
        self.device, self.is_main = device, is_main

    def sync_needed(self, state):
        return state.step % self.config["sample_every"] == 0

    def on_sync(self, state, rows):
        if self.is_main and not state.stop and self.sync_needed(state):
            plot_progress(self.out, self.config, velocity_view(self.config, self.ema.model),
                          state.step, self.device)


def _read_losses(path, up_to_step):
    return [(int(s), float(v), float(r)) for s, v, r in read_log(path, up_to_step)]


def _write_losses(path, rows, append):
    header = ["step", "loss", "images_per_s"]
    write_log(path, header, [(s, repr(v), f"{r:.1f}") for s, v, r in rows], append)


def train(out, resume=False, progress=True, device=None, data_dir=None, sync_every=None,
          draws=None, net=None, data=None, threads=None, **settings):
    """Train a velocity field; returns (model, losses) with losses [(step, loss, images/s), ...].

    `settings` are the keys of DEFAULTS (see resolve_config); `batch` is per process.
    With resume=True the run in `out` continues from out/ckpt.pt (settings left out, or
    None, are the checkpoint's; given ones must match it, except
    steps/ckpt_every/sample_every/bf16/compile) to the same weights as an uninterrupted
    run. Raises TrainingDiverged at the first non-finite loss, keeping the last checkpoint,
    and TrainingInterrupted after a SIGINT/SIGTERM stop (with a checkpoint).
    bf16 autocast applies on CUDA and CPU, torch.compile on CUDA only unless
    FM_TORCH_COMPILE_CPU names a backend for CPU ("inductor", "aot_eager": tests).
    On a CPU the run chooses its threads (`threads`, default OMP_NUM_THREADS if set, else
    the usable cores shared among this machine's processes) and, unless bf16 is given,
    its precision (fm_torch/cpu.py: bf16 only on a CPU with native bf16 where a probe of
    the step finds it >= 10 % faster);
    the choice is printed once and recorded in config.json ("bf16", "cpu"). A resume keeps
    the run's precision unless bf16 is given: it may change (the weights stay float32).

    Your own pieces: `net`, any nn.Module with forward(x, t, y=None), replaces the network
    of the settings; `data` is a data set's name, or a source (fm_torch.data.ArraySource(x,
    y), any object with shape, num_classes, batch(draws, B)) or a tensor (N, ...) of
    samples (then the config records data "custom", and a resume passes the same objects
    again); `draws` a fm_torch.draws.Draws (default GeneratorDraws of a generator seeded
    seed + 1000 rank, drawing on the device; e.g. Replay of fm_numpy's Recorder log).

    Host syncs (fm_torch.loop): the losses stay on the device and are read, with one
    all-reduce of [losses, stop flag] under DDP, every `sync_every` steps (default 1 on
    one CPU process, 50 otherwise) and at every checkpoint, progress sample and the last
    step. The first non-finite loss is still named by its exact step, and no checkpoint
    is written after it; the stop at a signal under DDP waits for the next sync.
    """
    if isinstance(data, str) or data is None:
        settings["data"], data = data if data is not None else settings.get("data"), None
    else:
        settings["data"] = CUSTOM
    out = os.fspath(out)
    ckpt_path = os.path.join(out, _CKPT)
    checkpoint = load_checkpoint(ckpt_path) if resume and os.path.exists(ckpt_path) else None
    if checkpoint is not None and isinstance(checkpoint.get("config"), dict):
        # settings not given are the run's own (as fm_numpy.train)
        settings = {**{k: v for k, v in checkpoint["config"].items() if k in DEFAULTS},
                    **{k: v for k, v in settings.items() if v is not None}}
    config = resolve_config(**settings)
    if (config["data"] == CUSTOM) != (data is not None):
        raise ValueError("data 'custom' stands for an object: pass data=... (the same one "
                         "the run was started with)")
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
        return _train(out, resume, progress, device, data_dir, config, world_size, rank,
                      int(sync_every), checkpoint, draws, net, data, threads)
    finally:
        if own_group:
            dist.destroy_process_group()


def _train(out, resume, progress, device, data_dir, config, world_size, rank, sync_every,
           checkpoint, draws, net, data, threads=None):
    is_main = rank == 0
    ckpt_path = os.path.join(out, _CKPT)
    loss_path = os.path.join(out, "loss.csv")
    if resume and not os.path.exists(ckpt_path):
        raise FileNotFoundError(f"nothing to resume: {ckpt_path} does not exist")
    if not resume and os.path.exists(ckpt_path):
        raise ValueError(f"{out} already holds a run; resume it or choose another output folder")

    model, loop_net, source, objective, coupling, recipe = build(config, data, net, data_dir,
                                                                 rank, world_size)
    model = model.to(device)
    record = dict(config)  # what config.json shows: the settings and the CPU's choice
    if device.type == "cpu":
        choice = configure_cpu(model, source.shape, source.num_classes, config["batch"],
                               threads, config["bf16"], world_size)
        config["bf16"] = choice["bf16"]
        record.update(bf16=choice["bf16"], cpu=choice)
        if is_main and progress:
            print(f"fm-torch train: {choice['why']}", flush=True)
    else:
        config["bf16"] = record["bf16"] = bool(config["bf16"])
    if config["init_from"] is not None and not resume and net is None:
        load_init_weights(model, config)  # a fine-tune: start from that run's EMA weights
    ema = EMA(model, recipe.ema_decay)
    opt = torch.optim.AdamW(model.parameters(), lr=config["lr"],
                            weight_decay=recipe.weight_decay)
    if draws is None:  # this rank's draws, made on the training device (CPU: as ever)
        gen = torch.Generator(device=device).manual_seed(config["seed"] + 1000 * rank)
        draws = GeneratorDraws(gen, device)
    state = TrainState(model, ema, opt, draws)
    if resume:
        state.step = _load_state(ckpt_path, checkpoint, config, model, ema, opt, draws, rank,
                                 world_size)
        state.losses = _read_losses(loss_path, state.step)
    if is_main:
        _write_losses(loss_path, state.losses, append=False)  # drops rows after the checkpoint
        save_json(os.path.join(out, "config.json"), record)
        if getattr(source, "info", None):  # the user's file: scaling, split, class names
            save_json(os.path.join(out, "data.json"), source.info)

    cpu_backend = os.environ.get("FM_TORCH_COMPILE_CPU")  # tests: "inductor" or "aot_eager"
    backend = False
    if config["compile"] and (device.type == "cuda" or cpu_backend):
        backend = "inductor" if device.type == "cuda" else cpu_backend
    timing = coupling is not None or config["objective"] == "meanflow"
    with DeferredStop() as stopper:
        callbacks = [Progress(enabled=progress and is_main), _StopOnSignal(stopper),
                     _RunFolder(out, config, model, world_size, is_main, timing)]
        if data is None and not getattr(source, "info", None):  # the built-in sets' pictures
            callbacks.append(_ProgressSamples(out, config, ema, device, is_main))
        state = fit(loop_net, source, objective, recipe, steps=config["steps"],
                    batch=config["batch"], coupling=coupling, draws=draws, optimizer=opt,
                    ema=ema, callbacks=callbacks, state=state, device=device,
                    bf16=config["bf16"], compile=backend, world_size=world_size,
                    sync_every=sync_every)
        if state.stop:
            raise TrainingInterrupted(f"interrupted at step {state.step} ({stopper.signal}); "
                                      f"checkpoint saved in {out}, resume to continue")
    return model, state.losses


def _draws_state(draws):
    """What ckpt.pt stores per rank: GeneratorDraws' bare generator state (the format of
    older checkpoints), else the draws' state_dict."""
    state = draws.state_dict()
    return state["generator"] if set(state) == {"generator"} else state


def _gather_draws(draws, world_size):
    state = _draws_state(draws)
    if world_size == 1:
        return [state]
    states = [None] * world_size
    dist.all_gather_object(states, state)
    return states


def _save_state(ckpt_path, config, model, state, draws_states, world_size):
    save_checkpoint(ckpt_path, {
        "config": config,
        "model": model.state_dict(),
        "ema": state.ema.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "step": state.step,
        "rng": draws_states,
        "world_size": world_size,
    })


def _load_state(ckpt_path, checkpoint, config, model, ema, opt, draws, rank, world_size):
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
    draws.load_state_dict(checkpoint["rng"][rank])
    return int(checkpoint["step"])
