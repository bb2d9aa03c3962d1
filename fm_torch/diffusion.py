"""From diffusion to flow (Diff2Flow, Schusterbauer et al., CVPR 2025, arXiv 2506.02221).

The torch twin of fm_numpy/diffusion.py (read its docstring for the maps): the same
names, argument order and arithmetic order. Schedules, flow-time tables and time maps
are float64 tensors; the wrappers compute a, b, s in float64 and cast them to x's dtype
and device. There is no `backward`: autograd differentiates through the wrapper, whose
velocity is an affine map of the network output.

    x_dm = s x_fm,  t = a / (a + b),  a = t / r,  b = (1 - t) / r,  s = 1 / r,
    r = sqrt(t^2 + (1 - t)^2),  v = x1_hat - x0_hat.
"""

import torch

from fm_torch.paths import check_t, expand_t

__all__ = [
    "PREDICTIONS",
    "DIFFUSERS_PREDICTIONS",
    "DiffusersModel",
    "linear_betas",
    "scaled_linear_betas",
    "alphas_cumprod",
    "flow_time_table",
    "timestep_to_flow_time",
    "flow_time_to_timestep",
    "signal_noise_from_flow_time",
    "alpha_bar_from_flow_time",
    "scale_from_flow_time",
    "alpha_bar_at",
    "x1_x0_from_output",
    "output_from_x1_x0",
    "DiffusionToFlow",
    "FlowToDiffusion",
    "TimestepModel",
    "diffusion_sample",
    "ddpm_loss",
    "ddim_timesteps",
    "ddim_sample",
]

PREDICTIONS = ("epsilon", "v", "x0")
F64 = torch.float64


def linear_betas(num_steps=1000, beta_start=1e-4, beta_end=0.02):
    """DDPM (Ho et al. 2020): beta_k = linspace(beta_start, beta_end, N)."""
    return torch.linspace(beta_start, beta_end, int(num_steps), dtype=F64)


def scaled_linear_betas(num_steps=1000, beta_start=0.00085, beta_end=0.012):
    """Stable Diffusion: beta_k = linspace(sqrt(beta_start), sqrt(beta_end), N)^2."""
    return torch.linspace(beta_start**0.5, beta_end**0.5, int(num_steps), dtype=F64) ** 2


def alphas_cumprod(betas):
    """abar_k = prod_{j <= k} (1 - beta_j)."""
    betas = torch.as_tensor(betas, dtype=F64)
    if betas.ndim != 1 or betas.numel() < 2:
        raise ValueError(f"betas must be 1-D with at least 2 steps, got shape {tuple(betas.shape)}")
    if not bool(((betas > 0) & (betas < 1)).all()):
        raise ValueError("betas must lie in (0, 1)")
    return torch.cumprod(1 - betas, dim=0)


def _check_alphas_cumprod(alphas_cumprod):
    abar = torch.as_tensor(alphas_cumprod, dtype=F64)
    if abar.ndim != 1 or abar.numel() < 2:
        raise ValueError(
            f"alphas_cumprod must be 1-D with at least 2 steps, got shape {tuple(abar.shape)}")
    if not bool(((abar >= 0) & (abar <= 1)).all()):
        raise ValueError("alphas_cumprod must lie in [0, 1]")
    if not bool((torch.diff(abar) < 0).all()):
        raise ValueError("alphas_cumprod must be strictly decreasing")
    return abar


def _check_prediction(prediction):
    if prediction not in PREDICTIONS:
        known = ", ".join(PREDICTIONS)
        raise ValueError(f"unknown prediction {prediction!r}; choose one of {known}")
    return prediction


def _interp(x, xp, fp):
    """Piecewise-linear f(x) through the points (xp, fp), xp increasing, x in [xp[0], xp[-1]]."""
    i = torch.clamp(torch.searchsorted(xp, x, right=True) - 1, 0, len(xp) - 2)
    w = (x - xp[i]) / (xp[i + 1] - xp[i])
    return fp[i] + w * (fp[i + 1] - fp[i])


