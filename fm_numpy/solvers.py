"""ODE solvers for dx/dt = v(x, t), from noise (t=0) to data (t=1) or back.

Fixed-step methods take one step per interval of the time grid; each step is a few lines
of the update rule, in the same arithmetic order as fm_torch/solvers.py, so both packages
produce the same trajectory. Adaptive methods hand the flattened batch to
`scipy.integrate.solve_ivp`.
"""

import math

import numpy as np
from scipy.integrate import solve_ivp

__all__ = [
    "FIXED_METHODS",
    "ADAPTIVE_METHODS",
    "euler_step",
    "midpoint_step",
    "heun_step",
    "rk4_step",
    "odeint",
    "ClassifierFreeGuidance",
    "check_guidance_interval",
]


def euler_step(v, x, t, h):
    """x_{n+1} = x_n + h v(x_n, t_n); order 1, 1 evaluation."""
    return x + h * v(x, t)


def midpoint_step(v, x, t, h):
    """x_{n+1} = x_n + h v(x_n + (h/2) v(x_n, t_n), t_n + h/2); order 2, 2 evaluations."""
    k1 = v(x, t)
    x_mid = x + (0.5 * h) * k1
    return x + h * v(x_mid, t + 0.5 * h)


def heun_step(v, x, t, h):
    """x_{n+1} = x_n + (h/2) (k1 + k2), k2 = v(x_n + h k1, t_n + h); order 2, 2 evaluations."""
    k1 = v(x, t)
    k2 = v(x + h * k1, t + h)
    return x + (0.5 * h) * (k1 + k2)


def rk4_step(v, x, t, h):
    """Classic Runge-Kutta: x_{n+1} = x_n + (h/6)(k1 + 2 k2 + 2 k3 + k4); order 4, 4 evaluations."""
    k1 = v(x, t)
    k2 = v(x + (0.5 * h) * k1, t + 0.5 * h)
    k3 = v(x + (0.5 * h) * k2, t + 0.5 * h)
    k4 = v(x + h * k3, t + h)
    return x + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)


FIXED_METHODS = {"euler": euler_step, "midpoint": midpoint_step, "heun": heun_step, "rk4": rk4_step}
ADAPTIVE_METHODS = ("RK45", "DOP853")
NFE_PER_STEP = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}


class _Counted:
    """Wraps a velocity field and counts its evaluations (NFE)."""

    def __init__(self, v):
        self.v = v
        self.nfe = 0

    def __call__(self, x, t):
        self.nfe += 1
        return self.v(x, t)


def _check_grid(t_grid):
    t_grid = np.asarray(t_grid, dtype=np.float64)
    if t_grid.ndim != 1 or t_grid.size < 2:
        raise ValueError(f"t_grid must be 1-D with at least 2 times, got shape {t_grid.shape}")
    if not np.all(np.isfinite(t_grid)):
        raise ValueError("t_grid must be finite")
    h = np.diff(t_grid)
    if not (np.all(h > 0) or np.all(h < 0)):
        raise ValueError("t_grid must be strictly increasing or strictly decreasing")
    return t_grid


def odeint(v, x0, t_grid, method="euler", return_nfe=False, rtol=1e-5, atol=1e-5,
           only_last=False):
    """Solve dx/dt = v(x, t) from x(t_grid[0]) = x0; return x at every grid time.

    `v(x, t)` receives t as a Python float. Fixed-step methods step once per grid
    interval (forward or backward in time); adaptive methods ("RK45", "DOP853") choose
    their own steps to meet rtol/atol and report the state at the grid times.
    Returns xs of shape (len(t_grid), *x0.shape), and the NFE too if return_nfe; with
    only_last=True, the state at the last grid time alone (shape x0.shape), and the fixed
    steps keep no trajectory (memory of one state, not len(t_grid)).
    """
    t_grid = _check_grid(t_grid)
    x0 = np.asarray(x0)
    if not np.all(np.isfinite(x0)):
        raise ValueError("x0 holds NaN or infinite values")
    if not (rtol > 0 and atol > 0):
        raise ValueError(f"rtol and atol must be positive, got {rtol} and {atol}")
    v = _Counted(v)
    if method in FIXED_METHODS:
        step = FIXED_METHODS[method]
        xs = None if only_last else np.empty((len(t_grid),) + x0.shape, dtype=x0.dtype)
        if xs is not None:
            xs[0] = x0  # (N, B, ...)
        x = x0
        for n in range(len(t_grid) - 1):
            t, h = float(t_grid[n]), float(t_grid[n + 1] - t_grid[n])
            x = step(v, x, t, h)
            if xs is not None:
                xs[n + 1] = x
        xs = x if only_last else xs
    elif method in ADAPTIVE_METHODS:

        def fun(t, x_flat):  # solve_ivp works on a flat float64 vector
            return np.asarray(v(x_flat.reshape(x0.shape).astype(x0.dtype), float(t))).ravel()

        sol = solve_ivp(
            fun, (t_grid[0], t_grid[-1]), x0.astype(np.float64).ravel(),
            method=method, t_eval=t_grid, rtol=rtol, atol=atol,
        )
        if not sol.success:
            raise RuntimeError(f"{method} failed: {sol.message}")
        xs = sol.y.T.reshape((len(t_grid),) + x0.shape).astype(x0.dtype)  # (N, B, ...)
        xs = xs[-1] if only_last else xs
    else:
        known = ", ".join(list(FIXED_METHODS) + list(ADAPTIVE_METHODS))
        raise ValueError(f"unknown solver method {method!r}; choose one of {known}")
    return (xs, v.nfe) if return_nfe else xs


def check_guidance_interval(interval):
    """(t_lo, t_hi) as floats with 0 <= t_lo <= t_hi <= 1, or None; anything else is refused.
    A string "LO,HI" (the command lines' --guidance-interval) is read as the two numbers."""
    if interval is None:
        return None
    if isinstance(interval, str):
        interval = interval.split(",")
    try:
        lo, hi = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise ValueError(f"a guidance interval is two times t_lo, t_hi, got {interval!r}") from None
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"a guidance interval needs 0 <= t_lo <= t_hi <= 1, got {lo:g}, {hi:g}")
    return lo, hi


class ClassifierFreeGuidance:
    """v(x, t) = v_uncond + w (v_cond - v_uncond) of a conditional model(x, t, y).

    `model(x, t, None)` is the unconditional (null-class) field. w = 1 is the conditional
    model and w = 0 the unconditional one; both are evaluated once, not twice.
    interval (t_lo, t_hi): guide only for t_lo <= t <= t_hi and take the conditional field
    (w = 1, one evaluation) elsewhere: guidance near the noise (t -> 0) narrows the
    samples, near the data it adds little (Kynkaenniemi et al. 2024; docs/math.md).
    """

    def __init__(self, model, y, guidance=1.0, interval=None):
        self.model = model
        self.y = y
        self.guidance = float(guidance)
        if not math.isfinite(self.guidance):
            raise ValueError(f"guidance must be a finite number, got {guidance}")
        self.interval = check_guidance_interval(interval)

    def __call__(self, x, t):
        w = self.guidance
        if self.interval is not None and not self.interval[0] <= float(t) <= self.interval[1]:
            w = 1.0  # outside the interval: the conditional field
        if w == 1.0:
            return self.model(x, t, self.y)
        v_uncond = self.model(x, t, None)
        if w == 0.0:
            return v_uncond
        v_cond = self.model(x, t, self.y)
        return v_uncond + w * (v_cond - v_uncond)
