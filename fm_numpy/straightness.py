"""Straightness of sampled trajectories and the NFE they cost (Liu et al., rectified flow).

For the ODE dx/dt = v(x, t) solved from x(0) = x0 (noise) to x(1) = x1 (its sample),
Liu, Gong & Liu (2022, arXiv 2209.03003, eq. "S(Z)") define the straightness

    S = E_x0 [ integral_0^1 | (x1 - x0) - v(x_t, t) |^2 dt ],

with |.|^2 the squared Euclidean norm summed over every coordinate of one sample.
S = 0 exactly when every trajectory is a straight line walked at constant speed, which
is when one Euler step is exact. Here E is the mean over the batch and t runs over the
solver's grid t_grid (from t_grid[0] to t_grid[-1]; the integral is divided by the
length of that interval, so S is the time-average and t_grid need not span [0, 1]).

Two estimates:
- `straightness(v, x0, t_grid, method)` solves the ODE with fm_numpy.solvers.odeint,
  then evaluates v once more at every grid point and integrates |(x1 - x0) - v|^2 over
  t by the trapezoid rule. It reports the solver's NFE separately from the extra
  len(t_grid) evaluations the measurement costs.
- `straightness_of_path(xs, t_grid)` needs no model: it treats the solver's output as
  the piecewise-linear path through xs and integrates exactly along it, replacing
  v by the chord velocity (x_{n+1} - x_n) / h_n. For Euler this equals the left
  Riemann sum of S; for any solver it tends to S as the grid is refined.
"""

import numpy as np

from fm_numpy.solvers import odeint

__all__ = ["straightness", "straightness_of_path"]


def _check_path(xs, t_grid):
    xs = np.asarray(xs, dtype=np.float64)
    t_grid = np.asarray(t_grid, dtype=np.float64)
    if t_grid.ndim != 1 or t_grid.size < 2:
        raise ValueError(f"t_grid must be 1-D with at least 2 times, got shape {t_grid.shape}")
    if xs.ndim < 2 or xs.shape[0] != t_grid.size:
        raise ValueError(
            f"xs must have shape (len(t_grid), B, ...) = ({t_grid.size}, B, ...), got {xs.shape}"
        )
    if not np.all(np.isfinite(xs)):
        raise ValueError("the trajectory holds non-finite values")
    return xs, t_grid


def straightness_of_path(xs, t_grid):
    """S of the piecewise-linear path through xs (N, B, ...) at times t_grid (N,).

    S = (1/B) sum_b (1/T) sum_n h_n |(x_N - x_0)/T - (x_{n+1} - x_n)/h_n|^2,
    T = t_N - t_0: the time-averaged squared gap between the end-to-end displacement
    rate and each segment's velocity. Returns a float >= 0.
    """
    xs, t_grid = _check_path(xs, t_grid)
    h = np.diff(t_grid)  # (N-1,)
    T = t_grid[-1] - t_grid[0]
    flat = xs.reshape(xs.shape[0], xs.shape[1], -1)  # (N, B, D)
    chord = (flat[-1] - flat[0]) / T  # (B, D)
    seg_v = np.diff(flat, axis=0) / h[:, None, None]  # (N-1, B, D)
    gap = np.sum((chord[None] - seg_v) ** 2, axis=2)  # (N-1, B)
    return float(np.mean(np.sum(h[:, None] * gap, axis=0) / T))


def straightness(v, x0, t_grid, method="euler", rtol=1e-5, atol=1e-5):
    """Liu et al.'s S along the trajectories the solver draws from x0; see the module doc.

    S = (1/B) sum_b (1/T) integral |(x_N - x_0)/T - v(x_t, t)|^2 dt by the trapezoid
    rule over t_grid, with x_t the solver's states and x_N its final sample.
    Returns a dict: "straightness" (S), "nfe" (velocity evaluations of the sampler),
    "nfe_measure" (the extra evaluations of v at the grid points, len(t_grid)),
    and "per_sample" (B,) array of each trajectory's S.
    """
    xs, nfe = odeint(v, x0, t_grid, method=method, return_nfe=True, rtol=rtol, atol=atol)
    xs, t_grid = _check_path(xs, t_grid)
    T = t_grid[-1] - t_grid[0]
    flat = xs.reshape(xs.shape[0], xs.shape[1], -1)  # (N, B, D)
    chord = (flat[-1] - flat[0]) / T  # (B, D)
    gaps = np.empty(flat.shape[:2])  # (N, B)
    for n, t in enumerate(t_grid):
        vn = np.asarray(v(xs[n], float(t)), dtype=np.float64).reshape(flat.shape[1], -1)  # (B, D)
        gaps[n] = np.sum((chord - vn) ** 2, axis=1)
    h = np.diff(t_grid)  # (N-1,)
    per_sample = np.sum(0.5 * h[:, None] * (gaps[:-1] + gaps[1:]), axis=0) / T  # (B,)
    return {
        "straightness": float(np.mean(per_sample)),
        "nfe": int(nfe),
        "nfe_measure": int(t_grid.size),
        "per_sample": per_sample,
    }