def flow_time_table(alphas_cumprod):
    """t_k = sqrt(abar_k) / (sqrt(abar_k) + sqrt(1 - abar_k)), one flow time per step, (N,)."""
    abar = _check_alphas_cumprod(alphas_cumprod)
    sqrt_abar = torch.sqrt(abar)
    sqrt_one_minus_abar = torch.sqrt(1 - abar)
    return sqrt_abar / (sqrt_abar + sqrt_one_minus_abar)


def timestep_to_flow_time(timestep, alphas_cumprod):
    """t(k): the table t_k interpolated linearly at a fractional step k in [0, N-1]."""
    t_table = flow_time_table(alphas_cumprod)
    timestep = torch.as_tensor(timestep, dtype=F64)
    n = len(t_table)
    if not bool(((timestep >= 0) & (timestep <= n - 1)).all()):
        raise ValueError(f"diffusion timesteps must lie in [0, {n - 1}], got values from "
                         f"{timestep.min().item()} to {timestep.max().item()}")
    steps = torch.arange(n, dtype=F64)
    return _interp(timestep, steps, t_table)


def flow_time_to_timestep(t, alphas_cumprod, clamp=False):
    """k(t): the inverse of timestep_to_flow_time, by interpolating the monotone table.

    A flow time outside [t_min, t_max] = [t_{N-1}, t_0] has no diffusion counterpart:
    ValueError, or with clamp=True the nearest step (N-1 below t_min, 0 above t_max).
    """
    t_table = flow_time_table(alphas_cumprod)
    t = torch.as_tensor(t, dtype=F64)
    check_t(t)
    t_min, t_max = t_table[-1].item(), t_table[0].item()
    if clamp:
        t = torch.clamp(t, t_min, t_max)
    elif not bool(((t >= t_min) & (t <= t_max)).all()):
        raise ValueError(f"flow time t must lie in [{t_min:.6g}, {t_max:.6g}] to have a diffusion "
                         f"counterpart, got values from {t.min().item()} to {t.max().item()} "
                         "(pass clamp=True for the nearest step)")
    steps = torch.arange(len(t_table), dtype=F64)
    return _interp(t, t_table.flip(0), steps.flip(0))


def signal_noise_from_flow_time(t):
    """(a, b) = (sqrt(abar), sqrt(1 - abar)) = (t, 1 - t) / sqrt(t^2 + (1 - t)^2)."""
    t = torch.as_tensor(t, dtype=F64)
    r = torch.sqrt(t**2 + (1 - t) ** 2)
    return t / r, (1 - t) / r


def alpha_bar_from_flow_time(t):
    """abar = t^2 / (t^2 + (1 - t)^2), the inverse of t = a / (a + b)."""
    sqrt_abar, _ = signal_noise_from_flow_time(t)
    return sqrt_abar**2


def scale_from_flow_time(t):
    """s = sqrt(abar) + sqrt(1 - abar) = 1 / sqrt(t^2 + (1 - t)^2); x_dm = s x_fm."""
    sqrt_abar, sqrt_one_minus_abar = signal_noise_from_flow_time(t)
    return sqrt_abar + sqrt_one_minus_abar


def alpha_bar_at(timestep, alphas_cumprod):
    """abar at a fractional step, through the interpolated flow time: abar(t(k))."""
    return alpha_bar_from_flow_time(timestep_to_flow_time(timestep, alphas_cumprod))


def x1_x0_from_output(prediction, x_dm, out, sqrt_abar, sqrt_one_minus_abar):
    """(x1_hat, x0_hat) from the network output, with x_dm = a x1 + b x0:

    epsilon: x0_hat = out,                 x1_hat = (x_dm - b out) / a
    x0:      x1_hat = out,                 x0_hat = (x_dm - a out) / b
    v:       x1_hat = a x_dm - b out,      x0_hat = b x_dm + a out   (out = a x0 - b x1)
    """
    a, b = sqrt_abar, sqrt_one_minus_abar
    if prediction == "epsilon":
        x0_hat = out
        x1_hat = (x_dm - b * out) / a
    elif prediction == "x0":
        x1_hat = out
        x0_hat = (x_dm - a * out) / b
    else:
        x1_hat = a * x_dm - b * out
        x0_hat = b * x_dm + a * out
    return x1_hat, x0_hat


