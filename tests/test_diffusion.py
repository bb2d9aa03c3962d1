"""fm_numpy.diffusion: the Diff2Flow time and scale maps, the wrappers, and a toy DDPM.

Independent references: the closed-form optimal predictors of Gaussian data N(m, s^2)
(derived below, the diffusion side with its own linear interpolation of abar), the
closed-form CondOT velocity u_t(x) of REFERENCES.md, the exact Gaussian flow map,
finite differences, and energy distance to fresh data.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fm_numpy.data import sample_toy
from fm_numpy.diffusion import (
    DiffusionToFlow,
    FlowToDiffusion,
    alpha_bar_at,
    alpha_bar_from_flow_time,
    alphas_cumprod,
    ddim_sample,
    ddim_timesteps,
    diffusion_sample,
    flow_time_table,
    flow_time_to_timestep,
    linear_betas,
    scale_from_flow_time,
    scaled_linear_betas,
    timestep_to_flow_time,
)
from fm_numpy.solvers import ClassifierFreeGuidance, odeint

DDPM = alphas_cumprod(linear_betas())
SD = alphas_cumprod(scaled_linear_betas())
SCHEDULES = {"ddpm": DDPM, "sd": SD}
N = 1000


# ----------------------------------------------------------------------------------
# Closed forms for Gaussian data x1 ~ N(m, s^2) per coordinate, noise x0 ~ N(0, 1).
#
# Diffusion: x_dm = a x1 + b x0, a = sqrt(abar), b = sqrt(1 - abar). (x1, x0, x_dm) are
# jointly Gaussian with Var(x_dm) = a^2 s^2 + b^2, Cov(x0, x_dm) = b, Cov(x1, x_dm) = a s^2:
#   E[x0 | x_dm] = b (x_dm - a m) / (a^2 s^2 + b^2)                    (epsilon oracle)
#   E[x1 | x_dm] = m + a s^2 (x_dm - a m) / (a^2 s^2 + b^2)            (x0 oracle)
#   E[v_dm | x_dm] = a E[x0 | x_dm] - b E[x1 | x_dm]                   (v oracle)
# Flow (CondOT), REFERENCES.md: u_t(x) = m + (t s^2 - (1-t)) / (t^2 s^2 + (1-t)^2) (x - t m).
# ----------------------------------------------------------------------------------


def gaussian_u(x, t, m, s):
    t = np.asarray(t, dtype=np.float64)
    if t.ndim == 1:
        t = t[:, None]
    return m + (t * s**2 - (1 - t)) / (t**2 * s**2 + (1 - t) ** 2) * (x - t * m)


class GaussianOracle:
    """Optimal diffusion predictor; abar at fractional steps by linear interpolation of the
    table (its own choice, independent of fm_numpy.diffusion's)."""

    def __init__(self, abar, m, s, prediction, means=None):
        self.abar, self.m, self.s, self.prediction = abar, m, s, prediction
        self.means = means  # optional class means: y selects m

    def __call__(self, x_dm, timestep, y=None):
        timestep = np.asarray(timestep, dtype=np.float64)
        abar_k = np.interp(timestep, np.arange(len(self.abar)), self.abar)[:, None]  # (B, 1)
        a, b = np.sqrt(abar_k), np.sqrt(1 - abar_k)
        m = self.m if (y is None or self.means is None) else self.means[y][:, None]
        var = a**2 * self.s**2 + b**2
        eps = b * (x_dm - a * m) / var
        data = m + a * self.s**2 * (x_dm - a * m) / var
        if self.prediction == "epsilon":
            return eps
        if self.prediction == "x0":
            return data
        return a * eps - b * data


# ---------------------------------- schedules -------------------------------------


def test_schedules_match_their_definitions():
    betas = linear_betas()
    assert betas.shape == (N,)
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)
    sd = scaled_linear_betas()
    assert sd[0] == pytest.approx(0.00085, rel=1e-12) and sd[-1] == pytest.approx(0.012, rel=1e-12)
    assert np.all(np.diff(np.sqrt(sd)) > 0) and np.allclose(np.diff(np.sqrt(sd), 2), 0, atol=1e-15)
    abar = 1.0
    for k in (0, 1, 500, 999):
        abar = np.prod([1 - beta for beta in betas[: k + 1]])
        assert DDPM[k] == pytest.approx(abar, rel=1e-12)


