"""Closed-form marginal velocity fields ("oracles") for a standard normal source.

For an affine path x_t = alpha_t x1 + sigma_t x0 with x0 ~ N(0, I), the minimiser of the
flow-matching loss is the marginal velocity u_t(x) = E[ut | xt = x], where
ut = d_alpha_t x1 + d_sigma_t x0. Two targets have it in closed form:

- a Gaussian mixture sum_k pi_k N(m_k, S_k) (`GaussianMixtureField`), and
- a finite data set {y_i}, i.e. the empirical distribution (`EmpiricalField`); this is
  what a network trained on finite data would converge to if it could, and it only
  reproduces the training points (docs/oracles.md).

Both are velocity fields v(x, t) for fm_numpy.solvers.odeint (t a Python float or (B,)),
with `divergence(x, t) -> (v, div)` for fm_numpy.likelihood and `log_prob(x, t)`, the
exact log-density of the marginal p_t. Everything is computed in float64 and returned
in x's floating dtype. fm_torch/analytic.py is the same code in torch.

Gaussian mixture (derivation, per component k):
  x_t | k ~ N(alpha_t m_k, C_k),     C_k = alpha_t^2 S_k + sigma_t^2 I,
  Cov(ut, xt | k) = G_k,              G_k = d_alpha_t alpha_t S_k + d_sigma_t sigma_t I,
  E[ut | xt = x, k] = d_alpha_t m_k + G_k C_k^{-1} (x - alpha_t m_k)      (linear-Gaussian),
  P(k | xt = x) = softmax_k(log pi_k + log N(x; alpha_t m_k, C_k)).
With S_k = Q_k diag(lam_k) Q_k^T, C_k and G_k share the eigenvectors Q_k, so with
z_k = Q_k^T (x - alpha_t m_k) everything is elementwise:
  c_k = alpha_t^2 lam_k + sigma_t^2,  g_k = d_alpha_t alpha_t lam_k + d_sigma_t sigma_t.
"""

import math

import numpy as np

from .paths import CondOT, check_t

__all__ = ["GaussianMixtureField", "EmpiricalField", "eight_gaussians_mixture", "logsumexp"]


def logsumexp(a, axis=-1):
    """log sum_i exp(a_i) along `axis`, shifted by the maximum so it never overflows."""
    a_max = np.max(a, axis=axis, keepdims=True)
    a_max = np.where(np.isfinite(a_max), a_max, 0.0)
    out = np.log(np.sum(np.exp(a - a_max), axis=axis, keepdims=True)) + a_max
    return np.squeeze(out, axis=axis)


def _batch_coefficients(scheduler, t, B):
    """(alpha_t, sigma_t, d_alpha_t, d_sigma_t), each of shape (B,) in float64."""
    t = np.asarray(t, dtype=np.float64)
    check_t(t)
    if t.ndim not in (0, 1) or (t.ndim == 1 and t.shape[0] not in (1, B)):
        raise ValueError(f"t must be a scalar or have shape ({B},), got {t.shape}")
    t = np.broadcast_to(t, (B,))
    return tuple(np.broadcast_to(np.asarray(c, dtype=np.float64), (B,)) for c in scheduler(t))


def _flatten(x, D):
    """x of shape (B, ...) with prod(...) = D as float64 (B, D)."""
    x = np.asarray(x)
    if x.ndim < 1 or int(np.prod(x.shape[1:])) != D:
        raise ValueError(f"x must have shape (B, ...) with {D} values per sample, got {x.shape}")
    return x.reshape(x.shape[0], D).astype(np.float64)


def _out_dtype(x):
    x = np.asarray(x)
    return x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64


