"""Closed-form oracles (fm_numpy/analytic.py, fm_torch/analytic.py) against independent checks.

- the REFERENCES.md closed form for a Gaussian target,
- the continuity equation d/dt p_t + div(p_t u_t) = 0 by finite differences in t and x,
- divergences against finite differences, log-densities against scipy,
- the empirical oracle against a mixture with zero covariances, chunked vs not,
- integrating the oracle from N(0, I) reproduces the mixture (weights, means,
  covariances within a 5-standard-error bound) and p_t on the way (moments, KS test),
- the empirical oracle memorises its training points,
- numpy and torch agree to float64 round-off.
"""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

import fm_torch.analytic as ta
import fm_torch.paths as tp
from fm_numpy.analytic import (
    EmpiricalField,
    GaussianMixtureField,
    eight_gaussians_mixture,
    logsumexp,
)
from fm_numpy.data import sample_toy
from fm_numpy.paths import CondOT, Cosine, make_scheduler
from fm_numpy.solvers import odeint

SCHEDULERS = [
    ("condot", {}),
    ("sigma_min_ot", {"sigma_min": 0.01}),
    ("cosine", {}),
    ("linear_vp", {}),
    ("vp", {}),
    ("polynomial", {"n": 2.0}),
]


def random_mixture(seed=0, K=3, D=2, diagonal=False, scheduler=None):
    rng = np.random.default_rng(seed)
    means = 2.0 * rng.standard_normal((K, D))
    if diagonal:
        covs = rng.uniform(0.05, 0.5, (K, D))
    else:
        A = 0.5 * rng.standard_normal((K, D, D))
        covs = A @ np.swapaxes(A, 1, 2) + 0.05 * np.eye(D)
    weights = rng.uniform(0.5, 1.5, K)
    return GaussianMixtureField(means, covs, weights, scheduler)


def fd_divergence(v, x, t, h=1e-5):
    D = x.shape[1]
    return sum((v(x + h * e, t) - v(x - h * e, t))[:, i] / (2 * h) for i, e in enumerate(np.eye(D)))


def test_single_gaussian_matches_reference_closed_form():
    # REFERENCES.md: u_t(x) = m + (t s^2 - (1-t)) / (t^2 s^2 + (1-t)^2) (x - t m), per coordinate.
    rng = np.random.default_rng(1)
    D = 3
    m = rng.standard_normal(D)
    s2 = rng.uniform(0.1, 2.0, D)
    field = GaussianMixtureField(m[None], s2[None], None, CondOT())
    x = rng.standard_normal((10, D))
    t = rng.uniform(0, 1, 10)
    tc = t[:, None]
    expected = m + (tc * s2 - (1 - tc)) / (tc**2 * s2 + (1 - tc) ** 2) * (x - tc * m)
    np.testing.assert_allclose(field(x, t), expected, rtol=1e-12, atol=1e-12)
    # t = 1 exactly: u_1(x) = m + (x - m) = x, defined because S is positive definite.
    np.testing.assert_allclose(field(x, 1.0), x, atol=1e-12)


def test_empirical_matches_reference_closed_form():
    # REFERENCES.md: u_t(x) = sum_i w_i (y_i - x) / (1-t),
    # w = softmax(-|x - t y_i|^2 / (2 (1-t)^2)).
    rng = np.random.default_rng(2)
    Y = rng.standard_normal((30, 4))
    x = rng.standard_normal((7, 4))
    t = 0.6
    logits = -np.sum((x[:, None] - t * Y[None]) ** 2, axis=2) / (2 * (1 - t) ** 2)
    w = np.exp(logits - logsumexp(logits, axis=1)[:, None])
    expected = np.einsum("bi,bid->bd", w, Y[None] - x[:, None]) / (1 - t)
    np.testing.assert_allclose(
        EmpiricalField(Y, CondOT(), chunk_size=8)(x, t), expected, atol=1e-12
    )


@pytest.mark.parametrize("name,kwargs", SCHEDULERS)
@pytest.mark.parametrize("t", [0.1, 0.5, 0.9])
def test_continuity_equation(name, kwargs, t):
    """d/dt p_t(x) + div(p_t u_t)(x) = 0, both terms by central differences."""
    field = random_mixture(3, scheduler=make_scheduler(name, **kwargs))
    x = np.random.default_rng(4).standard_normal((12, 2)) * 1.5
    h = 1e-5
    dp_dt = (np.exp(field.log_prob(x, t + h)) - np.exp(field.log_prob(x, t - h))) / (2 * h)

    def flux(z, t):
        return np.exp(field.log_prob(z, t))[:, None] * field(z, t)

    div_flux = fd_divergence(flux, x, t)
    scale = np.abs(dp_dt).max()
    assert scale > 1e-3  # the check is not vacuous
    np.testing.assert_allclose(dp_dt, -div_flux, atol=1e-6 * max(1.0, scale))


