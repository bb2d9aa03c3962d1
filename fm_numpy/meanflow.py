"""MeanFlow (Geng et al. 2025, arXiv 2505.13447) in our convention: t = 0 noise, t = 1 data.

The network learns the average velocity of the flow through z at time r over [r, t],

    u(z_r, r, t) = 1/(t - r) integral_r^t v(z_s, s) ds,   so   z_t = z_r + (t - r) u(z_r, r, t),

and differentiating (t - r) u = integral_r^t v ds in r along the flow (dz_r/dr = v) gives
the MeanFlow identity in this convention (docs/math.md, "Few-step generation"):

    u(z_r, r, t) = v(z_r, r) + (t - r) d/dr u,   d/dr u = v . d_z u + d_r u,

a JVP with tangent (v, 1, 0) in (z, r, t). One training step, with (x0, x1) a pair,
z_r = alpha_r x1 + sigma_r x0 and v = d_alpha_r x1 + d_sigma_r x0 (the conditional velocity):

    (u, du) = JVP of u_theta at (z_r, r, t) along (v, 1, 0)
    u_tgt = sg(v + (t - r) du),   delta = u - u_tgt,   m_b = mean_d delta_bd^2
    L = mean_b w_b m_b,   w_b = sg(1 / (m_b + norm_eps)^norm_p)   (adaptive weight)
    dL/du = w_b 2 delta / (B D)   (the target is a constant: backward through u only)

With r = t the target is v and L (at norm_p = 0) is the flow-matching loss.
"""

import numpy as np

from fm_numpy.draws import RngDraws

__all__ = ["MEANFLOW_DEFAULTS", "sample_r_t", "draw_r_t", "meanflow_loss", "sample"]

# fraction of pairs with r != t, logit-normal (mean, std) of both times, adaptive weight
MEANFLOW_DEFAULTS = {"ratio": 0.25, "mu": 0.4, "sigma": 1.0, "norm_p": 1.0, "norm_eps": 1e-3}


def _sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def sample_r_t(rng, B, ratio=0.25, mu=0.4, sigma=1.0, dtype=np.float32):
    """(r, t) of draw_r_t from a numpy Generator rng (or a seed)."""
    return draw_r_t(RngDraws(rng), B, ratio, mu, sigma, dtype)


def draw_r_t(draws, B, ratio=0.25, mu=0.4, sigma=1.0, dtype=np.float32):
    """(r, t) (B,) each: two logit-normal(mu, sigma) times sorted (r <= t); then t = r except
    for a fraction `ratio` of the samples. draws: a fm_numpy.draws.Draws.

    The paper draws logit-normal(-0.4, 1) in its time (t' = 1 - t) and sets r' = t'
    (keeping its noisier end) for 75% of samples; logit(1 - t) = -logit(t), so in ours the
    draws are logit-normal(+0.4, 1) and the kept end is the noisier one, r.
    Draw order: standard normals "mf_z" (2, B), then uniforms "mf_keep" (B,), both float64.
    """
    z = draws.normal("mf_z", (2, B), np.float64)  # (2, B)
    s = _sigmoid(mu + sigma * z)  # (2, B) in (0, 1)
    r, t = np.minimum(s[0], s[1]), np.maximum(s[0], s[1])  # (B,) each
    keep = draws.uniform("mf_keep", (B,), np.float64) < ratio  # (B,) pairs with r != t
    t = np.where(keep, t, r)
    return r.astype(dtype), t.astype(dtype)


def meanflow_loss(model, path, x0, x1, y, r, t, norm_p=1.0, norm_eps=1e-3):
    """(mse, dL/du) of the MeanFlow objective (module docstring) for the numpy MLP.

    mse = mean(delta^2) (unweighted, what loss.csv logs); dL/du (B, D) is the gradient of the
    weighted L, ready for model.backward (the cache holds the pass at (z_r, r, t)).
    """
    z, v = path.sample(x0, x1, r)  # (B, D) z_r and the conditional velocity at r
    u, du = model.jvp(z, t, v, y, r=r, dr=1.0, dt=0.0)  # (B, D) each; du = d/dr u
    u_tgt = v + (t - r)[:, None] * du  # (B, D), a constant for the gradient
    delta = u - u_tgt  # (B, D)
    m = np.mean(delta * delta, axis=1)  # (B,)
    w = 1.0 / (m + norm_eps) ** norm_p  # (B,) stop-gradient weight
    B, D = delta.shape
    grad = delta * (w * (2.0 / (B * D)))[:, None]  # (B, D) dL/du
    return float(np.mean(m)), grad.astype(delta.dtype, copy=False)


def sample(model, x0, steps=1, y=None, guidance=1.0):
    """K = steps average-velocity steps from x0 (t = 0): x_{k+1} = x_k + h_k u(x_k, t_k, t_{k+1})
    on the uniform grid t_k = k / K. K = 1: x1 = x0 + u(x0, 0, 1). Returns (K+1, B, D).

    With labels, u is classifier-free guided like v: u_null + w (u_y - u_null). That is
    exact only at r = t (u = v); for r < t the average velocity of the guided field is an
    integral along its own trajectories, not this combination, so it is a heuristic
    (docs/math.md section 14.3; the MeanFlow paper puts guidance into the training target).
    """
    K = int(steps)
    if K < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    t_grid = np.linspace(0.0, 1.0, K + 1)
    xs = [np.asarray(x0)]
    x = xs[0]
    for k in range(K):
        r, t = t_grid[k], t_grid[k + 1]
        u = model(x, t, y, r=r)  # (B, D)
        if y is not None and guidance != 1.0:
            u_null = model(x, t, None, r=r)
            u = u_null + guidance * (u - u_null)
        x = x + (t - r) * u  # (B, D)
        xs.append(x)
    return np.stack(xs)