def test_flow_time_range_of_the_two_schedules():
    # SD's schedule ends at abar = 0.00466, so flow times below ~0.064 have no step
    assert flow_time_table(SD)[-1] == pytest.approx(0.06404, abs=1e-4)
    assert flow_time_table(DDPM)[-1] == pytest.approx(0.006313, abs=1e-5)
    for abar in (DDPM, SD):
        assert np.all(np.diff(flow_time_table(abar)) < 0)


# ---------------------------------- time map --------------------------------------


@pytest.mark.parametrize("name", SCHEDULES)
def test_time_map_at_integer_steps_is_the_table(name):
    abar = SCHEDULES[name]
    k = np.arange(N, dtype=np.float64)
    t = timestep_to_flow_time(k, abar)
    a, b = np.sqrt(abar), np.sqrt(1 - abar)
    np.testing.assert_allclose(t, a / (a + b), rtol=0, atol=1e-15)
    np.testing.assert_allclose(flow_time_to_timestep(t, abar), k, rtol=0, atol=1e-9)
    np.testing.assert_allclose(alpha_bar_at(k, abar), abar, rtol=1e-12, atol=0)


@given(k=st.floats(0, N - 1), name=st.sampled_from(sorted(SCHEDULES)))
def test_time_map_round_trip_from_steps(k, name):
    abar = SCHEDULES[name]
    t = timestep_to_flow_time(k, abar)
    assert flow_time_to_timestep(t, abar) == pytest.approx(k, abs=1e-8)


@given(u=st.floats(0, 1), name=st.sampled_from(sorted(SCHEDULES)))
def test_time_map_round_trip_from_flow_times(u, name):
    abar = SCHEDULES[name]
    table = flow_time_table(abar)
    t = table[-1] + u * (table[0] - table[-1])
    k = flow_time_to_timestep(t, abar)
    assert 0 <= k <= N - 1
    assert timestep_to_flow_time(k, abar) == pytest.approx(t, abs=1e-13)
    # abar at the fractional step is the abar of t, between its two neighbours in the table
    lo, hi = int(np.floor(k)), min(int(np.floor(k)) + 1, N - 1)
    assert abar[hi] - 1e-15 <= alpha_bar_at(k, abar) <= abar[lo] + 1e-15


def test_flow_times_without_diffusion_counterpart():
    with pytest.raises(ValueError, match="diffusion counterpart"):
        flow_time_to_timestep(0.05, SD)
    with pytest.raises(ValueError, match="diffusion counterpart"):
        flow_time_to_timestep(np.array([0.5, 0.99]), SD)
    assert flow_time_to_timestep(0.05, SD, clamp=True) == N - 1
    assert flow_time_to_timestep(0.0, SD, clamp=True) == N - 1
    assert flow_time_to_timestep(1.0, SD, clamp=True) == 0
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        flow_time_to_timestep(1.5, SD, clamp=True)
    with pytest.raises(ValueError, match="timesteps must lie in"):
        timestep_to_flow_time(999.5, SD)
    with pytest.raises(ValueError, match="strictly decreasing"):
        flow_time_table(SD[::-1])
    with pytest.raises(ValueError, match="unknown prediction"):
        DiffusionToFlow(lambda x, k, y=None: x, SD, prediction="sample")


# ---------------------------------- scale map -------------------------------------


@given(k=st.floats(0, N - 1), name=st.sampled_from(sorted(SCHEDULES)), seed=st.integers(0, 2**16))
def test_scale_map_turns_the_flow_point_into_the_diffusion_point(k, name, seed):
    abar = SCHEDULES[name]
    rng = np.random.default_rng(seed)
    x0, x1 = rng.standard_normal((2, 5, 3))
    t = timestep_to_flow_time(k, abar)
    abar_k = alpha_bar_at(k, abar)
    x_fm = t * x1 + (1 - t) * x0
    x_dm = np.sqrt(abar_k) * x1 + np.sqrt(1 - abar_k) * x0
    s = scale_from_flow_time(t)
    np.testing.assert_allclose(s * x_fm, x_dm, rtol=1e-12, atol=1e-12)
    assert s == pytest.approx(np.sqrt(abar_k) + np.sqrt(1 - abar_k), rel=1e-13)
    assert alpha_bar_from_flow_time(t) == pytest.approx(abar_k, rel=1e-13)