@pytest.mark.parametrize("name,kwargs", SCHEDULERS)
@pytest.mark.parametrize("diagonal", [False, True])
def test_gaussian_mixture_divergence_and_score(name, kwargs, diagonal):
    field = random_mixture(5, K=4, D=3, diagonal=diagonal, scheduler=make_scheduler(name, **kwargs))
    rng = np.random.default_rng(6)
    x = rng.standard_normal((9, 3)) * 2
    t = rng.uniform(0.05, 0.95, 9)
    v, div = field.divergence(x, t)
    np.testing.assert_allclose(v, field(x, t), atol=1e-14)
    np.testing.assert_allclose(div, fd_divergence(field, x, t), atol=1e-7)
    h = 1e-5
    fd_score = np.stack(
        [
            (field.log_prob(x + h * e, t) - field.log_prob(x - h * e, t)) / (2 * h)
            for e in np.eye(3)
        ],
        1,
    )
    np.testing.assert_allclose(field.score(x, t), fd_score, atol=1e-7)


@pytest.mark.parametrize("name,kwargs", SCHEDULERS)
def test_empirical_divergence_and_log_prob(name, kwargs):
    rng = np.random.default_rng(7)
    Y = rng.standard_normal((40, 3))
    field = EmpiricalField(Y, make_scheduler(name, **kwargs), chunk_size=16)
    x = rng.standard_normal((6, 3))
    t = rng.uniform(0.05, 0.9, 6)
    v, div = field.divergence(x, t)
    np.testing.assert_allclose(v, field(x, t), atol=1e-14)
    np.testing.assert_allclose(div, fd_divergence(field, x, t), rtol=1e-6, atol=1e-6)
    # p_t is the mixture (1/N) sum_i N(alpha_t y_i, sigma_t^2 I), by scipy
    alpha_t, sigma_t = (np.asarray(c) for c in field.scheduler(t)[:2])
    dens = [
        np.mean([stats.multivariate_normal(alpha_t[b] * y, sigma_t[b] ** 2).pdf(x[b]) for y in Y])
        for b in range(6)
    ]
    np.testing.assert_allclose(field.log_prob(x, t), np.log(dens), rtol=1e-10)


def test_gaussian_mixture_log_prob_matches_scipy():
    field = random_mixture(8, K=3, D=3)
    x = np.random.default_rng(9).standard_normal((20, 3)) * 2
    for t in (1.0, 0.4):
        alpha_t, sigma_t = (float(c) for c in field.scheduler(t)[:2])
        dens = sum(
            w
            * stats.multivariate_normal(alpha_t * m, alpha_t**2 * S + sigma_t**2 * np.eye(3)).pdf(x)
            for w, m, S in zip(field.weights, field.means, field.covariances, strict=True)
        )
        np.testing.assert_allclose(field.log_prob(x, t), np.log(dens), rtol=1e-10)


