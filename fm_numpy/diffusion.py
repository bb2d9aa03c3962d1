"""From diffusion to flow (Diff2Flow, Schusterbauer et al., CVPR 2025, arXiv 2506.02221).

A variance-preserving diffusion model with a discrete schedule sees

    x_dm = sqrt(abar_k) x1 + sqrt(1 - abar_k) x0        (x1 data, x0 noise, k = 0..N-1)

and flow matching on the CondOT path sees x_fm = t x1 + (1 - t) x0. With
a = sqrt(abar), b = sqrt(1 - abar) and the scale s = a + b the two are the same point:

    x_dm = s x_fm,          t = a / (a + b)                    (scale map, time map)

and, because a^2 + b^2 = 1, the flow time alone fixes a, b and s:

    a = t / r,  b = (1 - t) / r,  s = 1 / r,  r = sqrt(t^2 + (1 - t)^2).

The flow time of step k is the table t_k = a_k / (a_k + b_k), decreasing in k. A flow
time t in [t_min, t_max] = [t_{N-1}, t_0] goes back to a fractional diffusion step by
interpolating that table linearly; abar at a fractional step is *defined* through the
interpolated flow time (abar(k) = a(t(k))^2), so step -> t -> abar is one consistent
chain and equals the table at integer steps.

Flow times with no diffusion counterpart (t < t_min: more noise than the last step, e.g.
t < 0.0640 for Stable Diffusion's schedule; t > t_max: less noise than the first step)
raise ValueError in `flow_time_to_timestep` unless clamp=True. `DiffusionToFlow`
clamps (the network sees its nearest step, the conversion uses the exact a, b of t) so
that solvers may run to t = 1; it raises only where the conversion divides by zero:
epsilon-prediction at t = 0 and x0-prediction at t = 1.

Prediction names follow the diffusion literature: "epsilon" predicts the noise (our x0),
"x0" predicts the clean sample (our x1!), "v" predicts v_dm = a x0 - b x1 (Salimans &
Ho). The flow velocity is v = x1_hat - x0_hat for every type.

Every formula is written in the same order in fm_torch/diffusion.py.
"""

import numpy as np

from fm_numpy.paths import check_t, expand_t