class GaussianMixtureField:
    """Marginal velocity of the path from N(0, I) to sum_k pi_k N(m_k, S_k).

    means (K, D); covariances (K, D, D) (symmetric positive semi-definite), or (K, D) for
    diagonal ones; weights (K,) positive (normalised here), default uniform.

      u_t(x) = sum_k w_k(x) mu_k(x),  mu_k(x) = d_alpha_t m_k + G_k C_k^{-1} (x - alpha_t m_k),
      w_k(x) = P(k | xt = x)  (see the module docstring).

    Defined wherever the scheduler's coefficients are finite and every C_k is invertible:
    for all t in [0, 1) when sigma_t > 0 there, and at t = 1 too if every S_k is positive
    definite and the product d_sigma_1 sigma_1, formed from its factors, is finite (CondOT,
    SigmaMinOT, Cosine, Polynomial; not LinearVP or VP: their product has a finite limit,
    but d_sigma_1 = -inf times sigma_1 = 0 is NaN in floating point). At t = 0 it needs a finite
    d_alpha_0 (Polynomial(n) with n < 1 has none). p_0 = N(0, I) exactly only when
    alpha_0 = 0 and sigma_0 = 1 (not for VP, whose alpha_0 is small but positive).
    """

    def __init__(self, means, covariances, weights=None, scheduler=None):
        means = np.asarray(means, dtype=np.float64)
        covariances = np.asarray(covariances, dtype=np.float64)
        if means.ndim != 2:
            raise ValueError(f"means must have shape (K, D), got {means.shape}")
        K, D = means.shape
        if covariances.shape == (K, D):
            if np.any(covariances < 0) or not np.all(np.isfinite(covariances)):
                raise ValueError("diagonal covariances must be finite and non-negative")
            self.eigvals = covariances.copy()  # (K, D)
            self.eigvecs = None
        elif covariances.shape == (K, D, D):
            if not np.allclose(covariances, np.swapaxes(covariances, 1, 2), atol=1e-12):
                raise ValueError("covariances must be symmetric")
            lam, Q = np.linalg.eigh(covariances)  # (K, D), (K, D, D)
            if np.any(lam < -1e-10 * np.maximum(1.0, np.abs(lam).max())):
                raise ValueError("covariances must be positive semi-definite")
            self.eigvals = np.maximum(lam, 0.0)
            self.eigvecs = Q
        else:
            raise ValueError(
                f"covariances must have shape ({K}, {D}, {D}) or ({K}, {D}), "
                f"got {covariances.shape}"
            )
        if weights is None:
            weights = np.full(K, 1.0 / K)
        weights = np.asarray(weights, dtype=np.float64)
        if weights.shape != (K,) or np.any(weights <= 0) or not np.all(np.isfinite(weights)):
            raise ValueError(f"weights must be {K} positive numbers")
        self.means = means
        self.covariances = covariances
        self.weights = weights / weights.sum()
        self.log_weights = np.log(self.weights)
        self.scheduler = CondOT() if scheduler is None else scheduler
        self.K, self.D = K, D

    def __repr__(self):
        return f"GaussianMixtureField(K={self.K}, D={self.D}, scheduler={self.scheduler!r})"

    def full_covariances(self):
        """S_k as (K, D, D) matrices."""
        if self.eigvecs is None:
            return np.stack([np.diag(lam) for lam in self.eigvals])
        return self.covariances

    def _rotate_in(self, r):
        """z_k = Q_k^T r_k for r of shape (B, K, D)."""
        if self.eigvecs is None:
            return r
        return np.matmul(r.transpose(1, 0, 2), self.eigvecs).transpose(1, 0, 2)  # (B, K, D)

    def _rotate_out(self, z):
        """Q_k z_k for z of shape (B, K, D)."""
        if self.eigvecs is None:
            return z
        Q_T = np.swapaxes(self.eigvecs, 1, 2)  # (K, D, D)
        return np.matmul(z.transpose(1, 0, 2), Q_T).transpose(1, 0, 2)  # (B, K, D)

    def _components(self, x, t):
        """Per-component log-densities, posteriors w_k, conditional means mu_k and scores s_k."""
        alpha_t, sigma_t, d_alpha_t, d_sigma_t = _batch_coefficients(self.scheduler, t, x.shape[0])
        a = alpha_t[:, None, None]  # (B, 1, 1)
        r = x[:, None, :] - a * self.means[None]  # (B, K, D)
        z = self._rotate_in(r)  # (B, K, D)
        lam = self.eigvals[None]  # (1, K, D)
        c = a**2 * lam + sigma_t[:, None, None] ** 2  # (B, K, D), eigenvalues of C_k
        g = d_alpha_t[:, None, None] * a * lam + (d_sigma_t * sigma_t)[:, None, None]  # (B, K, D)
        log_comp = (
            self.log_weights[None]
            - 0.5 * np.sum(z**2 / c, axis=2)
            - 0.5 * np.sum(np.log(2 * math.pi * c), axis=2)
        )  # (B, K): log pi_k + log N(x; alpha_t m_k, C_k)
        log_p = logsumexp(log_comp, axis=1)  # (B,)
        w = np.exp(log_comp - log_p[:, None])  # (B, K)
        mu = d_alpha_t[:, None, None] * self.means[None] + self._rotate_out(g / c * z)  # (B, K, D)
        s = -self._rotate_out(z / c)  # (B, K, D), grad_x log N(x; alpha_t m_k, C_k)
        trace = np.sum(g / c, axis=2)  # (B, K), tr(G_k C_k^{-1})
        return log_p, w, mu, s, trace

    def __call__(self, x, t):
        """u_t(x) = sum_k w_k(x) mu_k(x); x of shape (B, ...) with D values per sample."""
        xf = _flatten(x, self.D)
        _, w, mu, _, _ = self._components(xf, t)
        v = np.einsum("bk,bkd->bd", w, mu)  # (B, D)
        return v.reshape(np.shape(x)).astype(_out_dtype(x))

    def divergence(self, x, t):
        """(u_t(x), div u_t(x)), div = sum_k w_k [tr(G_k C_k^-1) + s_k . mu_k] - s . u.

        From grad w_k = w_k (s_k - s), s = sum_k w_k s_k the marginal score, and
        div mu_k = tr(G_k C_k^{-1}).
        """
        xf = _flatten(x, self.D)
        _, w, mu, s, trace = self._components(xf, t)
        v = np.einsum("bk,bkd->bd", w, mu)  # (B, D)
        score = np.einsum("bk,bkd->bd", w, s)  # (B, D)
        div = (
            np.sum(w * trace, axis=1)
            + np.einsum("bk,bkd,bkd->b", w, s, mu)
            - np.sum(score * v, axis=1)
        )  # (B,)
        dtype = _out_dtype(x)
        return v.reshape(np.shape(x)).astype(dtype), div.astype(dtype)

    def score(self, x, t):
        """grad_x log p_t(x) = sum_k w_k(x) s_k(x)."""
        xf = _flatten(x, self.D)
        _, w, _, s, _ = self._components(xf, t)
        return np.einsum("bk,bkd->bd", w, s).reshape(np.shape(x)).astype(_out_dtype(x))

    def log_prob(self, x, t=1.0):
        """log p_t(x) = log sum_k pi_k N(x; alpha_t m_k, alpha_t^2 S_k + sigma_t^2 I); (B,)."""
        xf = _flatten(x, self.D)
        log_p = self._components(xf, t)[0]
        return log_p.astype(_out_dtype(x))

    def moments(self, t=1.0):
        """Mean (D,) and covariance (D, D) of p_t (t a scalar)."""
        alpha_t, sigma_t = (float(c[0]) for c in _batch_coefficients(self.scheduler, t, 1)[0:2])
        S = self.full_covariances()  # (K, D, D)
        mean = self.weights @ self.means  # (D,)
        dm = self.means - mean  # (K, D)
        cov = np.einsum("k,kij->ij", self.weights, S + dm[:, :, None] * dm[:, None, :])
        return alpha_t * mean, alpha_t**2 * cov + sigma_t**2 * np.eye(self.D)

    def sample(self, n, rng=None):
        """n draws (n, D) from the target mixture (t = 1) and their components (n,)."""
        rng = np.random.default_rng(rng)
        k = rng.choice(self.K, size=int(n), p=self.weights)  # (n,)
        eps = rng.standard_normal((int(n), self.D))  # (n, D)
        root = np.sqrt(self.eigvals)[k] * eps  # (n, D)
        if self.eigvecs is not None:
            root = np.einsum("nij,nj->ni", self.eigvecs[k], root)
        return self.means[k] + root, k


