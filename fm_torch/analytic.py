"""Closed-form marginal velocity fields ("oracles") for a standard normal source.

The torch twin of fm_numpy/analytic.py: the same classes, names and formulas in the same
order (see that module for the derivation). Computation is in float64 on the device of
the parameters given at construction (move with `.to(device)`); results come back in
x's floating dtype.
"""

import math

import torch

from .paths import CondOT, check_t

__all__ = ["GaussianMixtureField", "EmpiricalField", "eight_gaussians_mixture"]


def _batch_coefficients(scheduler, t, B, device):
    """(alpha_t, sigma_t, d_alpha_t, d_sigma_t), each of shape (B,) in float64."""
    t = torch.as_tensor(t, dtype=torch.float64, device=device)
    check_t(t)
    if t.ndim not in (0, 1) or (t.ndim == 1 and t.shape[0] not in (1, B)):
        raise ValueError(f"t must be a scalar or have shape ({B},), got {tuple(t.shape)}")
    t = t.expand(B)
    return tuple(torch.as_tensor(c, dtype=torch.float64).expand(B) for c in scheduler(t))


def _flatten(x, D, device):
    """x of shape (B, ...) with prod(...) = D as float64 (B, D)."""
    x = torch.as_tensor(x)
    if x.ndim < 1 or math.prod(x.shape[1:]) != D:
        raise ValueError(
            f"x must have shape (B, ...) with {D} values per sample, got {tuple(x.shape)}"
        )
    return x.reshape(x.shape[0], D).to(device=device, dtype=torch.float64)


def _out_dtype(x):
    x = torch.as_tensor(x)
    return x.dtype if x.is_floating_point() else torch.float64


