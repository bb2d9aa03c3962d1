"""Exact log-likelihoods of a flow by the instantaneous change of variables.

The torch twin of fm_numpy/likelihood.py (see it for the equations and the sign):

    log p_1(x_1) = log N(x_0; 0, I) + delta(0),   d delta/dt = div v(x_t, t),  delta(1) = 0,

integrated from t = 1 to t = 0 with fm_torch.solvers.odeint (fixed methods or dopri5).
Divergences come from autograd instead of forward mode:
- "exact": the field's `divergence(x, t[, y])` when it has one, else the trace of the
  Jacobian by one vector-Jacobian product per input coordinate, e_i^T J e_i, batched
  through `is_grads_batched` (vmap) with a plain loop as fall-back. Works for any input
  shape (B, ...), images (B, 1, 28, 28) included: the coordinates are those of x
  flattened, the model sees x in its own shape.
- "hutchinson": eps^T J eps from the vector-Jacobian product eps^T J (one backward pass
  per probe). The probes are numpy's (fm_numpy.likelihood.draw_probes with the same
  seed), so both packages estimate with the same probes.
Bits per dimension as in fm_numpy/likelihood.py; `dequantize` draws its noise with
numpy's generator so both packages dequantise identically.
"""

import math

import numpy as np
import torch

from fm_numpy.likelihood import DIVERGENCES, PROBES, quantize_images
from fm_numpy.likelihood import draw_probes as _draw_probes_numpy

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

_VJP_BUDGET = 2**22  # numbers in one batch of is_grads_batched cotangents


def _call(v, x, t, y):
    return v(x, t) if y is None else v(x, t, y)


def standard_normal_log_prob(x0):
    """log N(x0; 0, I) = -|x0|^2 / 2 - (D / 2) log(2 pi), summed over all but the batch axis."""
    D = math.prod(x0.shape[1:])
    return -0.5 * torch.sum(x0.reshape(x0.shape[0], -1) ** 2, dim=1) - 0.5 * D * math.log(
        2 * math.pi
    )


def draw_probes(shape, probe="rademacher", n_probes=1, seed=0, dtype=torch.float64, device=None):
    """fm_numpy.likelihood.draw_probes as a tensor: (n_probes, B, ...), E[eps eps^T] = I."""
    probes = _draw_probes_numpy(tuple(shape), probe, n_probes, seed)
    return torch.as_tensor(probes, dtype=dtype, device=device)