def eight_gaussians_mixture(scheduler=None, radius=2.0, std=0.1):
    """The "8gaussians" toy set of fm_numpy.data as an explicit mixture (same centres, std)."""
    angles = 2 * np.pi * np.arange(8) / 8
    means = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)  # (8, 2)
    return GaussianMixtureField(means, np.full((8, 2), std**2), np.full(8, 1 / 8), scheduler)


class EmpiricalField:
    """Marginal velocity of the path from N(0, I) to the uniform distribution on {y_i}.

    The minimiser of the flow-matching loss on a finite data set (N points, D values each):
      w_i(x) = softmax_i(-|x - alpha_t y_i|^2 / (2 sigma_t^2)),   x1_hat(x) = sum_i w_i y_i,
      u_t(x) = (d_sigma_t / sigma_t) x + ((d_alpha_t sigma_t - d_sigma_t alpha_t) / sigma_t) x1_hat,
    which for CondOT is sum_i w_i (y_i - x) / (1 - t). Defined for sigma_t > 0, i.e. t < 1
    for the schedulers that reach the data exactly (the field blows up like 1 / sigma_t).

    The softmax is accumulated over chunks of `chunk_size` points with a running maximum
    (streaming log-sum-exp), so memory is O(B chunk_size + N D) with the data stored once
    in its own dtype: all 60,000 MNIST images (784-d) fit.
    """

    def __init__(self, data, scheduler=None, chunk_size=4096):
        data = np.asarray(data)
        if data.ndim < 2 or data.shape[0] < 1:
            raise ValueError(f"data must have shape (N, ...) with N >= 1, got {data.shape}")
        if not np.issubdtype(data.dtype, np.floating):
            data = data.astype(np.float64)
        if int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        self.N = data.shape[0]
        self.D = int(np.prod(data.shape[1:]))
        self.data = data.reshape(self.N, self.D)  # (N, D), kept in its own dtype
        self.sq_norms = np.einsum("nd,nd->n", self.data, self.data, dtype=np.float64)  # (N,)
        self.scheduler = CondOT() if scheduler is None else scheduler
        self.chunk_size = int(chunk_size)

    def __repr__(self):
        return f"EmpiricalField(N={self.N}, D={self.D}, scheduler={self.scheduler!r})"

    def _posterior(self, x, t, second_moment=False):
        """Streaming softmax over the data: (log sum_i exp(l_i), x1_hat, sum_i w_i |y_i|^2).

        l_i = -|x - alpha_t y_i|^2 / (2 sigma_t^2), accumulated chunk by chunk.
        """
        B = x.shape[0]
        alpha_t, sigma_t, d_alpha_t, d_sigma_t = _batch_coefficients(self.scheduler, t, B)
        inv_var = 1.0 / sigma_t**2  # (B,)
        x_sq = np.sum(x**2, axis=1)  # (B,)
        run_max = np.full(B, -np.inf)  # (B,)
        run_sum = np.zeros(B)  # (B,)
        run_y = np.zeros((B, self.D))  # (B, D)
        run_y2 = np.zeros(B)  # (B,)
        for start in range(0, self.N, self.chunk_size):
            Y = self.data[start : start + self.chunk_size].astype(np.float64)  # (C, D)
            y_sq = self.sq_norms[start : start + self.chunk_size]  # (C,)
            sq_dist = (
                x_sq[:, None] - 2 * alpha_t[:, None] * (x @ Y.T) + alpha_t[:, None] ** 2 * y_sq
            )
            logits = -0.5 * inv_var[:, None] * sq_dist  # (B, C)
            new_max = np.maximum(run_max, logits.max(axis=1))  # (B,)
            rescale = np.exp(run_max - new_max)  # (B,), 0 on the first chunk
            e = np.exp(logits - new_max[:, None])  # (B, C)
            run_sum = run_sum * rescale + e.sum(axis=1)
            run_y = run_y * rescale[:, None] + e @ Y
            if second_moment:
                run_y2 = run_y2 * rescale + e @ y_sq
            run_max = new_max
        lse = np.log(run_sum) + run_max  # (B,)
        x1_hat = run_y / run_sum[:, None]  # (B, D)
        y2_hat = run_y2 / run_sum  # (B,)
        return lse, x1_hat, y2_hat, (alpha_t, sigma_t, d_alpha_t, d_sigma_t)

    def posterior_mean(self, x, t):
        """E[x1 | xt = x] = sum_i w_i(x) y_i."""
        xf = _flatten(x, self.D)
        x1_hat = self._posterior(xf, t)[1]
        return x1_hat.reshape(np.shape(x)).astype(_out_dtype(x))

    def __call__(self, x, t):
        """u_t(x) = a x + b x1_hat, a = d_sigma_t / sigma_t,
        b = (d_alpha_t sigma_t - d_sigma_t alpha_t) / sigma_t (AffinePath.velocity_from_x1)."""
        xf = _flatten(x, self.D)
        _, x1_hat, _, (alpha_t, sigma_t, d_alpha_t, d_sigma_t) = self._posterior(xf, t)
        a = (d_sigma_t / sigma_t)[:, None]  # (B, 1)
        b = ((d_alpha_t * sigma_t - d_sigma_t * alpha_t) / sigma_t)[:, None]  # (B, 1)
        v = a * xf + b * x1_hat  # (B, D)
        return v.reshape(np.shape(x)).astype(_out_dtype(x))

    def divergence(self, x, t):
        """(u_t(x), div u_t(x)), div = D a + b (alpha_t / sigma_t^2) (E_w|y|^2 - |x1_hat|^2).

        a, b are the coefficients of x and x1_hat in u_t; the Jacobian of x1_hat is
        (alpha_t / sigma_t^2) Cov_w(y), whose trace is the posterior variance.
        """
        xf = _flatten(x, self.D)
        _, x1_hat, y2_hat, (alpha_t, sigma_t, d_alpha_t, d_sigma_t) = self._posterior(
            xf, t, second_moment=True
        )
        a = d_sigma_t / sigma_t  # (B,)
        b = (d_alpha_t * sigma_t - d_sigma_t * alpha_t) / sigma_t  # (B,)
        v = a[:, None] * xf + b[:, None] * x1_hat  # (B, D)
        posterior_var = np.maximum(y2_hat - np.sum(x1_hat**2, axis=1), 0.0)  # (B,)
        div = self.D * a + b * alpha_t / sigma_t**2 * posterior_var  # (B,)
        dtype = _out_dtype(x)
        return v.reshape(np.shape(x)).astype(dtype), div.astype(dtype)

    def log_prob(self, x, t):
        """log p_t(x) = log (1/N) sum_i N(x; alpha_t y_i, sigma_t^2 I), for sigma_t > 0."""
        xf = _flatten(x, self.D)
        lse, _, _, (_, sigma_t, _, _) = self._posterior(xf, t)
        log_p = lse - math.log(self.N) - 0.5 * self.D * np.log(2 * math.pi * sigma_t**2)
        return log_p.astype(_out_dtype(x))