def output_from_x1_x0(prediction, x1_hat, x0_hat, sqrt_abar, sqrt_one_minus_abar):
    """The network output of a prediction type: epsilon -> x0_hat, x0 -> x1_hat,
    v -> a x0_hat - b x1_hat."""
    a, b = sqrt_abar, sqrt_one_minus_abar
    if prediction == "epsilon":
        return x0_hat
    if prediction == "x0":
        return x1_hat
    return a * x0_hat - b * x1_hat


def _batch_t(t, x):
    """Flow time as float64 on x's device, scalar or (B,), checked like AffinePath's."""
    t = torch.as_tensor(t, dtype=F64)
    check_t(t)
    if t.ndim not in (0, 1) or (t.ndim == 1 and t.shape[0] not in (1, x.shape[0])):
        raise ValueError(f"t must be a scalar or have shape ({x.shape[0]},), got {tuple(t.shape)}")
    return t


class DiffusionToFlow:
    """A diffusion model as a CondOT flow-matching velocity field v(x, t, y=None).

    model(x_dm, timestep, y) takes a fractional diffusion step, shape (B,). For a flow
    time t: k = k(t) (clamped to [0, N-1]), (a, b) = (t, 1 - t) / sqrt(t^2 + (1-t)^2),
    x_dm = (a + b) x, out = model(x_dm, k, y), and v = x1_hat - x0_hat
    (x1_x0_from_output). t_min and t_max bound the flow times with a diffusion step.
    """

    def __init__(self, model, alphas_cumprod, prediction="epsilon"):
        self.model = model
        self.alphas_cumprod = _check_alphas_cumprod(alphas_cumprod)
        self.prediction = _check_prediction(prediction)
        t_table = flow_time_table(self.alphas_cumprod)
        self.t_min = float(t_table[-1])
        self.t_max = float(t_table[0])

    @classmethod
    def from_diffusers(cls, unet, scheduler, **unet_kwargs):
        """A diffusers UNet and DDPM/DDIM scheduler as a flow (fm_torch/diffusers_interop.py)."""
        abar, prediction = _scheduler_table(scheduler)
        return cls(DiffusersModel(unet, **unet_kwargs), abar, prediction)

    def __repr__(self):
        return (f"DiffusionToFlow(prediction={self.prediction!r}, "
                f"steps={len(self.alphas_cumprod)}, t in [{self.t_min:.4g}, {self.t_max:.4g}])")

    def time_grid(self, num_steps):
        """The flow times of num_steps evenly spaced diffusion steps (N-1 down to 0), then 1.

        num_steps + 1 times from t_min to 1; Euler on this grid from x = x_T / s(t_min) is
        DDIM (eta = 0) with num_steps steps, step for step (docs/diffusion.md).
        """
        steps = ddim_timesteps(len(self.alphas_cumprod), num_steps).to(F64)
        return torch.cat([timestep_to_flow_time(steps, self.alphas_cumprod),
                          torch.ones(1, dtype=F64)])

    def coefficients(self, t, x):
        """(timestep (B,), a, b, s) for flow time t, a, b, s broadcastable against x."""
        t = _batch_t(t, x)
        sqrt_abar, sqrt_one_minus_abar = signal_noise_from_flow_time(t)
        if self.prediction == "epsilon" and bool((sqrt_abar == 0).any()):
            raise ValueError("epsilon-prediction defines no velocity at t = 0 (no signal); "
                             f"start the flow at t >= t_min = {self.t_min:.4g}")
        if self.prediction == "x0" and bool((sqrt_one_minus_abar == 0).any()):
            raise ValueError("x0-prediction defines no velocity at t = 1 (no noise); "
                             f"end the flow at t <= t_max = {self.t_max:.4g}")
        timestep = flow_time_to_timestep(t, self.alphas_cumprod, clamp=True)
        timestep = timestep.to(x.dtype).to(x.device).expand(x.shape[0])  # (B,)
        scale = sqrt_abar + sqrt_one_minus_abar
        a, b, s = (expand_t(c.to(x.dtype).to(x.device), x)
                   for c in (sqrt_abar, sqrt_one_minus_abar, scale))
        return timestep, a, b, s

    def __call__(self, x, t, y=None):
        """v = x1_hat - x0_hat of the diffusion output at x_dm = s x, step k(t)."""
        timestep, a, b, s = self.coefficients(t, x)
        x_dm = s * x  # (B, ...)
        out = self.model(x_dm, timestep, y)  # (B, ...)
        x1_hat, x0_hat = x1_x0_from_output(self.prediction, x_dm, out, a, b)
        return x1_hat - x0_hat