def test_scale_map_at_integer_steps():
    k = np.arange(0, N, 7)
    x0, x1 = np.random.default_rng(0).standard_normal((2, len(k), 4))
    t = timestep_to_flow_time(k.astype(np.float64), SD)[:, None]
    x_fm = t * x1 + (1 - t) * x0
    np.testing.assert_allclose(scale_from_flow_time(t) * x_fm,
                               diffusion_sample(x0, x1, k, SD), rtol=0, atol=1e-13)


# ------------------------- Gaussian oracles: wrapper == u_t -----------------------


@pytest.mark.parametrize("prediction", ["epsilon", "v", "x0"])
@pytest.mark.parametrize("name", SCHEDULES)
def test_wrapped_oracle_is_the_flow_velocity_at_table_times(prediction, name):
    abar = SCHEDULES[name]
    m, s = 0.7, 0.4
    v = DiffusionToFlow(GaussianOracle(abar, m, s, prediction), abar, prediction)
    rng = np.random.default_rng(1)
    for t in flow_time_table(abar)[::37]:  # integer steps: no interpolation at all
        x = rng.standard_normal((6, 2)) * 2
        np.testing.assert_allclose(v(x, t), gaussian_u(x, t, m, s), rtol=1e-9, atol=1e-9)


@given(u=st.floats(0, 1), m=st.floats(-2, 2), s=st.floats(0.05, 3),
       prediction=st.sampled_from(["epsilon", "v", "x0"]),
       name=st.sampled_from(sorted(SCHEDULES)), seed=st.integers(0, 2**16))
def test_wrapped_oracle_is_the_flow_velocity_everywhere_in_range(u, m, s, prediction, name, seed):
    abar = SCHEDULES[name]
    v = DiffusionToFlow(GaussianOracle(abar, m, s, prediction), abar, prediction)
    t = v.t_min + u * (v.t_max - v.t_min)
    rng = np.random.default_rng(seed)
    x = t * (m + s * rng.standard_normal((8, 2))) + (1 - t) * rng.standard_normal((8, 2))
    # the oracle interpolates abar linearly in k; the wrapper via t(k): they differ by
    # at most 4e-5 in abar at half steps (measured), which the conversion divides by t
    # (epsilon) or 1 - t (x0)
    u_ref = gaussian_u(x, t, m, s)
    atol = 1e-4 * (1 + np.abs(u_ref).max()) / min(t, 1 - t)
    np.testing.assert_allclose(v(x, t), u_ref, rtol=0, atol=atol)


@pytest.mark.parametrize("prediction", ["epsilon", "v", "x0"])
def test_wrapper_takes_one_time_per_sample(prediction):
    m, s = -0.3, 1.5
    v = DiffusionToFlow(GaussianOracle(SD, m, s, prediction), SD, prediction)
    t = flow_time_table(SD)[[999, 500, 3, 0]]
    x = np.random.default_rng(2).standard_normal((4, 3))
    np.testing.assert_allclose(v(x, t), gaussian_u(x, t, m, s), rtol=1e-9, atol=1e-9)


def test_wrapper_outside_the_range():
    m, s = 0.5, 0.5
    x = np.random.default_rng(3).standard_normal((4, 2))
    eps = DiffusionToFlow(GaussianOracle(SD, m, s, "epsilon"), SD, "epsilon")
    with pytest.raises(ValueError, match="epsilon-prediction defines no velocity at t = 0"):
        eps(x, 0.0)
    data = DiffusionToFlow(GaussianOracle(SD, m, s, "x0"), SD, "x0")
    with pytest.raises(ValueError, match="x0-prediction defines no velocity at t = 1"):
        data(x, 1.0)
    vpred = DiffusionToFlow(GaussianOracle(SD, m, s, "v"), SD, "v")
    # clamped: the network sees step N-1 (t=0) or step 0 (t=1); results stay finite
    assert np.all(np.isfinite(vpred(x, 0.0))) and np.all(np.isfinite(vpred(x, 1.0)))
    assert np.all(np.isfinite(eps(x, 1.0))) and np.all(np.isfinite(data(x, 0.0)))
    with pytest.raises(ValueError, match="t must"):
        eps(x, np.full(3, 0.5))


# ------------------------------- reverse wrapper ----------------------------------


@given(k=st.floats(0, N - 1), prediction=st.sampled_from(["epsilon", "v", "x0"]),
       seed=st.integers(0, 2**16))
