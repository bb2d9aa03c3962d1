"""Diffusion models in the training loop: a DDPM objective, and Diff2Flow's fine-tune.

fm_torch.train runs one loop for all of them; a run's config["diffusion"] says which:

    None                      flow matching, v_theta(xt, t, y) regressed on ut
    {"mode": "ddpm", ...}     a discrete-time DDPM (Ho et al. 2020) with N steps:
                              k = floor(N t) ~ U{0..N-1} from the loop's t ~ U[0, 1),
                              x_dm = sqrt(abar_k) x1 + sqrt(1 - abar_k) x0,
                              L = mean (net(x_dm, k / N, y) - target)^2 with target
                              x0 (epsilon), x1 (x0) or sqrt(abar_k) x0 - sqrt(1 - abar_k) x1 (v)
    {"mode": "diff2flow", ...} the same network wrapped as a CondOT velocity field
                              (fm_torch.diffusion.DiffusionToFlow: time and scale
                              alignment) trained by the flow-matching loss (Diff2Flow,
                              Schusterbauer et al. 2025)

with "prediction" (epsilon, v, x0), "schedule" (linear, scaled_linear) and
"num_train_steps" (N). A checkpoint of either diffusion mode loads (fm_torch.train.load_model)
as a DiffusionVelocity, so `sample` and `evaluate` integrate its flow ODE; `--sampler
ddim` samples it as a diffusion model. config["init_from"] names the checkpoint whose
EMA weights a fine-tune starts from (Diff2Flow with mode "diff2flow", the naive
fine-tune with diffusion None: the same weights used as a velocity net directly).
"""

import torch

from fm_torch.diffusion import (
    PREDICTIONS,
    alphas_cumprod,
    ddim_sample,
    linear_betas,
    scale_from_flow_time,
    scaled_linear_betas,
)
from fm_torch.objectives import (  # the objectives and the net view moved there; re-exported
    DDPM,
    Diff2Flow,
    DiffusionVelocity,
    FlowMatching,
    diffusion_loss,
    flow_matching_loss,
)

__all__ = [
    "SCHEDULES",
    "MODES",
    "check_diffusion_config",
    "schedule_alphas_cumprod",
    "diffusion_loss",
    "DiffusionVelocity",
    "GuidedDiffusionModel",
    "training_loss",
    "make_objective",
    "DDPM",
    "Diff2Flow",
    "velocity_view",
    "apply_init_from",
    "load_init_weights",
    "ddim_trajectory",
]

SCHEDULES = {"linear": linear_betas, "scaled_linear": scaled_linear_betas}
MODES = ("ddpm", "diff2flow")
_ARCHITECTURE = ("data", "base", "mults", "res_blocks", "time_features", "hidden", "depth")


def check_diffusion_config(diffusion, scheduler="condot"):
    """The diffusion settings {mode, prediction, schedule, num_train_steps}, validated."""
    if not isinstance(diffusion, dict):
        raise ValueError(f"diffusion settings must be a dict, got {type(diffusion).__name__}")
    unknown = set(diffusion) - {"mode", "prediction", "schedule", "num_train_steps"}
    if unknown:
        raise ValueError(f"unknown diffusion settings: {', '.join(sorted(unknown))}")
    d = {"mode": "ddpm", "prediction": "epsilon", "schedule": "linear", "num_train_steps": 1000}
    d.update(diffusion)
    if d["mode"] not in MODES:
        raise ValueError(f"unknown diffusion mode {d['mode']!r}; choose one of {', '.join(MODES)}")
    if d["prediction"] not in PREDICTIONS:
        raise ValueError(f"unknown prediction {d['prediction']!r}; choose one of "
                         f"{', '.join(PREDICTIONS)}")
    if d["schedule"] not in SCHEDULES:
        raise ValueError(f"unknown diffusion schedule {d['schedule']!r}; choose one of "
                         f"{', '.join(SCHEDULES)}")
    n = d["num_train_steps"]
    if isinstance(n, bool) or int(n) != n or not 2 <= n <= 100_000:
        raise ValueError(f"num_train_steps must be an integer in [2, 100000], got {n}")
    d["num_train_steps"] = int(n)
    if d["mode"] == "diff2flow" and scheduler != "condot":
        raise ValueError(f"a Diff2Flow fine-tune trains on the CondOT path (DiffusionToFlow's "
                         f"target); got scheduler {scheduler!r}")
    return d


def schedule_alphas_cumprod(diffusion):
    """abar_k, k = 0..N-1, of the named schedule (float64, (N,))."""
    return alphas_cumprod(SCHEDULES[diffusion["schedule"]](diffusion["num_train_steps"]))