class GaussianMixtureField:
    """Marginal velocity of the path from N(0, I) to sum_k pi_k N(m_k, S_k).

    See fm_numpy/analytic.py::GaussianMixtureField for the formulas and where it is defined.
    """

    def __init__(self, means, covariances, weights=None, scheduler=None, device=None):
        means = torch.as_tensor(means, dtype=torch.float64, device=device)
        covariances = torch.as_tensor(covariances, dtype=torch.float64, device=means.device)
        if means.ndim != 2:
            raise ValueError(f"means must have shape (K, D), got {tuple(means.shape)}")
        K, D = means.shape
        if covariances.shape == (K, D):
            if bool((covariances < 0).any()) or not bool(torch.isfinite(covariances).all()):
                raise ValueError("diagonal covariances must be finite and non-negative")
            self.eigvals = covariances.clone()  # (K, D)
            self.eigvecs = None
        elif covariances.shape == (K, D, D):
            if not torch.allclose(covariances, covariances.transpose(1, 2), atol=1e-12):
                raise ValueError("covariances must be symmetric")
            lam, Q = torch.linalg.eigh(covariances)  # (K, D), (K, D, D)
            if bool((lam < -1e-10 * max(1.0, lam.abs().max().item())).any()):
                raise ValueError("covariances must be positive semi-definite")
            self.eigvals = lam.clamp(min=0.0)
            self.eigvecs = Q
        else:
            raise ValueError(
                f"covariances must have shape ({K}, {D}, {D}) or ({K}, {D}), "
                f"got {tuple(covariances.shape)}"
            )
        if weights is None:
            weights = torch.full((K,), 1.0 / K, dtype=torch.float64)
        weights = torch.as_tensor(weights, dtype=torch.float64, device=means.device)
        if (
            weights.shape != (K,)
            or bool((weights <= 0).any())
            or not bool(torch.isfinite(weights).all())
        ):
            raise ValueError(f"weights must be {K} positive numbers")
        self.means = means
        self.covariances = covariances
        self.weights = weights / weights.sum()
        self.log_weights = torch.log(self.weights)
        self.scheduler = CondOT() if scheduler is None else scheduler
        self.K, self.D = K, D

    def __repr__(self):
        return f"GaussianMixtureField(K={self.K}, D={self.D}, scheduler={self.scheduler!r})"

    @property
    def device(self):
        return self.means.device

    def full_covariances(self):
        """S_k as (K, D, D) matrices."""
        if self.eigvecs is None:
            return torch.diag_embed(self.eigvals)
        return self.covariances

    def _rotate_in(self, r):
        """z_k = Q_k^T r_k for r of shape (B, K, D)."""
        if self.eigvecs is None:
            return r
        return torch.matmul(r.transpose(0, 1), self.eigvecs).transpose(0, 1)  # (B, K, D)

    def _rotate_out(self, z):
        """Q_k z_k for z of shape (B, K, D)."""
        if self.eigvecs is None:
            return z
        Q_T = self.eigvecs.transpose(1, 2)  # (K, D, D)
        return torch.matmul(z.transpose(0, 1), Q_T).transpose(0, 1)  # (B, K, D)

    def _components(self, x, t):
        """Per-component log-densities, posteriors w_k, conditional means mu_k and scores s_k."""
        alpha_t, sigma_t, d_alpha_t, d_sigma_t = _batch_coefficients(
            self.scheduler, t, x.shape[0], x.device
        )
        a = alpha_t[:, None, None]  # (B, 1, 1)
        r = x[:, None, :] - a * self.means[None]  # (B, K, D)
        z = self._rotate_in(r)  # (B, K, D)
        lam = self.eigvals[None]  # (1, K, D)
        c = a**2 * lam + sigma_t[:, None, None] ** 2  # (B, K, D), eigenvalues of C_k
        g = d_alpha_t[:, None, None] * a * lam + (d_sigma_t * sigma_t)[:, None, None]  # (B, K, D)
        log_comp = (
            self.log_weights[None]
            - 0.5 * torch.sum(z**2 / c, dim=2)
            - 0.5 * torch.sum(torch.log(2 * math.pi * c), dim=2)
        )  # (B, K): log pi_k + log N(x; alpha_t m_k, C_k)
        log_p = torch.logsumexp(log_comp, dim=1)  # (B,)
        w = torch.exp(log_comp - log_p[:, None])  # (B, K)
        mu = d_alpha_t[:, None, None] * self.means[None] + self._rotate_out(g / c * z)  # (B, K, D)
        s = -self._rotate_out(z / c)  # (B, K, D), grad_x log N(x; alpha_t m_k, C_k)
        trace = torch.sum(g / c, dim=2)  # (B, K), tr(G_k C_k^{-1})
        return log_p, w, mu, s, trace

    def __call__(self, x, t):
        """u_t(x) = sum_k w_k(x) mu_k(x); x of shape (B, ...) with D values per sample."""
        xf = _flatten(x, self.D, self.device)
        _, w, mu, _, _ = self._components(xf, t)
        v = torch.einsum("bk,bkd->bd", w, mu)  # (B, D)
        return v.reshape(x.shape).to(device=x.device, dtype=_out_dtype(x))

    def divergence(self, x, t):
        """(u_t(x), div u_t(x)), div = sum_k w_k [tr(G_k C_k^-1) + s_k . mu_k] - s . u."""
        xf = _flatten(x, self.D, self.device)
        _, w, mu, s, trace = self._components(xf, t)
        v = torch.einsum("bk,bkd->bd", w, mu)  # (B, D)
        score = torch.einsum("bk,bkd->bd", w, s)  # (B, D)
        div = (
            torch.sum(w * trace, dim=1)
            + torch.einsum("bk,bkd,bkd->b", w, s, mu)
            - torch.sum(score * v, dim=1)
        )  # (B,)
        dtype = _out_dtype(x)
        return v.reshape(x.shape).to(device=x.device, dtype=dtype), div.to(
            device=x.device, dtype=dtype
        )

    def score(self, x, t):
        """grad_x log p_t(x) = sum_k w_k(x) s_k(x)."""
        xf = _flatten(x, self.D, self.device)
        _, w, _, s, _ = self._components(xf, t)
        score = torch.einsum("bk,bkd->bd", w, s)  # (B, D)
        return score.reshape(x.shape).to(device=x.device, dtype=_out_dtype(x))

    def log_prob(self, x, t=1.0):
        """log p_t(x) = log sum_k pi_k N(x; alpha_t m_k, alpha_t^2 S_k + sigma_t^2 I); (B,)."""
        xf = _flatten(x, self.D, self.device)
        log_p = self._components(xf, t)[0]
        return log_p.to(device=x.device, dtype=_out_dtype(x))

    def moments(self, t=1.0):
        """Mean (D,) and covariance (D, D) of p_t (t a scalar)."""
        coefficients = _batch_coefficients(self.scheduler, t, 1, self.device)
        alpha_t, sigma_t = (float(c[0]) for c in coefficients[0:2])
        S = self.full_covariances()  # (K, D, D)
        mean = self.weights @ self.means  # (D,)
        dm = self.means - mean  # (K, D)
        cov = torch.einsum("k,kij->ij", self.weights, S + dm[:, :, None] * dm[:, None, :])
        eye = torch.eye(self.D, dtype=torch.float64, device=self.device)
        return alpha_t * mean, alpha_t**2 * cov + sigma_t**2 * eye

    def sample(self, n, generator=None):
        """n draws (n, D) from the target mixture (t = 1) and their components (n,)."""
        k = torch.multinomial(self.weights, int(n), replacement=True, generator=generator)  # (n,)
        eps = torch.randn(int(n), self.D, dtype=torch.float64, generator=generator)  # (n, D)
        root = torch.sqrt(self.eigvals)[k] * eps.to(self.device)  # (n, D)
        if self.eigvecs is not None:
            root = torch.einsum("nij,nj->ni", self.eigvecs[k], root)
        return self.means[k] + root, k


