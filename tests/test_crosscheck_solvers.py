"""fm_numpy.solvers and fm_torch.solvers give the same trajectories and the same guidance.

Properties (tolerances and their reasons: docs/crosscheck.md):
- every fixed-step method, on any grid (uniform or random, forward or backward in time),
  gives bit-identical trajectories in both packages for a velocity field whose two
  implementations are bit-identical (the Gaussian-data oracle, +,-,*,/ only), vector and
  image batches, float64 and float32;
- the same for the shared MLP, within the MLP's own cross-package round-off;
- SciPy's RK45 and torchdiffeq's dopri5 agree with each other and with the exact flow of
  the Gaussian oracle (and with a fine RK4 reference for the MLP) within their tolerance;
- ClassifierFreeGuidance gives the same velocity in both packages and equals
  v_uncond + w (v_cond - v_uncond) (w = 1: conditional, w = 0: unconditional).
(Convergence orders of each method are tested in tests/test_solvers.py.)
"""

import numpy as np
import pytest
import torch
from crosscheck_helpers import RTOL, TORCH_DTYPE, GaussianOracle, assert_close, seeds, shapes
from hypothesis import given
from hypothesis import strategies as st

import fm_numpy.solvers as np_solvers
import fm_torch.solvers as th_solvers
from fm_numpy.models.mlp import MLP as NumpyMLP
from fm_torch.models.mlp import MLP as TorchMLP

METHODS = ("euler", "midpoint", "heun", "rk4")
DTYPES = [np.float64, np.float32]


def _oracle_pair(shape, rng, dtype):
    m = rng.normal(0, 2, shape[1:]).astype(dtype)
    s = rng.uniform(0.2, 2.0, shape[1:]).astype(dtype)
    return GaussianOracle(m, s), GaussianOracle(torch.from_numpy(m), torch.from_numpy(s))


@st.composite
def grids(draw):
    """A time grid from 0 to 1 or back: uniform, or random and non-uniform; 2 to 21 points."""
    n = draw(st.integers(1, 20))
    if draw(st.booleans()):
        t_grid = np.linspace(0.0, 1.0, n + 1)
    else:
        inner = np.random.default_rng(draw(seeds)).uniform(0, 1, n - 1)
        t_grid = np.unique(np.concatenate([[0.0, 1.0], inner]))
    if draw(st.booleans()):
        lo, hi = sorted(draw(st.tuples(st.floats(0, 1), st.floats(0, 1))))
        if hi - lo > 1e-3:  # a sub-interval [lo, hi] of [0, 1]
            t_grid = lo + (hi - lo) * t_grid
            t_grid[-1] = hi
    return t_grid[::-1].copy() if draw(st.booleans()) else t_grid


@pytest.mark.parametrize("dtype", DTYPES)
@given(method=st.sampled_from(METHODS), shape=shapes, t_grid=grids(), seed=seeds)
def test_fixed_step_trajectories_bit_identical(dtype, method, shape, t_grid, seed):
    rng = np.random.default_rng(seed)
    v_np, v_th = _oracle_pair(shape, rng, dtype)
    x_start = rng.standard_normal(shape).astype(dtype)  # (B, ...)
    xs_np, nfe_np = np_solvers.odeint(v_np, x_start, t_grid, method, return_nfe=True)
    xs_th, nfe_th = th_solvers.odeint(v_th, torch.from_numpy(x_start), t_grid, method,
                                      return_nfe=True)
    assert xs_np.shape == (len(t_grid),) + shape and xs_np.dtype == dtype
    assert nfe_np == nfe_th == np_solvers.NFE_PER_STEP[method] * (len(t_grid) - 1)
    np.testing.assert_array_equal(xs_th.numpy(), xs_np)


def _mlp_pair(dim, hidden, depth, num_classes, seed, dtype, tmp_path):
    """The same weights in both packages; they travel numpy -> .npz -> torch."""
    mlp_np = NumpyMLP(dim, hidden, depth, time_features=8, num_classes=num_classes, seed=seed,
                      dtype=dtype)
    path = tmp_path / f"mlp-{seed}.npz"
    mlp_np.save_npz(path)
    mlp_th = TorchMLP.from_npz(path)
    assert mlp_th.dtype == TORCH_DTYPE[dtype]
    return mlp_np, mlp_th


