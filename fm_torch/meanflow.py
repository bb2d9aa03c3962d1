"""MeanFlow in PyTorch, the twin of fm_numpy/meanflow.py (our convention: t = 0 noise).

    u(z_r, r, t) = v(z_r, r) + (t - r) d/dr u,   d/dr u = v . d_z u + d_r u

The total derivative is torch.func.jvp of (z, r, t) -> u_theta(z, r, t) along (v, 1, 0);
the target is detached and the loss backpropagates through u only (docs/math.md,
"Few-step generation"; the arithmetic order is fm_numpy.meanflow's).
"""

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from fm_numpy.meanflow import MEANFLOW_DEFAULTS

__all__ = ["MEANFLOW_DEFAULTS", "sample_r_t", "meanflow_loss", "sample"]


def sample_r_t(generator, B, ratio=0.25, mu=0.4, sigma=1.0, dtype=torch.float32):
    """(r, t) (B,): sorted logit-normal(mu, sigma) pair, t = r except for a fraction `ratio`."""
    s = torch.sigmoid(mu + sigma * torch.randn((2, B), generator=generator, dtype=torch.float64))
    r, t = torch.minimum(s[0], s[1]), torch.maximum(s[0], s[1])  # (B,) each
    keep = torch.rand(B, generator=generator, dtype=torch.float64) < ratio  # (B,)
    t = torch.where(keep, t, r)
    return r.to(dtype), t.to(dtype)


def meanflow_loss(model, path, x1, y, x0, r, t, norm_p=1.0, norm_eps=1e-3):
    """(L, mse): the weighted MeanFlow loss to backpropagate and mean(delta^2) (detached).

    model(x, t, y, r=r) is the average velocity u(x, r, t) (mean-flow MLP or U-Net).
    """
    z, v = path.sample(x0, x1, r)  # (B, ...) z_r and the conditional velocity at r

    def u_fn(z, r, t):
        return model(z, t, y, r=r)

    # fused attention kernels have no forward-mode derivative: the U-Net's attention takes
    # the plain (math) kernel under the JVP
    with sdpa_kernel(SDPBackend.MATH):
        u, du = torch.func.jvp(u_fn, (z, r, t), (v, torch.ones_like(r), torch.zeros_like(t)))
    shape = (-1,) + (1,) * (z.ndim - 1)
    u_tgt = (v + (t - r).reshape(shape) * du).detach()  # (B, ...)
    delta = u - u_tgt  # (B, ...)
    m = torch.mean((delta * delta).flatten(1), dim=1)  # (B,)
    w = 1.0 / (m.detach() + norm_eps) ** norm_p  # (B,) stop-gradient weight
    return torch.mean(w * m), torch.mean(m).detach()


@torch.no_grad()
def sample(model, x0, steps=1, y=None, guidance=1.0):
    """K average-velocity steps x_{k+1} = x_k + h_k u(x_k, t_k, t_{k+1}); (K+1, *x0.shape).

    With labels, u_null + w (u_y - u_null): exact only at r = t, a heuristic for r < t
    (fm_numpy.meanflow.sample)."""
    K = int(steps)
    if K < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    t_grid = torch.linspace(0, 1, K + 1, dtype=torch.float64)
    xs = [x0]
    x = x0
    for k in range(K):
        r, t = float(t_grid[k]), float(t_grid[k + 1])
        u = model(x, t, y, r=r)  # (B, ...)
        if y is not None and guidance != 1.0:
            u_null = model(x, t, None, r=r)
            u = u_null + guidance * (u - u_null)
        x = x + (t - r) * u
        xs.append(x)
    return torch.stack(xs)