def eight_gaussians_mixture(scheduler=None, radius=2.0, std=0.1):
    """The "8gaussians" toy set of fm_numpy.data as an explicit mixture (same centres, std)."""
    angles = 2 * math.pi * torch.arange(8, dtype=torch.float64) / 8
    means = radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)  # (8, 2)
    covariances = torch.full((8, 2), std**2, dtype=torch.float64)
    return GaussianMixtureField(
        means, covariances, torch.full((8,), 1 / 8, dtype=torch.float64), scheduler
    )


class EmpiricalField:
    """Marginal velocity of the path from N(0, I) to the uniform distribution on {y_i}.

    See fm_numpy/analytic.py::EmpiricalField: streaming softmax over chunks of the data.
    """

    def __init__(self, data, scheduler=None, chunk_size=4096, device=None):
        data = torch.as_tensor(data, device=device)
        if data.ndim < 2 or data.shape[0] < 1:
            raise ValueError(f"data must have shape (N, ...) with N >= 1, got {tuple(data.shape)}")
        if not data.is_floating_point():
            data = data.to(torch.float64)
        if int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        self.N = data.shape[0]
        self.D = math.prod(data.shape[1:])
        self.data = data.reshape(self.N, self.D)  # (N, D), kept in its own dtype
        self.sq_norms = torch.einsum("nd,nd->n", self.data.double(), self.data.double())  # (N,)
        self.scheduler = CondOT() if scheduler is None else scheduler
        self.chunk_size = int(chunk_size)

    def __repr__(self):
        return f"EmpiricalField(N={self.N}, D={self.D}, scheduler={self.scheduler!r})"

    @property
    def device(self):
        return self.data.device

    def _posterior(self, x, t, second_moment=False):
        """Streaming softmax over the data: (log sum_i exp(l_i), x1_hat, sum_i w_i |y_i|^2).

        l_i = -|x - alpha_t y_i|^2 / (2 sigma_t^2), accumulated chunk by chunk.
        """
        B = x.shape[0]
        alpha_t, sigma_t, d_alpha_t, d_sigma_t = _batch_coefficients(self.scheduler, t, B, x.device)
        inv_var = 1.0 / sigma_t**2  # (B,)
        x_sq = torch.sum(x**2, dim=1)  # (B,)
        run_max = torch.full((B,), -math.inf, dtype=torch.float64, device=x.device)  # (B,)
        run_sum = torch.zeros(B, dtype=torch.float64, device=x.device)  # (B,)
        run_y = torch.zeros(B, self.D, dtype=torch.float64, device=x.device)  # (B, D)
        run_y2 = torch.zeros(B, dtype=torch.float64, device=x.device)  # (B,)
        for start in range(0, self.N, self.chunk_size):
            Y = self.data[start : start + self.chunk_size].to(torch.float64)  # (C, D)
            y_sq = self.sq_norms[start : start + self.chunk_size]  # (C,)
            sq_dist = (
                x_sq[:, None] - 2 * alpha_t[:, None] * (x @ Y.T) + alpha_t[:, None] ** 2 * y_sq
            )
            logits = -0.5 * inv_var[:, None] * sq_dist  # (B, C)
            new_max = torch.maximum(run_max, logits.max(dim=1).values)  # (B,)
            rescale = torch.exp(run_max - new_max)  # (B,), 0 on the first chunk
            e = torch.exp(logits - new_max[:, None])  # (B, C)
            run_sum = run_sum * rescale + e.sum(dim=1)
            run_y = run_y * rescale[:, None] + e @ Y
            if second_moment:
                run_y2 = run_y2 * rescale + e @ y_sq
            run_max = new_max
        lse = torch.log(run_sum) + run_max  # (B,)
        x1_hat = run_y / run_sum[:, None]  # (B, D)
        y2_hat = run_y2 / run_sum  # (B,)
        return lse, x1_hat, y2_hat, (alpha_t, sigma_t, d_alpha_t, d_sigma_t)

    def posterior_mean(self, x, t):
        """E[x1 | xt = x] = sum_i w_i(x) y_i."""
        xf = _flatten(x, self.D, self.device)
        x1_hat = self._posterior(xf, t)[1]
        return x1_hat.reshape(x.shape).to(device=x.device, dtype=_out_dtype(x))

    def __call__(self, x, t):
        """u_t(x) = a x + b x1_hat, a = d_sigma_t / sigma_t,
        b = (d_alpha_t sigma_t - d_sigma_t alpha_t) / sigma_t (AffinePath.velocity_from_x1)."""
        xf = _flatten(x, self.D, self.device)
        _, x1_hat, _, (alpha_t, sigma_t, d_alpha_t, d_sigma_t) = self._posterior(xf, t)
        a = (d_sigma_t / sigma_t)[:, None]  # (B, 1)
        b = ((d_alpha_t * sigma_t - d_sigma_t * alpha_t) / sigma_t)[:, None]  # (B, 1)
        v = a * xf + b * x1_hat  # (B, D)
        return v.reshape(x.shape).to(device=x.device, dtype=_out_dtype(x))

    def divergence(self, x, t):
        """(u_t(x), div u_t(x)), div = D a + b (alpha_t / sigma_t^2) (E_w|y|^2 - |x1_hat|^2)."""
        xf = _flatten(x, self.D, self.device)
        _, x1_hat, y2_hat, (alpha_t, sigma_t, d_alpha_t, d_sigma_t) = self._posterior(
            xf, t, second_moment=True
        )
        a = d_sigma_t / sigma_t  # (B,)
        b = (d_alpha_t * sigma_t - d_sigma_t * alpha_t) / sigma_t  # (B,)
        v = a[:, None] * xf + b[:, None] * x1_hat  # (B, D)
        posterior_var = torch.clamp(y2_hat - torch.sum(x1_hat**2, dim=1), min=0.0)  # (B,)
        div = self.D * a + b * alpha_t / sigma_t**2 * posterior_var  # (B,)
        dtype = _out_dtype(x)
        return v.reshape(x.shape).to(device=x.device, dtype=dtype), div.to(
            device=x.device, dtype=dtype
        )

    def log_prob(self, x, t):
        """log p_t(x) = log (1/N) sum_i N(x; alpha_t y_i, sigma_t^2 I), for sigma_t > 0."""
        xf = _flatten(x, self.D, self.device)
        lse, _, _, (_, sigma_t, _, _) = self._posterior(xf, t)
        log_p = lse - math.log(self.N) - 0.5 * self.D * torch.log(2 * math.pi * sigma_t**2)
        return log_p.to(device=x.device, dtype=_out_dtype(x))