def _trajectory_scale(xs):
    """max |x| over each sample's trajectory, as the scale of accumulated round-off."""
    return np.max(np.abs(xs).reshape(xs.shape[0], xs.shape[1], -1), axis=(0, 2))[None, :, None]


@pytest.mark.parametrize("dtype", DTYPES)
@given(
    method=st.sampled_from(METHODS),
    batch=st.integers(1, 16),
    dim=st.integers(1, 8),
    t_grid=grids(),
    seed=seeds,
)
def test_fixed_step_trajectories_agree_for_mlp(dtype, method, batch, dim, t_grid, seed,
                                               tmp_path_factory):
    """The MLP's two implementations differ by matmul round-off (BLAS summation order), so
    trajectories agree to RTOL times the trajectory's magnitude (few steps, Lipschitz ~1)."""
    mlp_np, mlp_th = _mlp_pair(dim, 16, 2, None, seed % 1000, dtype, tmp_path_factory.mktemp("m"))
    x_start = np.random.default_rng(seed).standard_normal((batch, dim)).astype(dtype)
    xs_np = np_solvers.odeint(mlp_np, x_start, t_grid, method)
    xs_th = th_solvers.odeint(mlp_th, torch.from_numpy(x_start), t_grid, method)
    assert_close(xs_np, xs_th, _trajectory_scale(xs_np), RTOL[dtype], f"{method} trajectory")


ADAPTIVE_TOL = 1e-8


@given(shape=shapes, seed=seeds, backward=st.booleans(), n_out=st.integers(2, 6))
def test_adaptive_solvers_agree_with_each_other_and_exact_flow(shape, seed, backward, n_out):
    """RK45 (SciPy) and dopri5 (torchdiffeq), both at rtol = atol = 1e-8, land within
    1e-5 (1000 x tol: global error of a locally controlled method grows with the number of
    steps and the field's Lipschitz constant) of the exact flow x_t = t m + std_t x0 and
    therefore within 2e-5 of each other; float64."""
    rng = np.random.default_rng(seed)
    v_np, v_th = _oracle_pair(shape, rng, np.float64)
    t_grid = np.linspace(0.0, 1.0, n_out)
    if backward:
        t_grid = t_grid[::-1].copy()
    x_start = rng.standard_normal(shape)  # (B, ...)
    xs_np = np_solvers.odeint(v_np, x_start, t_grid, "RK45", rtol=ADAPTIVE_TOL, atol=ADAPTIVE_TOL)
    xs_th = th_solvers.odeint(v_th, torch.from_numpy(x_start), t_grid, "dopri5",
                              rtol=ADAPTIVE_TOL, atol=ADAPTIVE_TOL).numpy()
    exact = np.stack([v_np.flow(x_start, t_grid[0], t) for t in t_grid])  # (N, B, ...)
    scale = 1 + np.abs(exact)
    assert_close(xs_np, exact, scale, 1e3 * ADAPTIVE_TOL, "RK45 vs exact flow")
    assert_close(xs_th, exact, scale, 1e3 * ADAPTIVE_TOL, "dopri5 vs exact flow")
    assert_close(xs_np, xs_th, scale, 2e3 * ADAPTIVE_TOL, "RK45 vs dopri5")