__all__ = [
    "PREDICTIONS",
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


def linear_betas(num_steps=1000, beta_start=1e-4, beta_end=0.02):
    """DDPM (Ho et al. 2020): beta_k = linspace(beta_start, beta_end, N)."""
    return np.linspace(beta_start, beta_end, int(num_steps), dtype=np.float64)


def scaled_linear_betas(num_steps=1000, beta_start=0.00085, beta_end=0.012):
    """Stable Diffusion: beta_k = linspace(sqrt(beta_start), sqrt(beta_end), N)^2."""
    return np.linspace(beta_start**0.5, beta_end**0.5, int(num_steps), dtype=np.float64) ** 2


def alphas_cumprod(betas):
    """abar_k = prod_{j <= k} (1 - beta_j)."""
    betas = np.asarray(betas, dtype=np.float64)
    if betas.ndim != 1 or betas.size < 2:
        raise ValueError(f"betas must be 1-D with at least 2 steps, got shape {betas.shape}")
    if not np.all((betas > 0) & (betas < 1)):
        raise ValueError("betas must lie in (0, 1)")
    return np.cumprod(1 - betas)


def _check_alphas_cumprod(alphas_cumprod):
    abar = np.asarray(alphas_cumprod, dtype=np.float64)
    if abar.ndim != 1 or abar.size < 2:
        raise ValueError(
            f"alphas_cumprod must be 1-D with at least 2 steps, got shape {abar.shape}")
    if not np.all((abar >= 0) & (abar <= 1)):
        raise ValueError("alphas_cumprod must lie in [0, 1]")
    if not np.all(np.diff(abar) < 0):
        raise ValueError("alphas_cumprod must be strictly decreasing")
    return abar


def _check_prediction(prediction):
    if prediction not in PREDICTIONS:
        known = ", ".join(PREDICTIONS)
        raise ValueError(f"unknown prediction {prediction!r}; choose one of {known}")
    return prediction


def _interp(x, xp, fp):
    """Piecewise-linear f(x) through the points (xp, fp), xp increasing, x in [xp[0], xp[-1]]."""
    i = np.clip(np.searchsorted(xp, x, side="right") - 1, 0, len(xp) - 2)
    w = (x - xp[i]) / (xp[i + 1] - xp[i])
    return fp[i] + w * (fp[i + 1] - fp[i])


def flow_time_table(alphas_cumprod):
    """t_k = sqrt(abar_k) / (sqrt(abar_k) + sqrt(1 - abar_k)), one flow time per step, (N,)."""
    abar = _check_alphas_cumprod(alphas_cumprod)
    sqrt_abar = np.sqrt(abar)
    sqrt_one_minus_abar = np.sqrt(1 - abar)
    return sqrt_abar / (sqrt_abar + sqrt_one_minus_abar)


def timestep_to_flow_time(timestep, alphas_cumprod):
    """t(k): the table t_k interpolated linearly at a fractional step k in [0, N-1]."""
    t_table = flow_time_table(alphas_cumprod)
    timestep = np.asarray(timestep, dtype=np.float64)
    n = len(t_table)
    if not np.all((timestep >= 0) & (timestep <= n - 1)):
        raise ValueError(f"diffusion timesteps must lie in [0, {n - 1}], got values from "
                         f"{np.min(timestep)} to {np.max(timestep)}")
    steps = np.arange(n, dtype=np.float64)
    return _interp(timestep, steps, t_table)


def flow_time_to_timestep(t, alphas_cumprod, clamp=False):
    """k(t): the inverse of timestep_to_flow_time, by interpolating the monotone table.

    A flow time outside [t_min, t_max] = [t_{N-1}, t_0] has no diffusion counterpart:
    ValueError, or with clamp=True the nearest step (N-1 below t_min, 0 above t_max).
    """
    t_table = flow_time_table(alphas_cumprod)
    t = np.asarray(t, dtype=np.float64)
    check_t(t)
    t_min, t_max = t_table[-1], t_table[0]
    if clamp:
        t = np.clip(t, t_min, t_max)
    elif not np.all((t >= t_min) & (t <= t_max)):
        raise ValueError(f"flow time t must lie in [{t_min:.6g}, {t_max:.6g}] to have a diffusion "
                         f"counterpart, got values from {np.min(t)} to {np.max(t)} "
                         "(pass clamp=True for the nearest step)")
    steps = np.arange(len(t_table), dtype=np.float64)
    return _interp(t, t_table[::-1], steps[::-1])


def signal_noise_from_flow_time(t):
    """(a, b) = (sqrt(abar), sqrt(1 - abar)) = (t, 1 - t) / sqrt(t^2 + (1 - t)^2)."""
    t = np.asarray(t, dtype=np.float64)
    r = np.sqrt(t**2 + (1 - t) ** 2)
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


def _output_slopes(prediction, sqrt_abar, sqrt_one_minus_abar):
    """(d x1_hat / d out, d x0_hat / d out) of x1_x0_from_output, elementwise."""
    a, b = sqrt_abar, sqrt_one_minus_abar
    if prediction == "epsilon":
        return -b / a, np.ones_like(a)
    if prediction == "x0":
        return np.ones_like(a), -a / b
    return -b, a


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
    """Flow time as float64, scalar or (B,), checked like AffinePath's."""
    t = np.asarray(t, dtype=np.float64)
    check_t(t)
    if t.ndim not in (0, 1) or (t.ndim == 1 and t.shape[0] not in (1, x.shape[0])):
        raise ValueError(f"t must be a scalar or have shape ({x.shape[0]},), got {t.shape}")
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

    def __repr__(self):
        return (f"DiffusionToFlow(prediction={self.prediction!r}, "
                f"steps={len(self.alphas_cumprod)}, t in [{self.t_min:.4g}, {self.t_max:.4g}])")

    def time_grid(self, num_steps):
        """The flow times of num_steps evenly spaced diffusion steps (N-1 down to 0), then 1.

        num_steps + 1 times from t_min to 1; Euler on this grid from x = x_T / s(t_min) is
        DDIM (eta = 0) with num_steps steps, step for step (docs/diffusion.md).
        """
        steps = ddim_timesteps(len(self.alphas_cumprod), num_steps).astype(np.float64)
        return np.append(timestep_to_flow_time(steps, self.alphas_cumprod), 1.0)

    def coefficients(self, t, x):
        """(timestep (B,), a, b, s) for flow time t, a, b, s broadcastable against x."""
        t = _batch_t(t, x)
        sqrt_abar, sqrt_one_minus_abar = signal_noise_from_flow_time(t)
        if self.prediction == "epsilon" and np.any(sqrt_abar == 0):
            raise ValueError("epsilon-prediction defines no velocity at t = 0 (no signal); "
                             f"start the flow at t >= t_min = {self.t_min:.4g}")
        if self.prediction == "x0" and np.any(sqrt_one_minus_abar == 0):
            raise ValueError("x0-prediction defines no velocity at t = 1 (no noise); "
                             f"end the flow at t <= t_max = {self.t_max:.4g}")
        timestep = flow_time_to_timestep(t, self.alphas_cumprod, clamp=True)
        timestep = np.broadcast_to(timestep, (x.shape[0],)).astype(x.dtype)  # (B,)
        scale = sqrt_abar + sqrt_one_minus_abar
        a, b, s = (expand_t(c.astype(x.dtype), x) for c in (sqrt_abar, sqrt_one_minus_abar, scale))
        return timestep, a, b, s

    def __call__(self, x, t, y=None):
        """v = x1_hat - x0_hat of the diffusion output at x_dm = s x, step k(t)."""
        timestep, a, b, s = self.coefficients(t, x)
        x_dm = s * x  # (B, ...)
        out = self.model(x_dm, timestep, y)  # (B, ...)
        x1_hat, x0_hat = x1_x0_from_output(self.prediction, x_dm, out, a, b)
        self._slopes = _output_slopes(self.prediction, a, b)
        return x1_hat - x0_hat

    def backward(self, dv):
        """Backpropagate dL/dv of the last call through the wrapper into model.backward.

        Returns whatever model.backward returns (the MLP: its gradient dict).
        """
        d_x1_d_out, d_x0_d_out = self._slopes
        d_x1_hat = dv  # v = x1_hat - x0_hat
        d_x0_hat = -dv
        d_out = d_x1_d_out * d_x1_hat + d_x0_d_out * d_x0_hat  # (B, ...)
        return self.model.backward(d_out)


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
        t = timestep_to_flow_time(timestep, self.alphas_cumprod)
        sqrt_abar, sqrt_one_minus_abar = signal_noise_from_flow_time(t)
        scale = sqrt_abar + sqrt_one_minus_abar
        a, b, s, t_x = (expand_t(c.astype(x_dm.dtype), x_dm)
                        for c in (sqrt_abar, sqrt_one_minus_abar, scale, t))
        x = x_dm / s  # (B, ...)
        t_v = t.astype(x_dm.dtype)
        v = self.v(x, t_v) if y is None else self.v(x, t_v, y)  # (B, ...)
        x1_hat = x + (1 - t_x) * v
        x0_hat = x - t_x * v
        return output_from_x1_x0(self.prediction, x1_hat, x0_hat, a, b)


class TimestepModel:
    """A network net(x, t, y) with t in [0, 1] as a diffusion model(x, timestep, y).

    The network gets t = timestep / num_train_steps, so the MLP's time features
    cos/sin(1000 t freqs) are the usual sinusoidal embedding of the step itself when
    num_train_steps = 1000. backward(d_out) is the network's backward.
    """

    def __init__(self, net, num_train_steps=1000):
        self.net = net
        self.num_train_steps = int(num_train_steps)

    def __call__(self, x, timestep, y=None):
        return self.net(x, np.asarray(timestep, dtype=x.dtype) / self.num_train_steps, y)

    def backward(self, d_out):
        return self.net.backward(d_out)


def diffusion_sample(x0, x1, timestep, alphas_cumprod):
    """x_dm = sqrt(abar_k) x1 + sqrt(1 - abar_k) x0 at integer steps k, shape (B,)."""
    abar = _check_alphas_cumprod(alphas_cumprod)
    timestep = np.asarray(timestep)
    if not np.issubdtype(timestep.dtype, np.integer):
        raise ValueError(f"training timesteps must be integers, got dtype {timestep.dtype}")
    abar_k = expand_t(abar[timestep].astype(x1.dtype), x1)
    return np.sqrt(abar_k) * x1 + np.sqrt(1 - abar_k) * x0  # (B, ...)


def ddpm_loss(model, x0, x1, timestep, alphas_cumprod, y=None):
    """The DDPM epsilon loss L = mean (model(x_dm, k, y) - x0)^2 (Ho et al. 2020, L_simple).

    Returns (L, dL/d out) so that model.backward(d_out) gives the parameter gradients.
    """
    x_dm = diffusion_sample(x0, x1, timestep, alphas_cumprod)
    eps_hat = model(x_dm, timestep, y)  # (B, ...)
    diff = eps_hat - x0
    loss = np.mean(diff**2)
    d_out = 2 * diff / diff.size
    return float(loss), d_out


def ddim_timesteps(num_train_steps, num_steps):
    """num_steps integer steps from N-1 down to 0, evenly spaced, descending."""
    if not 1 <= int(num_steps) <= int(num_train_steps):
        raise ValueError(f"num_steps must lie in [1, {num_train_steps}], got {num_steps}")
    return np.round(np.linspace(num_train_steps - 1, 0, int(num_steps))).astype(np.int64)


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
    x = np.asarray(x_T)
    states = [x]
    for i, k in enumerate(steps):
        abar_next = abar[steps[i + 1]] if i + 1 < len(steps) else 1.0
        timestep = np.full((x.shape[0],), k, dtype=x.dtype)  # (B,)
        out = model(x, timestep, y)  # (B, ...)
        a = np.sqrt(abar[k]).astype(x.dtype)
        b = np.sqrt(1 - abar[k]).astype(x.dtype)
        x1_hat, x0_hat = x1_x0_from_output(prediction, x, out, a, b)
        a_next = np.sqrt(abar_next).astype(x.dtype)
        b_next = np.sqrt(1 - abar_next).astype(x.dtype)
        x = a_next * x1_hat + b_next * x0_hat  # (B, ...)
        states.append(x)
    return np.stack(states) if return_all else x
