"""Log-likelihoods agree across fm_numpy.likelihood and fm_torch.likelihood (property tests).

Properties (tolerances and their reasons: docs/crosscheck.md):
- on the shared MLP (weights through .npz), the exact-divergence log-likelihood and the
  noise x0 it maps to agree across packages (numpy: the MLP's forward-mode Jacobian trace;
  torch: autograd), for every fixed-step method, uniform or random grids, with and
  without labels; Hutchinson estimates with the same probes agree too;
- for Gaussian data N(m, s^2) and its closed-form CondOT field (no divergence method, so
  numpy uses finite differences and torch autograd), both packages' log-likelihood of
  vector and image-shaped x1 equals log N(x1; m, s^2) up to the solver's error.
"""

import math

import numpy as np
import pytest
import torch
from crosscheck_helpers import GaussianOracle, assert_close, seeds
from hypothesis import given
from hypothesis import strategies as st

import fm_numpy.likelihood as np_lik
import fm_torch.likelihood as th_lik
from fm_numpy.models.mlp import MLP as NumpyMLP
from fm_torch.models.mlp import MLP as TorchMLP

METHODS = ("euler", "midpoint", "heun", "rk4")


@st.composite
def backward_grids(draw):
    """From t = 1 to t = 0: uniform or random non-uniform, 1 to 8 steps."""
    n = draw(st.integers(1, 8))
    if draw(st.booleans()):
        return np.linspace(1.0, 0.0, n + 1)
    inner = np.random.default_rng(draw(seeds)).uniform(0, 1, n - 1)
    return np.unique(np.concatenate([[0.0, 1.0], inner]))[::-1].copy()


@given(
    dim=st.integers(1, 16),
    hidden=st.integers(1, 24),
    depth=st.integers(1, 3),
    num_classes=st.one_of(st.none(), st.integers(1, 5)),
    batch=st.integers(1, 16),
    method=st.sampled_from(METHODS),
    t_grid=backward_grids(),
    divergence=st.sampled_from(["exact", "exact", "hutchinson"]),
    seed=st.integers(0, 10**6),
)
def test_log_likelihood_agrees_on_shared_mlp(dim, hidden, depth, num_classes, batch, method,
                                             t_grid, divergence, seed, tmp_path_factory):
    """Same grid, same arithmetic: the packages differ only by the round-off of the
    divergence (forward mode vs autograd: different summation orders) and of the MLP, so
    log p agrees to 1e-9 of its scale |log N(x0)| + |delta| + D (float64)."""
    mlp_np = NumpyMLP(dim, hidden, depth, time_features=8, num_classes=num_classes, seed=seed,
                      dtype=np.float64)
    file = tmp_path_factory.mktemp("lik") / "mlp.npz"
    mlp_np.save_npz(file)
    mlp_th = TorchMLP.from_npz(file)
    rng = np.random.default_rng(seed)
    x1 = rng.standard_normal((batch, dim))
    y = rng.integers(0, num_classes + 1, batch) if num_classes else None
    options = {"method": method, "t_grid": t_grid, "divergence": divergence, "n_probes": 2,
               "seed": seed, "return_x0": True}
    logp_np, x0_np = np_lik.log_likelihood(mlp_np, x1, y=y, **options)
    logp_th, x0_th = th_lik.log_likelihood(
        mlp_th, torch.from_numpy(x1), y=None if y is None else torch.from_numpy(y), **options)
    delta = logp_np - np_lik.standard_normal_log_prob(x0_np)  # (B,)
    scale = np.abs(np_lik.standard_normal_log_prob(x0_np)) + np.abs(delta) + dim
    assert logp_np.shape == (batch,) and logp_np.dtype == np.float64
    assert_close(x0_np, x0_th, 1 + np.abs(x0_np), 1e-9, "x0")
    assert_close(logp_np, logp_th, scale, 1e-9, "log-likelihood")


image_or_vector = st.one_of(
    st.tuples(st.integers(1, 8), st.integers(1, 16)),
    st.tuples(st.integers(1, 4), st.integers(1, 3), st.integers(1, 4), st.integers(1, 4)),
)


@pytest.mark.parametrize("package", ["numpy", "torch"])
@given(shape=image_or_vector, seed=seeds)
def test_gaussian_log_likelihood_closed_form(package, shape, seed):
    """The CondOT flow of N(m, s^2) data carries N(0, 1) exactly onto it, so
    log p_1(x1) = sum_j log N(x1_j; m_j, s_j^2). RK4 with 40 steps (h = 0.025) on the
    oracle field (s in [0.5, 2], |d^k c / dt^k| moderate) has a global error ~ h^4 C,
    measured at most 1.1e-8 (D + |log p|) over 500 examples; 1e-7 (D + |log p|) is the
    tolerance."""
    rng = np.random.default_rng(seed)
    m = rng.normal(0, 1, shape[1:])
    s = rng.uniform(0.5, 2.0, shape[1:])
    x1 = m + s * rng.standard_normal(shape)  # (B, ...)
    D = int(np.prod(shape[1:]))
    expected = np.sum(
        (-0.5 * ((x1 - m) / s) ** 2 - np.log(s) - 0.5 * math.log(2 * math.pi)).reshape(
            shape[0], D),
        axis=1,
    )  # (B,)
    if package == "numpy":
        logp = np_lik.log_likelihood(GaussianOracle(m, s), x1, method="rk4", steps=40)
    else:
        field = GaussianOracle(torch.from_numpy(m), torch.from_numpy(s))
        logp = th_lik.log_likelihood(field, torch.from_numpy(x1), method="rk4", steps=40)
    assert_close(logp, expected, D + np.abs(expected), 1e-7, f"{package} log p vs closed form")