class FlowToDiffusion:
    """A CondOT velocity field v(x, t[, y]) as a diffusion model(x_dm, timestep, y=None).

    For a fractional step k: t = t(k), (a, b) from t, x = x_dm / (a + b),
    x1_hat = x + (1 - t) v, x0_hat = x - t v, and the output of the prediction type
    (output_from_x1_x0). y is passed on only when it is not None.
    """

    def __init__(self, v, alphas_cumprod, prediction="epsilon"):
        self.v = v
        self.alphas_cumprod = _check_alphas_cumprod(alphas_cumprod)
        self.prediction = _check_prediction(prediction)

    def __repr__(self):
        return f"FlowToDiffusion(prediction={self.prediction!r}, steps={len(self.alphas_cumprod)})"

    def __call__(self, x_dm, timestep, y=None):
        t = timestep_to_flow_time(torch.as_tensor(timestep).cpu(), self.alphas_cumprod)
        sqrt_abar, sqrt_one_minus_abar = signal_noise_from_flow_time(t)
        scale = sqrt_abar + sqrt_one_minus_abar
        a, b, s, t_x = (expand_t(c.to(x_dm.dtype).to(x_dm.device), x_dm)
                        for c in (sqrt_abar, sqrt_one_minus_abar, scale, t))
        x = x_dm / s  # (B, ...)
        t_v = t.to(x_dm.dtype).to(x_dm.device)
        v = self.v(x, t_v) if y is None else self.v(x, t_v, y)  # (B, ...)
        x1_hat = x + (1 - t_x) * v
        x0_hat = x - t_x * v
        return output_from_x1_x0(self.prediction, x1_hat, x0_hat, a, b)


class TimestepModel(torch.nn.Module):
    """A network net(x, t, y) with t in [0, 1] as a diffusion model(x, timestep, y).

    The network gets t = timestep / num_train_steps, so the MLP's time features
    cos/sin(1000 t freqs) are the usual sinusoidal embedding of the step itself when
    num_train_steps = 1000.
    """

    def __init__(self, net, num_train_steps=1000):
        super().__init__()
        self.net = net
        self.num_train_steps = int(num_train_steps)

    def forward(self, x, timestep, y=None):
        timestep = torch.as_tensor(timestep, dtype=x.dtype, device=x.device)
        return self.net(x, timestep / self.num_train_steps, y)


def diffusion_sample(x0, x1, timestep, alphas_cumprod):
    """x_dm = sqrt(abar_k) x1 + sqrt(1 - abar_k) x0 at integer steps k, shape (B,)."""
    abar = _check_alphas_cumprod(alphas_cumprod)
    timestep = torch.as_tensor(timestep)
    if timestep.is_floating_point() or timestep.is_complex():
        raise ValueError(f"training timesteps must be integers, got dtype {timestep.dtype}")
    abar_k = expand_t(abar[timestep.cpu()].to(x1.dtype).to(x1.device), x1)
    return torch.sqrt(abar_k) * x1 + torch.sqrt(1 - abar_k) * x0  # (B, ...)


def ddpm_loss(model, x0, x1, timestep, alphas_cumprod, y=None):
    """The DDPM epsilon loss L = mean (model(x_dm, k, y) - x0)^2 (Ho et al. 2020, L_simple).

    Returns L as a 0-d tensor (autograd gives the gradients; fm_numpy also returns dL/d out).
    """
    x_dm = diffusion_sample(x0, x1, timestep, alphas_cumprod)
    eps_hat = model(x_dm, timestep, y)  # (B, ...)
    diff = eps_hat - x0
    loss = torch.mean(diff**2)
    return loss