@given(
    batch=st.integers(1, 8),
    dim=st.integers(1, 6),
    seed=seeds,
    t_start=st.floats(0.0, 0.98),
    backward=st.booleans(),
)
def test_adaptive_solvers_agree_with_fine_rk4_for_mlp(batch, dim, seed, t_start, backward,
                                                      tmp_path_factory):
    """On the MLP field (float64): RK45 and dopri5 at tol 1e-8 against RK4 with h = 1e-4.

    The MLP's time features cos(1000 t) oscillate with period 0.006 in t, so a reference
    RK4 must take steps with 1000 h << 1: 200 steps over an interval of length 0.02
    (1000 h = 0.1; RK4's global error ~ (1000 h)^4 / 1000 ~ 1e-7 of the forcing amplitude,
    measured below 1e-9). Agreement within 1e-5 (1000 x tol), as for the oracle.
    """
    mlp_np, mlp_th = _mlp_pair(dim, 16, 2, None, seed % 1000, np.float64,
                               tmp_path_factory.mktemp("m"))
    x_start = np.random.default_rng(seed).standard_normal((batch, dim))
    t_grid = np.linspace(t_start, t_start + 0.02, 201)
    if backward:
        t_grid = t_grid[::-1].copy()
    reference = np_solvers.odeint(mlp_np, x_start, t_grid, "rk4")[::40]  # 6 grid times
    xs_np = np_solvers.odeint(mlp_np, x_start, t_grid[::40], "RK45", rtol=ADAPTIVE_TOL,
                              atol=ADAPTIVE_TOL)
    xs_th = th_solvers.odeint(mlp_th, torch.from_numpy(x_start), t_grid[::40], "dopri5",
                              rtol=ADAPTIVE_TOL, atol=ADAPTIVE_TOL).numpy()
    scale = 1 + np.abs(reference)
    assert_close(xs_np, reference, scale, 1e3 * ADAPTIVE_TOL, "RK45 vs RK4 reference")
    assert_close(xs_th, reference, scale, 1e3 * ADAPTIVE_TOL, "dopri5 vs RK4 reference")


@pytest.mark.parametrize("dtype", DTYPES)
@given(
    batch=st.integers(1, 32),
    dim=st.integers(1, 8),
    num_classes=st.integers(1, 10),
    guidance=st.one_of(st.sampled_from([0.0, 1.0]), st.floats(-2.0, 8.0)),
    t=st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0)),
    seed=seeds,
)
def test_classifier_free_guidance(dtype, batch, dim, num_classes, guidance, t, seed,
                                  tmp_path_factory):
    mlp_np, mlp_th = _mlp_pair(dim, 16, 2, num_classes, seed % 1000, dtype,
                               tmp_path_factory.mktemp("m"))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, dim)).astype(dtype)
    y = rng.integers(0, num_classes, batch)
    x_th, y_th = torch.from_numpy(x), torch.from_numpy(y)
    cfg_np = np_solvers.ClassifierFreeGuidance(mlp_np, y, guidance)
    cfg_th = th_solvers.ClassifierFreeGuidance(mlp_th, y_th, guidance)
    v_np = cfg_np(x, t)
    with torch.no_grad():
        v_th = cfg_th(x_th, t)
        v_cond_th, v_uncond_th = mlp_th(x_th, t, y_th), mlp_th(x_th, t, None)
    v_cond, v_uncond = mlp_np(x, t, y), mlp_np(x, t, None)
    # numpy's guided velocity against the formula, term by term
    expected = v_uncond + guidance * (v_cond - v_uncond)
    scale = (1 + abs(guidance)) * (np.abs(v_uncond) + np.abs(v_cond))
    eps = np.finfo(dtype).eps
    assert_close(v_np, expected, scale, 4 * eps, "numpy CFG vs formula")
    assert_close(v_th, v_uncond_th + guidance * (v_cond_th - v_uncond_th), scale, 4 * eps,
                 "torch CFG vs formula")
    if guidance == 1.0:
        np.testing.assert_array_equal(v_np, v_cond)
        np.testing.assert_array_equal(v_th.numpy(), v_cond_th.numpy())
    if guidance == 0.0:
        np.testing.assert_array_equal(v_np, v_uncond)
        np.testing.assert_array_equal(v_th.numpy(), v_uncond_th.numpy())
    # across packages: the conditional and unconditional fields differ only by MLP
    # round-off, which guidance amplifies by at most |w| + |1 - w|. That round-off follows
    # the size of the output layer's terms, not of one output that they cancel to (an entry
    # of 6e-4 differed by 2e-8 in float32), so the batch's mean magnitude joins the scale.
    net_scale = (1 + abs(guidance)) * (np.abs(v_uncond).mean() + np.abs(v_cond).mean())
    assert_close(v_np, v_th, scale + net_scale, RTOL[dtype], "CFG across packages")