def test_flow_to_diffusion_of_u_is_the_diffusion_oracle(k, prediction, seed):
    m, s = 0.25, 0.8
    model = FlowToDiffusion(lambda x, t: gaussian_u(x, t, m, s), DDPM, prediction)
    abar_k = alpha_bar_at(k, DDPM)
    # a reference oracle that uses this very abar (no interpolation mismatch)
    oracle = GaussianOracle(np.array([abar_k, abar_k * 0.5]), m, s, prediction)
    x_dm = np.random.default_rng(seed).standard_normal((5, 2))
    out = model(x_dm, np.full(5, k))
    ref = oracle(x_dm, np.zeros(5))
    np.testing.assert_allclose(out, ref, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("prediction", ["epsilon", "v", "x0"])
def test_flow_to_diffusion_to_flow_round_trip(prediction):
    rng = np.random.default_rng(4)
    W = rng.standard_normal((2, 2))

    def field(x, t):
        t = np.asarray(t)
        t = t[:, None] if t.ndim == 1 else t
        return np.tanh(x @ W) * (1 + t) + t**2

    back = DiffusionToFlow(FlowToDiffusion(field, SD, prediction), SD, prediction)
    x = rng.standard_normal((7, 2))
    for t in np.linspace(back.t_min, back.t_max, 9):
        np.testing.assert_allclose(back(x, t), field(x, t), rtol=1e-10, atol=1e-10)
    diffusion = GaussianOracle(SD, 0.1, 0.9, prediction)
    again = FlowToDiffusion(DiffusionToFlow(diffusion, SD, prediction), SD, prediction)
    k = np.array([0.0, 10.5, 500.25, 999.0, 3.0, 777.7, 1.0])
    # the oracle's own abar(k) is interpolated differently: compare at integer steps tightly
    np.testing.assert_allclose(again(x, k)[[0, 3, 4, 6]], diffusion(x, k)[[0, 3, 4, 6]],
                               rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(again(x, k), diffusion(x, k), rtol=0, atol=1e-5)


# ------------------------------ solvers and guidance ------------------------------


def gaussian_flow_map(x_a, t_a, t_b, m, s):
    """Exact ODE flow of u_t for N(m, s^2): x_t = t m + sigma_t z, sigma_t^2 = t^2 s^2 + (1-t)^2."""
    sigma_a = np.sqrt(t_a**2 * s**2 + (1 - t_a) ** 2)
    sigma_b = np.sqrt(t_b**2 * s**2 + (1 - t_b) ** 2)
    return t_b * m + sigma_b / sigma_a * (x_a - t_a * m)


@pytest.mark.parametrize("method,steps,tol", [("euler", 400, 5e-3), ("midpoint", 60, 1e-3),
                                              ("heun", 60, 1e-3), ("rk4", 20, 1e-4),
                                              ("RK45", 2, 1e-3), ("DOP853", 2, 1e-4)])
def test_wrapper_works_with_every_solver(method, steps, tol):
    m, s = 1.0, 0.5
    v = DiffusionToFlow(GaussianOracle(SD, m, s, "epsilon"), SD, "epsilon")
    x_a = np.random.default_rng(5).standard_normal((16, 2))
    t_grid = np.linspace(v.t_min, v.t_max, steps + 1)
    xs = odeint(v, x_a, t_grid, method)
    np.testing.assert_allclose(xs[-1], gaussian_flow_map(x_a, v.t_min, v.t_max, m, s), atol=tol)


def test_wrapper_works_with_classifier_free_guidance():
    means, s = np.array([-1.0, 2.0, 0.5]), 0.3
    oracle = GaussianOracle(DDPM, 0.0, s, "epsilon", means=means)  # y=None: mean 0
    v = DiffusionToFlow(oracle, DDPM, "epsilon")
    y = np.array([0, 1, 2, 1])
    x = np.random.default_rng(6).standard_normal((4, 2))
    for w in (0.0, 1.0, 3.0):
        cfg = ClassifierFreeGuidance(v, y, guidance=w)
        for t in flow_time_table(DDPM)[[900, 400, 20]]:
            u_c = gaussian_u(x, t, means[y][:, None], s)
            u_u = gaussian_u(x, t, 0.0, s)
            np.testing.assert_allclose(cfg(x, t), u_u + w * (u_c - u_u), rtol=1e-9, atol=1e-9)


# ----------------------------------- DDIM -----------------------------------------


def test_ddim_timesteps():
    np.testing.assert_array_equal(ddim_timesteps(1000, 2), [999, 0])
    steps = ddim_timesteps(1000, 50)
    assert steps[0] == 999 and steps[-1] == 0 and np.all(np.diff(steps) < 0)
    with pytest.raises(ValueError, match="num_steps"):
        ddim_timesteps(1000, 0)


def test_ddim_of_the_oracle_reaches_the_gaussian():
    m, s = 1.5, 0.5
    x_T = np.random.default_rng(7).standard_normal((20000, 1))
    outs = {p: ddim_sample(GaussianOracle(DDPM, m, s, p), x_T, DDPM, 100, prediction=p)
            for p in ("epsilon", "v", "x0")}
    # the three parameterisations of one oracle are one DDIM trajectory
    np.testing.assert_allclose(outs["v"], outs["epsilon"], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(outs["x0"], outs["epsilon"], rtol=1e-9, atol=1e-9)
    x1 = outs["epsilon"]
    assert abs(x1.mean() - m) < 0.02 and abs(x1.std() - s) < 0.02


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_euler_on_the_time_grid_is_ddim(prediction):
    # x_fm + h (x1_hat - x0_hat) = t' x1_hat + (1 - t') x0_hat = x_dm' / s(t'): DDIM's update
    rng = np.random.default_rng(8)
    W = rng.standard_normal((2, 2))

    def net(x, k, y=None):
        return np.tanh(x @ W + np.asarray(k)[:, None] / 300) + 0.2 * x

    v = DiffusionToFlow(net, SD, prediction)  # x0-prediction: see the next test
    x_T = rng.standard_normal((32, 2))
    for num_steps in (1, 5, 20):
        grid = v.time_grid(num_steps)
        xs = odeint(v, x_T / scale_from_flow_time(v.t_min), grid, "euler")
        np.testing.assert_allclose(xs[-1], ddim_sample(net, x_T, SD, num_steps, prediction),
                                   rtol=1e-10, atol=1e-10)


def test_euler_on_the_time_grid_is_ddim_for_x0_prediction_until_the_last_step():
    rng = np.random.default_rng(9)
    oracle = GaussianOracle(SD, 0.5, 0.7, "x0")
    v = DiffusionToFlow(oracle, SD, "x0")
    x_T = rng.standard_normal((16, 2))
    grid = v.time_grid(10)
    xs = odeint(v, x_T / scale_from_flow_time(v.t_min), grid[:-1], "euler")  # up to step 0
    # DDIM's last step maps x at step 0 to x1_hat = oracle output there
    x_dm = xs[-1] * scale_from_flow_time(grid[-2])
    np.testing.assert_allclose(oracle(x_dm, np.zeros(16)),
                               ddim_sample(oracle, x_T, SD, 10, "x0"), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("prediction", ["epsilon", "v", "x0"])
def test_wrapper_backward_matches_finite_differences(prediction):
    from fm_numpy.diffusion import TimestepModel
    from fm_numpy.models.mlp import MLP

    net = MLP(2, hidden=8, depth=2, time_features=4, seed=3, dtype=np.float64)
    v = DiffusionToFlow(TimestepModel(net), SD, prediction)
    rng = np.random.default_rng(10)
    x, R = rng.standard_normal((2, 5, 2))
    t = rng.uniform(0.05, 0.95, 5)

    def loss():
        return float(np.sum(v(x, t) * R))

    loss()
    grads = {k: g.copy() for k, g in v.backward(R).items()}
    for name in ("W0", "b1", "W2"):
        p = net.params[name].reshape(-1)
        for j in rng.choice(p.size, 3, replace=False):
            old = p[j]
            p[j] = old + 1e-6
            up = loss()
            p[j] = old - 1e-6
            down = loss()
            p[j] = old
            assert grads[name].reshape(-1)[j] == pytest.approx((up - down) / 2e-6, rel=1e-5,
                                                               abs=1e-7)


# --------------------- a toy DDPM, sampled by DDIM and by the flow ODE ---------------------
# Stable Diffusion's scaled-linear schedule (t_min = 0.064): with DDPM's linear one
# (t_min = 0.0063) the epsilon -> velocity conversion divides network errors by t down to
# 0.0063, and uniform flow-time grids spend their first step there (docs/diffusion.md).

TOY = "moons"


@pytest.fixture(scope="module")
def toy_ddpm():
    from fm_numpy.diffusion import TimestepModel, ddpm_loss
    from fm_numpy.models.mlp import MLP
    from fm_numpy.optim import Adam

    net = MLP(2, hidden=64, depth=3, time_features=32, seed=0, dtype=np.float32)
    model = TimestepModel(net)
    opt = Adam(net.params, lr=2e-3)
    rng = np.random.default_rng(0)
    for _ in range(1000):
        x1 = sample_toy(TOY, 256, rng, dtype=np.float32)
        x0 = rng.standard_normal(x1.shape).astype(np.float32)
        k = rng.integers(0, N, 256)
        _, d_out = ddpm_loss(model, x0, x1, k, SD)
        opt.step(net.backward(d_out))
    return net, model


@pytest.mark.slow
def test_flow_ode_of_a_trained_ddpm_matches_ddim_at_equal_nfe(toy_ddpm):
    from fm_numpy.metrics import energy_distance

    _, model = toy_ddpm
    nfe = 20
    x_T = np.random.default_rng(11).standard_normal((1000, 2)).astype(np.float32)
    data = sample_toy(TOY, 1000, 12)
    v = DiffusionToFlow(model, SD, "epsilon")
    x_start = (x_T / scale_from_flow_time(v.t_min)).astype(np.float32)
    ed_ddim = energy_distance(ddim_sample(model, x_T, SD, nfe), data)
    ed_rk4 = energy_distance(
        odeint(v, x_start, np.linspace(v.t_min, 1, nfe // 4 + 1), "rk4")[-1], data)
    ed_mid = energy_distance(
        odeint(v, x_start, np.linspace(v.t_min, 1, nfe // 2 + 1), "midpoint")[-1], data)
    ed_floor = energy_distance(sample_toy(TOY, 1000, 14), data)
    print(f"\nenergy distance at {nfe} NFE: DDIM {ed_ddim:.4f}, flow rk4 {ed_rk4:.4f}, "
          f"flow midpoint {ed_mid:.4f}; fresh data {ed_floor:.4f}")
    assert ed_ddim < 0.03  # the DDPM learned the data (N(0, I) noise itself scores 0.066)
    assert ed_rk4 <= ed_ddim + 0.01 and ed_mid <= ed_ddim + 0.01


@pytest.mark.slow
def test_flow_matching_fine_tune_of_a_ddpm_starts_low(toy_ddpm):
    from fm_numpy.diffusion import TimestepModel
    from fm_numpy.models.mlp import MLP
    from fm_numpy.optim import Adam
    from fm_numpy.paths import AffinePath

    net, model = toy_ddpm
    path = AffinePath()
    v = DiffusionToFlow(model, SD, "epsilon")

    def batch(seed, n):
        rng = np.random.default_rng(seed)
        x1 = sample_toy(TOY, n, rng, dtype=np.float32)
        x0 = rng.standard_normal(x1.shape).astype(np.float32)
        t = rng.uniform(v.t_min, v.t_max, n)  # flow times with a diffusion counterpart
        xt, ut = path.sample(x0, x1, t.astype(np.float32))
        return xt, ut, t

    xt, ut, t = batch(13, 4096)
    fm_loss = lambda field: float(np.mean((field(xt, t) - ut) ** 2))  # noqa: E731
    fresh = MLP(2, hidden=64, depth=3, time_features=32, seed=1, dtype=np.float32)
    loss_diff2flow = fm_loss(v)
    loss_scratch = fm_loss(lambda x, t: fresh(x, t))
    loss_scratch_wrapped = fm_loss(DiffusionToFlow(TimestepModel(fresh), SD, "epsilon"))
    print(f"\ninitial FM loss: DDPM wrapped {loss_diff2flow:.4f}, fresh velocity MLP "
          f"{loss_scratch:.4f}, fresh wrapped epsilon-MLP {loss_scratch_wrapped:.4f}")
    assert loss_diff2flow < 0.8 * loss_scratch and loss_diff2flow < 0.2 * loss_scratch_wrapped
    # a few Diff2Flow steps: the FM loss through the wrapper, backpropagated by hand
    opt = Adam(net.params, lr=5e-4)
    for step in range(100):
        xb, ub, tb = batch(100 + step, 256)
        dv = 2 * (v(xb, tb) - ub) / ub.size
        opt.step(v.backward(dv))
    loss_after = fm_loss(v)
    print(f"after 100 fine-tune steps: {loss_after:.4f}")
    assert loss_after < loss_diff2flow