@given(
    n=st.integers(1, 40),
    chunk=st.integers(1, 50),
    seed=st.integers(0, 2**16),
    name=st.sampled_from(["condot", "cosine", "vp", "linear_vp"]),
)
def test_empirical_equals_mixture_with_zero_covariances(n, chunk, seed, name):
    """A data set is the mixture of point masses: both oracles must give the same field."""
    rng = np.random.default_rng(seed)
    Y = rng.standard_normal((n, 2)) * 2
    scheduler = make_scheduler(name)
    emp = EmpiricalField(Y, scheduler, chunk_size=chunk)
    gmm = GaussianMixtureField(Y, np.zeros((n, 2)), None, scheduler)
    x = rng.standard_normal((5, 2)) * 3
    t = rng.uniform(0, 0.97, 5)
    v_e, div_e = emp.divergence(x, t)
    v_g, div_g = gmm.divergence(x, t)
    np.testing.assert_allclose(v_e, v_g, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(div_e, div_g, rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(emp.log_prob(x, t), gmm.log_prob(x, t), rtol=1e-10, atol=1e-10)


def test_empirical_chunking_on_image_sized_data():
    rng = np.random.default_rng(10)
    Y = rng.uniform(-1, 1, (3000, 1, 28, 28)).astype(np.float32)
    x = rng.standard_normal((4, 1, 28, 28))
    one_chunk = EmpiricalField(Y, chunk_size=3000)
    many = EmpiricalField(Y, chunk_size=256)
    for t in (0.3, 0.95):
        v1, d1 = one_chunk.divergence(x, t)
        v2, d2 = many.divergence(x, t)
        assert v2.shape == x.shape
        np.testing.assert_allclose(v2, v1, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(d2, d1, rtol=1e-9)
        # near t = 1 the logits differ by thousands: without log-sum-exp this would be NaN
        assert np.all(np.isfinite(v2)) and np.all(np.isfinite(many.log_prob(x, t)))


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="means"):
        GaussianMixtureField(np.zeros(3), np.ones((1, 3)))
    with pytest.raises(ValueError, match="covariances must have shape"):
        GaussianMixtureField(np.zeros((2, 3)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="positive semi-definite"):
        GaussianMixtureField(np.zeros((1, 2)), -np.eye(2)[None])
    with pytest.raises(ValueError, match="symmetric"):
        GaussianMixtureField(np.zeros((1, 2)), np.array([[[1.0, 0.5], [0.0, 1.0]]]))
    with pytest.raises(ValueError, match="weights"):
        GaussianMixtureField(np.zeros((2, 2)), np.ones((2, 2)), [1.0, -1.0])
    field = random_mixture()
    with pytest.raises(ValueError, match="t must lie in"):
        field(np.zeros((3, 2)), 1.5)
    with pytest.raises(ValueError, match="values per sample"):
        field(np.zeros((3, 5)), 0.5)
    with pytest.raises(ValueError, match="chunk_size"):
        EmpiricalField(np.zeros((3, 2)), chunk_size=0)


def _ratio_estimate(r, f):
    """sum r f / sum r and its standard error (delta method) for samples r (n,), f (n, ...)."""
    n = r.shape[0]
    rf = r.reshape((n,) + (1,) * (f.ndim - 1))
    est = np.sum(rf * f, axis=0) / np.sum(r)
    se = np.std(rf * (f - est), axis=0) / (np.mean(r) * np.sqrt(n))
    return est, se


def test_integrating_the_oracle_reproduces_the_mixture():
    """Samples of N(0, I) pushed by the oracle field follow p_t at every t and the mixture at 1.

    Bound: each estimated weight, mean and covariance entry lies within 5 standard errors
    of the truth (SE from the samples themselves; 5 SE has probability < 6e-7 per check
    for a Gaussian estimate, and the seed is fixed). Weights: E_{p_1}[P(k | x)] = pi_k;
    means and covariances: responsibility-weighted averages, unbiased up to O(1/n).
    """
    field = random_mixture(11, K=3, D=2)
    n = 10000
    x0 = np.random.default_rng(12).standard_normal((n, 2))
    t_grid = np.linspace(0, 1, 41)
    xs = odeint(field, x0, t_grid, method="rk4")  # (41, n, 2)
    x1 = xs[-1]
    _, w, _, _, _ = field._components(x1, 1.0)  # (n, K) posteriors P(k | x1)
    z_max = 0.0
    for k in range(field.K):
        est, se = _ratio_estimate(np.ones(n), w[:, k][:, None])
        z_max = max(z_max, np.abs((est - field.weights[k]) / se).max())
        m_hat, se_m = _ratio_estimate(w[:, k], x1)
        z_max = max(z_max, np.abs((m_hat - field.means[k]) / se_m).max())
        d = x1 - field.means[k]
        S_hat, se_S = _ratio_estimate(w[:, k], d[:, :, None] * d[:, None, :])
        z_max = max(z_max, np.abs((S_hat - field.covariances[k]) / se_S).max())
    assert z_max < 5.0, z_max
    # a wrong target (means shifted by 2 standard errors' worth of 0.05) must fail the same bound
    shifted = field.means[0] + 0.05
    m_hat, se_m = _ratio_estimate(w[:, 0], x1)
    assert np.abs((m_hat - shifted) / se_m).max() > 5.0

    # along the way: moments of p_t and a Kolmogorov-Smirnov test of a 1-D projection
    direction = np.array([0.6, 0.8])
    for i in (10, 20, 30):
        t = t_grid[i]
        xt = xs[i]
        mean_t, cov_t = field.moments(t)
        se_mean = np.sqrt(np.diag(cov_t) / n)
        assert np.all(np.abs(xt.mean(axis=0) - mean_t) < 5 * se_mean)
        alpha_t, sigma_t = (float(c) for c in field.scheduler(t)[:2])
        proj_means = alpha_t * field.means @ direction  # (K,)
        proj_std = np.sqrt(alpha_t**2 * direction @ field.covariances @ direction + sigma_t**2)

        def cdf(u, proj_means=proj_means, proj_std=proj_std):
            return np.sum(
                field.weights * stats.norm.cdf((u[:, None] - proj_means) / proj_std), axis=1
            )

        assert stats.kstest(xt @ direction, cdf).pvalue > 1e-3


def test_empirical_oracle_memorises_its_training_points():
    """The FM-loss minimiser on finite data only ever produces the training points."""
    train = sample_toy("8gaussians", 64, rng=13)
    field = EmpiricalField(train, CondOT())
    x0 = np.random.default_rng(14).standard_normal((400, 2))
    # the field is singular at t = 1 (sigma_1 = 0) and picks its point late, when sigma_t is
    # the spacing of the data: stop at 1 - 1e-4, with steps shrinking geometrically towards it
    t_grid = 1 - np.geomspace(1, 1e-4, 101)
    x1 = odeint(field, x0, t_grid, method="rk4")[-1]

    def nn_distance(a, b):
        return np.sqrt(np.min(np.sum((a[:, None] - b[None]) ** 2, axis=2), axis=1))

    d_samples = nn_distance(x1, train)
    # fresh points of the same distribution are far from the 64 training points
    d_fresh = nn_distance(sample_toy("8gaussians", 400, rng=15), train)
    assert d_samples.max() < 5e-3, d_samples.max()
    assert np.median(d_fresh) > 0.03, np.median(d_fresh)
    # and the samples spread over many training points instead of collapsing onto one
    hits = np.argmin(np.sum((x1[:, None] - train[None]) ** 2, axis=2), axis=1)
    assert len(np.unique(hits)) > 40


def test_eight_gaussians_mixture_matches_the_toy_data():
    mixture = eight_gaussians_mixture()
    data = sample_toy("8gaussians", 4000, rng=16)
    # every toy point lies within 5 std of one of the mixture's centres
    d = np.sqrt(np.min(np.sum((data[:, None] - mixture.means[None]) ** 2, axis=2), axis=1))
    assert d.max() < 0.5
    # mean log-likelihood of the toy data under the mixture = minus the mixture's entropy
    mean_lp = mixture.log_prob(data).mean()
    expected = np.log(1 / 8) - np.log(2 * np.pi * 0.01) - 1.0  # -H = log pi - log(2 pi s^2) - 1
    assert abs(mean_lp - expected) < 0.05


@pytest.mark.parametrize("name", ["condot", "cosine", "vp"])
def test_numpy_and_torch_oracles_agree(name):
    rng = np.random.default_rng(17)
    K, D = 3, 2
    means = rng.standard_normal((K, D)) * 2
    A = rng.standard_normal((K, D, D)) * 0.5
    covs = A @ np.swapaxes(A, 1, 2) + 0.05 * np.eye(D)
    f_np = GaussianMixtureField(means, covs, [0.2, 0.3, 0.5], make_scheduler(name))
    f_t = ta.GaussianMixtureField(means, covs, [0.2, 0.3, 0.5], tp.make_scheduler(name))
    x = rng.standard_normal((8, D))
    t = rng.uniform(0, 1, 8)
    v_np, div_np = f_np.divergence(x, t)
    v_t, div_t = f_t.divergence(torch.tensor(x), torch.tensor(t))
    np.testing.assert_allclose(v_t.numpy(), v_np, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(div_t.numpy(), div_np, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        f_t.log_prob(torch.tensor(x), 0.3).numpy(), f_np.log_prob(x, 0.3), rtol=1e-12
    )
    np.testing.assert_allclose(
        f_t.score(torch.tensor(x), 0.7).numpy(), f_np.score(x, 0.7), atol=1e-12
    )

    Y = rng.standard_normal((50, 1, 3, 3))
    e_np = EmpiricalField(Y, make_scheduler(name), chunk_size=16)
    e_t = ta.EmpiricalField(torch.tensor(Y), tp.make_scheduler(name), chunk_size=7)
    x = rng.standard_normal((5, 1, 3, 3))
    v_np, div_np = e_np.divergence(x, 0.4)
    v_t, div_t = e_t.divergence(torch.tensor(x), 0.4)
    np.testing.assert_allclose(v_t.numpy(), v_np, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(div_t.numpy(), div_np, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(
        e_t.log_prob(torch.tensor(x), 0.4).numpy(), e_np.log_prob(x, 0.4), rtol=1e-12
    )


def test_torch_oracle_samples_and_eight_gaussians():
    f = ta.eight_gaussians_mixture(tp.Cosine())
    x1, k = f.sample(2000, torch.Generator().manual_seed(0))
    assert x1.shape == (2000, 2) and k.shape == (2000,)
    # every sample lies near its own component's mean
    assert float((x1 - f.means[k]).norm(dim=1).max()) < 0.6
    np.testing.assert_allclose(
        f.log_prob(x1).numpy(), eight_gaussians_mixture(Cosine()).log_prob(x1.numpy()), rtol=1e-12
    )