def exact_divergence(v, x, t, y=None):
    """(v(x, t), div v(x, t)) with div the trace of dv/dx over all non-batch axes; (B,).

    Uses v.divergence when the field has one; otherwise autograd:
    div = sum_i (e_i^T J)_i, the cotangents e_i batched (is_grads_batched) in chunks.
    """
    if hasattr(v, "divergence"):
        return v.divergence(x, t) if y is None else v.divergence(x, t, y)
    B = x.shape[0]
    D = math.prod(x.shape[1:])
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        vx = _call(v, x, t, y)
        vf = vx.reshape(B, D)  # (B, D)
        div = torch.zeros(B, dtype=vx.dtype, device=vx.device)
        chunk = max(1, min(D, _VJP_BUDGET // max(1, B * D)))
        try:
            for i0 in range(0, D, chunk):
                i1 = min(D, i0 + chunk)
                idx = torch.arange(i0, i1, device=vx.device)
                e = torch.zeros(i1 - i0, B, D, dtype=vx.dtype, device=vx.device)  # (C, B, D)
                e[torch.arange(i1 - i0), :, idx] = 1
                (vjp,) = torch.autograd.grad(vf, x, e, retain_graph=True, is_grads_batched=True)
                vjp = vjp.reshape(i1 - i0, B, D)  # (C, B, D): rows e_i^T J
                div += vjp[torch.arange(i1 - i0), :, idx].sum(dim=0)
        except RuntimeError:  # an op without a batching rule: one backward pass per coordinate
            div = torch.zeros(B, dtype=vx.dtype, device=vx.device)
            for i in range(D):
                (row,) = torch.autograd.grad(vf[:, i].sum(), x, retain_graph=True)
                div += row.reshape(B, D)[:, i]
    return vx.detach(), div.detach()


def hutchinson_divergence(v, x, t, probes, y=None):
    """(v(x, t), per-probe estimates eps_j^T J eps_j of div v) for probes (P, B, ...); (P, B).

    eps^T J is one vector-Jacobian product per probe through a single forward pass.
    """
    P, B = probes.shape[0], x.shape[0]
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        vx = _call(v, x, t, y)
        est = []
        for j in range(P):
            (eps_J,) = torch.autograd.grad(vx, x, probes[j], retain_graph=j < P - 1)
            est.append(torch.sum((eps_J * probes[j]).reshape(B, -1), dim=1))  # (B,)
    return vx.detach(), torch.stack(est)


def _check_grid(steps, t_grid):
    if t_grid is None:
        if int(steps) < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        return torch.linspace(1.0, 0.0, int(steps) + 1, dtype=torch.float64)
    t_grid = torch.as_tensor(t_grid, dtype=torch.float64)
    if t_grid.ndim != 1 or t_grid.numel() < 2 or t_grid[0] != 1.0 or t_grid[-1] != 0.0:
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
    """log p_1(x1) = log N(x0; 0, I) + int_1^0 div v(x_t, t) dt, per sample; (B,).

    The arguments of fm_numpy.likelihood.log_likelihood; method is a fixed method or
    "dopri5". The state is kept in x1's dtype and device (use float64 for accurate
    likelihoods). Runs without a graph through the solver (no gradients w.r.t. parameters).
    """
    if divergence not in DIVERGENCES:
        raise ValueError(
            f"unknown divergence {divergence!r}; choose one of {', '.join(DIVERGENCES)}"
        )
    t_grid = _check_grid(steps, t_grid)
    x1 = torch.as_tensor(x1)
    if not x1.is_floating_point():
        x1 = x1.to(torch.float64)
    if x1.ndim < 2:
        raise ValueError(f"x1 must have shape (B, ...) with a batch axis, got {tuple(x1.shape)}")
    B = x1.shape[0]
    D = math.prod(x1.shape[1:])
    probes = None
    if divergence == "hutchinson":
        probes = draw_probes(x1.shape, probe, n_probes, seed, x1.dtype, x1.device)  # (P, B, ...)

    def augmented(state, t):  # d/dt (x, delta) = (v, div v)
        x = state[:, :D].reshape(x1.shape)
        if probes is None:
            vx, div = exact_divergence(v, x, t, y)
        else:
            vx, est = hutchinson_divergence(v, x, t, probes, y)
            div = est.mean(dim=0)
        return torch.cat([vx.reshape(B, D).to(state.dtype), div[:, None].to(state.dtype)], dim=1)

    state1 = torch.cat(
        [x1.reshape(B, D), torch.zeros(B, 1, dtype=x1.dtype, device=x1.device)], dim=1
    )
    states = odeint(augmented, state1, t_grid, method=method, rtol=rtol, atol=atol)  # (N, B, D + 1)
    x0 = states[-1][:, :D].reshape(x1.shape)
    delta0 = states[-1][:, D]  # int_1^0 div v dt
    log_p1 = standard_normal_log_prob(x0) + delta0  # (B,)
    return (log_p1, x0) if return_x0 else log_p1


def dequantize(images, rng=None, dtype=torch.float64):
    """z = (k + u) / 256, u ~ U[0, 1) drawn by numpy's default_rng(rng), as a tensor."""
    images = images.detach().cpu().numpy() if torch.is_tensor(images) else np.asarray(images)
    k = quantize_images(images)
    rng = np.random.default_rng(rng)
    return torch.as_tensor((k + rng.uniform(0.0, 1.0, size=k.shape)) / 256.0, dtype=dtype)


def to_model_space(z):
    """x = 2 z - 1: [0, 1) -> [-1, 1); log |det dx/dz| = D log 2."""
    return 2.0 * z - 1.0


def bits_per_dim(log_p_x, D):
    """bpd = -(log p_x(x) + D log 2) / (D log 2) + 8 for x = 2 z - 1, z dequantised k / 256."""
    log_p_z = log_p_x + D * math.log(2.0)
    return -log_p_z / (D * math.log(2.0)) + 8.0


def mnist_log_likelihood(
    v, images, rng=None, flatten=True, dtype=torch.float64, device=None, **options
):
    """(log p_x(x), bpd) per image for 8-bit images (B, 28, 28) in [0, 1].

    Dequantises, maps to [-1, 1), reshapes to (B, 784) if flatten (else (B, 1, 28, 28) for
    image models), then log_likelihood(v, ..., **options).
    """
    z = dequantize(images, rng, dtype).to(device)
    x1 = to_model_space(z)
    x1 = x1.reshape(x1.shape[0], -1) if flatten else x1.reshape(x1.shape[0], 1, *x1.shape[-2:])
    D = math.prod(x1.shape[1:])
    log_p_x = log_likelihood(v, x1, **options)
    return log_p_x, bits_per_dim(log_p_x, D)
