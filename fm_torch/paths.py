"""Affine probability paths: x_t = alpha_t x1 + sigma_t x0 (t=0 noise, t=1 data).

The torch twin of fm_numpy/paths.py: the same schedulers, the same `AffinePath`, every
formula in the same order, on any device and dtype.
"""

import math

import torch

__all__ = [
    "CondOT",
    "SigmaMinOT",
    "Cosine",
    "LinearVP",
    "VP",
    "Polynomial",
    "AffinePath",
    "SCHEDULERS",
    "make_scheduler",
]


class CondOT:
    """Conditional optimal transport: alpha_t = t, sigma_t = 1 - t."""

    def __call__(self, t):
        t = torch.as_tensor(t)
        alpha_t = t
        sigma_t = 1 - t
        d_alpha_t = torch.ones_like(t)
        d_sigma_t = -torch.ones_like(t)
        return alpha_t, sigma_t, d_alpha_t, d_sigma_t

    def __repr__(self):
        return "CondOT()"


class SigmaMinOT:
    """Lipman et al. (2022): alpha_t = t, sigma_t = 1 - (1 - sigma_min) t."""

    def __init__(self, sigma_min=1e-4):
        if not 0 <= sigma_min < 1:
            raise ValueError(f"sigma_min must lie in [0, 1), got {sigma_min}")
        self.sigma_min = float(sigma_min)

    def __call__(self, t):
        t = torch.as_tensor(t)
        alpha_t = t
        sigma_t = 1 - (1 - self.sigma_min) * t
        d_alpha_t = torch.ones_like(t)
        d_sigma_t = -(1 - self.sigma_min) * torch.ones_like(t)
        return alpha_t, sigma_t, d_alpha_t, d_sigma_t

    def __repr__(self):
        return f"SigmaMinOT(sigma_min={self.sigma_min})"


class Cosine:
    """alpha_t = sin(pi t / 2), sigma_t = cos(pi t / 2)."""

    def __call__(self, t):
        t = torch.as_tensor(t)
        alpha_t = torch.sin(0.5 * math.pi * t)
        sigma_t = torch.cos(0.5 * math.pi * t)
        d_alpha_t = 0.5 * math.pi * torch.cos(0.5 * math.pi * t)
        d_sigma_t = -0.5 * math.pi * torch.sin(0.5 * math.pi * t)
        return alpha_t, sigma_t, d_alpha_t, d_sigma_t

    def __repr__(self):
        return "Cosine()"


class LinearVP:
    """Variance preserving with a linear signal: alpha_t = t, sigma_t = sqrt(1 - t^2).

    d_sigma_t = -t / sqrt(1 - t^2) is infinite at t = 1.
    """

    def __call__(self, t):
        t = torch.as_tensor(t)
        alpha_t = t
        sigma_t = torch.sqrt(1 - t**2)
        d_alpha_t = torch.ones_like(t)
        d_sigma_t = -t / sigma_t
        return alpha_t, sigma_t, d_alpha_t, d_sigma_t

    def __repr__(self):
        return "LinearVP()"


class VP:
    """Variance-preserving diffusion (Song et al.) written in flow time.

    T(t) = 0.5 (1 - t)^2 (beta_max - beta_min) + (1 - t) beta_min,
    alpha_t = exp(-T / 2), sigma_t = sqrt(1 - exp(-T)); sigma_1 = 0, so d_sigma_1 = -inf
    for beta_min > 0 (beta_min = 0: a finite limit, but 0/0 = NaN at t = 1 exactly).
    """

    def __init__(self, beta_min=0.1, beta_max=20.0):
        if not 0 <= beta_min <= beta_max:
            raise ValueError(f"VP needs 0 <= beta_min <= beta_max, got {beta_min}, {beta_max}")
        self.beta_min = float(beta_min)
        self.beta_max = float(beta_max)

    def __call__(self, t):
        t = torch.as_tensor(t)
        T = 0.5 * (1 - t) ** 2 * (self.beta_max - self.beta_min) + (1 - t) * self.beta_min
        d_T = -(1 - t) * (self.beta_max - self.beta_min) - self.beta_min
        alpha_t = torch.exp(-0.5 * T)
        # 1 - exp(-T) cancels near t = 1 (T -> 0); -expm1(-T) keeps sigma_t's relative accuracy
        sigma_t = torch.sqrt(-torch.expm1(-T))
        d_alpha_t = -0.5 * d_T * alpha_t
        d_sigma_t = 0.5 * d_T * torch.exp(-T) / sigma_t
        return alpha_t, sigma_t, d_alpha_t, d_sigma_t

    def __repr__(self):
        return f"VP(beta_min={self.beta_min}, beta_max={self.beta_max})"