def ddim_timesteps(num_train_steps, num_steps):
    """num_steps integer steps from N-1 down to 0, evenly spaced, descending."""
    if not 1 <= int(num_steps) <= int(num_train_steps):
        raise ValueError(f"num_steps must lie in [1, {num_train_steps}], got {num_steps}")
    return torch.round(torch.linspace(num_train_steps - 1, 0, int(num_steps), dtype=F64)).long()


@torch.no_grad()
def ddim_sample(model, x_T, alphas_cumprod, num_steps, prediction="epsilon", y=None,
                return_all=False):
    """Deterministic DDIM (eta = 0, Song et al. 2021) from x_T at step N-1 to data.

    Each step: out = model(x, k, y), (x1_hat, x0_hat) from out, then
    x <- sqrt(abar_next) x1_hat + sqrt(1 - abar_next) x0_hat, with abar_next = 1 after
    step 0. One model evaluation per step (NFE = num_steps). With return_all=True the
    states before and after every step, (num_steps + 1, *x_T.shape), not only the last.
    """
    abar = _check_alphas_cumprod(alphas_cumprod)
    _check_prediction(prediction)
    steps = ddim_timesteps(len(abar), num_steps)
    x = x_T
    states = [x]
    for i, k in enumerate(steps):
        abar_next = abar[steps[i + 1]] if i + 1 < len(steps) else torch.ones((), dtype=F64)
        timestep = torch.full((x.shape[0],), float(k), dtype=x.dtype, device=x.device)  # (B,)
        out = model(x, timestep, y)  # (B, ...)
        a = torch.sqrt(abar[k]).to(x.dtype).to(x.device)
        b = torch.sqrt(1 - abar[k]).to(x.dtype).to(x.device)
        x1_hat, x0_hat = x1_x0_from_output(prediction, x, out, a, b)
        a_next = torch.sqrt(abar_next).to(x.dtype).to(x.device)
        b_next = torch.sqrt(1 - abar_next).to(x.dtype).to(x.device)
        x = a_next * x1_hat + b_next * x0_hat  # (B, ...)
        states.append(x)
    return torch.stack(states) if return_all else x


# ------------------------------------------- diffusers models (fm_torch/diffusers_interop.py)
DIFFUSERS_PREDICTIONS = {"epsilon": "epsilon", "v_prediction": "v", "sample": "x0"}


def _scheduler_table(scheduler):
    """(alphas_cumprod float64 (N,), our prediction name) of a DDPM/DDIM-style scheduler."""
    abar = getattr(scheduler, "alphas_cumprod", None)
    config = getattr(scheduler, "config", None)
    if abar is None or config is None:
        raise ValueError(f"{type(scheduler).__name__} has no alphas_cumprod table; pass a "
                         "DDPMScheduler or DDIMScheduler (a flow-matching scheduler needs "
                         "from_flow_match)")
    kind = getattr(config, "prediction_type", "epsilon")
    if kind not in DIFFUSERS_PREDICTIONS:
        raise ValueError(f"unknown prediction_type {kind!r}; diffusers' are "
                         f"{', '.join(DIFFUSERS_PREDICTIONS)}")
    return torch.as_tensor(abar).to(torch.float64).cpu(), DIFFUSERS_PREDICTIONS[kind]


class DiffusersModel(torch.nn.Module):
    """A diffusers UNet as our diffusion model(x_dm, timestep, y=None).

    out = unet(x_dm, timestep as float (B,), class_labels=y, **unet_kwargs).sample;
    y is passed only when given (UNet2DModel with num_class_embeds).
    """

    def __init__(self, unet, **unet_kwargs):
        super().__init__()
        self.unet = unet
        self.unet_kwargs = unet_kwargs

    def forward(self, x_dm, timestep, y=None):
        # a float tensor: diffusers casts a Python number to long, losing the fraction
        timestep = torch.as_tensor(timestep, device=x_dm.device).to(x_dm.dtype)
        timestep = timestep.expand(x_dm.shape[0])  # (B,)
        kwargs = dict(self.unet_kwargs)
        if y is not None:
            kwargs["class_labels"] = y
        out = self.unet(x_dm, timestep, **kwargs)
        return out.sample if hasattr(out, "sample") else out[0]