class GuidedDiffusionModel:
    """Classifier-free guidance on the diffusion output: out_u + w (out_c - out_u).

    The velocity is affine in the output (docs/diffusion.md), so this is guidance on v.
    """

    def __init__(self, model, y, guidance=1.0):
        self.model, self.y, self.guidance = model, y, float(guidance)

    def __call__(self, x, timestep, y=None):
        w = self.guidance
        if self.y is None or w == 0.0:
            return self.model(x, timestep, None)
        out_c = self.model(x, timestep, self.y)
        if w == 1.0:
            return out_c
        out_u = self.model(x, timestep, None)
        return out_u + w * (out_c - out_u)


@torch.no_grad()
def ddim_trajectory(velocity, x_T, y=None, guidance=1.0, steps=20):
    """DDIM (eta = 0, fm_torch.diffusion.ddim_sample) of a DiffusionVelocity's network.

    Returns (the states x_dm / s(t) at DDIM's flow times (steps + 1, *x_T.shape), NFE):
    flow variables, so the picture compares with the flow ODE's; the last one is the
    DDIM sample itself.
    """
    model = GuidedDiffusionModel(velocity.timestep_model, y, guidance)
    states = ddim_sample(model, x_T, velocity.alphas_cumprod, steps, velocity.prediction,
                         return_all=True)  # (steps + 1, ...)
    scales = scale_from_flow_time(velocity.flow.time_grid(steps))  # (steps + 1,)
    xs = torch.stack([x / float(s) for x, s in zip(states, scales, strict=True)])
    return xs, int(steps)


def make_objective(config, path):
    """The loop's objective of config's diffusion mode: DDPM or Diff2Flow (None: FlowMatching)."""
    diffusion = config.get("diffusion")
    if diffusion is None:
        return FlowMatching(path)
    abar = schedule_alphas_cumprod(diffusion)
    if diffusion["mode"] == "ddpm":
        return DDPM(abar, diffusion["prediction"])
    return Diff2Flow(abar, diffusion["prediction"], path)


def training_loss(config):
    """f(net, path, x1, y, x0, t): the loss of config's objective on one batch (the older
    hook; the loop takes make_objective's object)."""
    if config.get("diffusion") is None:
        return flow_matching_loss

    def loss(net, path, x1, y, x0, t):
        objective = make_objective(config, path)
        return objective.loss(net, {"x0": x0, "x1": x1, "y": y, "t": t})
    return loss


def velocity_view(config, model):
    """model itself, or for a diffusion run its DiffusionVelocity (what a sampler integrates)."""
    diffusion = config.get("diffusion")
    if diffusion is None:
        return model
    return DiffusionVelocity(model, schedule_alphas_cumprod(diffusion), diffusion["prediction"])


def apply_init_from(init_from, diff2flow, settings):
    """The training settings of a fine-tune that starts from the checkpoint init_from.

    The architecture (data, widths, time features) comes from that checkpoint (a
    different one given here is an error); with diff2flow its diffusion settings come
    too, in mode "diff2flow" (Diff2Flow); without, the run is plain flow matching of
    the same weights (the naive fine-tune). Returns a new dict.
    """
    settings = dict(settings)
    if init_from is None:
        if diff2flow:
            raise ValueError("--diff2flow fine-tunes a diffusion checkpoint: give --init-from")
        return settings
    from fm_torch.io import load_checkpoint

    source = load_checkpoint(init_from)
    if "config" not in source or "ema" not in source:
        raise ValueError(f"{init_from} is not an fm-torch training checkpoint")
    src = source["config"]
    for key in _ARCHITECTURE:
        given = settings.get(key)
        if key == "mults" and given is not None:
            given = [int(m) for m in given]
        if given is not None and key in src and given != src[key]:
            raise ValueError(f"--init-from {init_from} has {key} {src[key]!r}; the fine-tune "
                             f"cannot use {given!r}")
        if key in src:
            settings[key] = src[key]
    diffusion = src.get("diffusion")
    if diff2flow:
        if diffusion is None:
            raise ValueError(f"{init_from} is a flow-matching checkpoint; --diff2flow needs a "
                             "diffusion one (written by train-diffusion)")
        settings["diffusion"] = dict(diffusion, mode="diff2flow")
    settings["init_from"] = str(init_from)
    return settings


def load_init_weights(model, config):
    """Copy the EMA weights of config["init_from"] into model (before training starts)."""
    from fm_torch.io import load_checkpoint

    path = config["init_from"]
    state = load_checkpoint(path)["ema"]["model"]
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        reason = str(e).splitlines()[0]
        raise ValueError(f"{path}: weights do not fit the model ({reason})") from None