class Polynomial:
    """alpha_t = t^n, sigma_t = 1 - t^n."""

    def __init__(self, n=2.0):
        if not n > 0:
            raise ValueError(f"Polynomial needs n > 0, got {n}")
        self.n = float(n)

    def __call__(self, t):
        t = torch.as_tensor(t)
        alpha_t = t**self.n
        sigma_t = 1 - t**self.n
        d_alpha_t = self.n * t ** (self.n - 1)
        d_sigma_t = -self.n * t ** (self.n - 1)
        return alpha_t, sigma_t, d_alpha_t, d_sigma_t

    def __repr__(self):
        return f"Polynomial(n={self.n})"


SCHEDULERS = {
    "condot": CondOT,
    "sigma_min_ot": SigmaMinOT,
    "cosine": Cosine,
    "linear_vp": LinearVP,
    "vp": VP,
    "polynomial": Polynomial,
}


def make_scheduler(name, **kwargs):
    """Build a scheduler from its name in SCHEDULERS (as the command lines spell it)."""
    key = name.lower().replace("-", "_") if isinstance(name, str) else None
    if key not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    return SCHEDULERS[key](**kwargs)


def check_t(t):
    """Reject times outside [0, 1] (NaN included) with one clear message."""
    if not bool(((t >= 0) & (t <= 1)).all()):
        low, high = t.min().item(), t.max().item()
        raise ValueError(f"t must lie in [0, 1], got values from {low} to {high}")


def check_finite(name, x):
    """Reject tensors holding NaN or infinite values with one clear message."""
    if not bool(torch.isfinite(torch.as_tensor(x)).all()):
        raise ValueError(f"{name} holds NaN or infinite values")


def check_same_shape(name_a, a, name_b, b):
    """Reject two tensors of different shapes with one clear message."""
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape, "
            f"got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def expand_t(c, x):
    """Broadcast a time coefficient (scalar or (B,)) against x of shape (B, ...)."""
    if c.ndim == 0:
        return c
    return c.reshape(c.shape + (1,) * (x.ndim - c.ndim))  # (B, 1, ..., 1)


class AffinePath:
    """The conditional path x_t = alpha_t x1 + sigma_t x0 of a scheduler."""

    def __init__(self, scheduler=None):
        self.scheduler = CondOT() if scheduler is None else scheduler

    def __repr__(self):
        return f"AffinePath({self.scheduler!r})"

    def coefficients(self, t, x):
        """(alpha_t, sigma_t, d_alpha_t, d_sigma_t) in x's dtype, broadcastable against x."""
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        check_t(t)
        if t.ndim not in (0, 1) or (t.ndim == 1 and t.shape[0] not in (1, x.shape[0])):
            raise ValueError(
                f"t must be a scalar or have shape ({x.shape[0]},), got {tuple(t.shape)}"
            )
        return tuple(expand_t(c, x) for c in self.scheduler(t))

    def sample(self, x0, x1, t):
        """xt = alpha_t x1 + sigma_t x0 and ut = d_alpha_t x1 + d_sigma_t x0."""
        check_same_shape("x0", x0, "x1", x1)
        check_finite("x0", x0)
        check_finite("x1", x1)
        alpha_t, sigma_t, d_alpha_t, d_sigma_t = self.coefficients(t, x1)
        xt = alpha_t * x1 + sigma_t * x0  # (B, ...)
        ut = d_alpha_t * x1 + d_sigma_t * x0  # (B, ...)
        return xt, ut

    def velocity_from_x1(self, xt, x1_hat, t):
        """v = (d_sigma_t / sigma_t) xt + ((d_alpha_t sigma_t - d_sigma_t alpha_t) / sigma_t) x1."""
        alpha_t, sigma_t, d_alpha_t, d_sigma_t = self.coefficients(t, xt)
        a = d_sigma_t / sigma_t
        b = (d_alpha_t * sigma_t - d_sigma_t * alpha_t) / sigma_t
        return a * xt + b * x1_hat

    def velocity_from_x0(self, xt, x0_hat, t):
        """v = (d_alpha_t / alpha_t) xt + ((d_sigma_t alpha_t - d_alpha_t sigma_t) / alpha_t) x0."""
        alpha_t, sigma_t, d_alpha_t, d_sigma_t = self.coefficients(t, xt)
        a = d_alpha_t / alpha_t
        b = (d_sigma_t * alpha_t - d_alpha_t * sigma_t) / alpha_t
        return a * xt + b * x0_hat

    def x1_from_velocity(self, xt, v, t):
        """x1 = (sigma_t v - d_sigma_t xt) / (d_alpha_t sigma_t - d_sigma_t alpha_t)."""
        alpha_t, sigma_t, d_alpha_t, d_sigma_t = self.coefficients(t, xt)
        return (sigma_t * v - d_sigma_t * xt) / (d_alpha_t * sigma_t - d_sigma_t * alpha_t)

    def x0_from_velocity(self, xt, v, t):
        """x0 = (alpha_t v - d_alpha_t xt) / (d_sigma_t alpha_t - d_alpha_t sigma_t)."""
        alpha_t, sigma_t, d_alpha_t, d_sigma_t = self.coefficients(t, xt)
        return (alpha_t * v - d_alpha_t * xt) / (d_sigma_t * alpha_t - d_alpha_t * sigma_t)