@given(
    method=st.sampled_from(METHODS),
    sched=st.sampled_from(["condot", "cosine", "sigma_min_ot", "polynomial"]),
    K=st.integers(1, 5),
    dim=st.integers(1, 6),
    batch=st.integers(1, 16),
    t_grid=grids(),
    seed=seeds,
)
def test_fixed_step_trajectories_agree_for_gaussian_mixture_oracle(method, sched, K, dim, batch,
                                                                   t_grid, seed):
    """H3's closed-form mixture field (fm_numpy.analytic / fm_torch.analytic) as the field:
    its posterior weights use exp/log (ulps apart across packages), so float64 trajectories
    agree to RTOL of their magnitude rather than bit for bit. Schedulers whose field is
    finite on all of [0, 1] (see GaussianMixtureField's docstring; Polynomial with n = 2)."""
    import fm_numpy.analytic as np_analytic
    import fm_numpy.paths as np_paths
    import fm_torch.analytic as th_analytic
    import fm_torch.paths as th_paths

    rng = np.random.default_rng(seed)
    means = rng.normal(0, 2, (K, dim))
    variances = rng.uniform(0.05, 1.0, (K, dim))
    weights = rng.uniform(0.5, 1.5, K)
    kwargs = {"n": 2.0} if sched == "polynomial" else {}
    v_np = np_analytic.GaussianMixtureField(means, variances, weights,
                                            np_paths.make_scheduler(sched, **kwargs))
    v_th = th_analytic.GaussianMixtureField(means, variances, weights,
                                            th_paths.make_scheduler(sched, **kwargs))
    x_start = rng.standard_normal((batch, dim))
    xs_np = np_solvers.odeint(v_np, x_start, t_grid, method)
    xs_th = th_solvers.odeint(v_th, torch.from_numpy(x_start), t_grid, method)
    assert np.all(np.isfinite(xs_np))
    assert_close(xs_np, xs_th, _trajectory_scale(xs_np), RTOL[np.float64], f"{method} trajectory")


@given(
    guidance=st.floats(-2.0, 8.0),
    ends=st.lists(st.sampled_from([0.0, 0.25, 0.5, 1.0]) | st.floats(0.0, 1.0), min_size=2,
                  max_size=2),
    t=st.sampled_from([0.0, 0.25, 0.5, 1.0]) | st.floats(0.0, 1.0),
    seed=seeds,
)
def test_guidance_interval_guides_inside_and_conditions_outside(guidance, ends, t, seed,
                                                                 tmp_path_factory):
    """interval (t_lo, t_hi), ends included: inside, the guided field of no interval; outside,
    the conditional model(x, t, y) itself (one evaluation); the same in both packages, with
    t as a float and (torch's adaptive solvers) as a 0-d tensor."""
    lo, hi = sorted(ends)
    mlp_np, mlp_th = _mlp_pair(3, 16, 2, 4, seed % 1000, np.float64,
                               tmp_path_factory.mktemp("m"))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((5, 3))
    y = rng.integers(0, 4, 5)
    x_th, y_th = torch.from_numpy(x), torch.from_numpy(y)
    inside = lo <= t <= hi
    v_np = np_solvers.ClassifierFreeGuidance(mlp_np, y, guidance, (lo, hi))(x, t)
    want_np = (np_solvers.ClassifierFreeGuidance(mlp_np, y, guidance)(x, t) if inside
               else mlp_np(x, t, y))
    np.testing.assert_array_equal(v_np, want_np)
    with torch.no_grad():
        cfg_th = th_solvers.ClassifierFreeGuidance(mlp_th, y_th, guidance, (lo, hi))
        want_th = (th_solvers.ClassifierFreeGuidance(mlp_th, y_th, guidance)(x_th, t) if inside
                   else mlp_th(x_th, t, y_th))
        for t_in in (t, torch.tensor(t, dtype=torch.float64)):
            np.testing.assert_array_equal(cfg_th(x_th, t_in).numpy(), want_th.numpy())
    assert_close(v_np, want_th.numpy(), 1 + abs(guidance), RTOL[np.float64], "across packages")


@pytest.mark.parametrize("bad", [(0.5, 0.2), (-0.1, 0.5), (0.2, 1.5), (0.1,), "ab",
                                 (float("nan"), 0.5)])
def test_guidance_interval_refuses_what_is_not_one(bad):
    for solvers in (np_solvers, th_solvers):
        with pytest.raises(ValueError, match="guidance interval"):
            solvers.ClassifierFreeGuidance(lambda x, t, y: x, None, 2.0, bad)
