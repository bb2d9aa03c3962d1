"""Straightness S (Liu et al.) against closed forms and between its two estimates."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.integrate import quad

from fm_numpy.straightness import straightness, straightness_of_path


def _linear_field(a):
    return lambda x, t: a * x


def _s_linear(a):
    """v = a x: x_t = x0 e^{a t}, so S / |x0|^2 = int_0^1 (e^a - 1 - a e^{a t})^2 dt."""
    c = np.expm1(a)
    return -(c**2) + a * np.expm1(2 * a) / 2


def test_constant_field_is_straight():
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((16, 3))
    t_grid = np.linspace(0, 1, 6)
    out = straightness(lambda x, t: np.ones_like(x) * [1.0, -2.0, 0.5], x0, t_grid, "euler")
    assert out["straightness"] == pytest.approx(0.0, abs=1e-20)
    assert out["nfe"] == 5 and out["nfe_measure"] == 6


@pytest.mark.parametrize("a", [-1.0, 0.5, 1.3])
def test_linear_field_closed_form(a):
    rng = np.random.default_rng(1)
    x0 = rng.standard_normal((8, 2))
    t_grid = np.linspace(0, 1, 401)
    out = straightness(_linear_field(a), x0, t_grid, "rk4")
    expected = _s_linear(a) * np.sum(x0**2, axis=1)  # (B,)
    np.testing.assert_allclose(out["per_sample"], expected, rtol=1e-4)  # trapezoid O(h^2)
    assert out["nfe"] == 4 * 400
    # the model-free path estimate converges to the same value
    xs = np.stack([x0 * np.exp(a * t) for t in t_grid])
    assert straightness_of_path(xs, t_grid) == pytest.approx(np.mean(expected), rel=1e-3)


def test_gaussian_oracle_closed_form():
    """Data N(m, s^2) per coordinate, CondOT: x_t = t m + sigma_t x0, sigma_t^2 = t^2 s^2 +
    (1-t)^2, so S = E|x0|^2 int (s - 1 - d sigma_t)^2 dt, checked by scipy quad."""
    m, s = 0.7, 0.3

    def v(x, t):  # REFERENCES.md closed form
        return m + (t * s**2 - (1 - t)) / (t**2 * s**2 + (1 - t) ** 2) * (x - t * m)

    def d_sigma(t):
        return (t * s**2 - (1 - t)) / np.sqrt(t**2 * s**2 + (1 - t) ** 2)

    per_unit, _ = quad(lambda t: (s - 1 - d_sigma(t)) ** 2, 0, 1)
    rng = np.random.default_rng(2)
    x0 = rng.standard_normal((32, 2))
    out = straightness(v, x0, np.linspace(0, 1, 1001), "DOP853", rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(out["per_sample"], per_unit * np.sum(x0**2, axis=1), rtol=1e-4)
    assert out["nfe"] > 0


def test_euler_path_estimate_equals_left_riemann_sum():
    rng = np.random.default_rng(3)
    x0 = rng.standard_normal((5, 2))
    t_grid = np.array([0.0, 0.1, 0.35, 0.7, 1.0])
    from fm_numpy.solvers import odeint

    v = _linear_field(0.8)
    xs = odeint(v, x0, t_grid, "euler")
    chord = xs[-1] - xs[0]
    left = sum(
        (t_grid[n + 1] - t_grid[n]) * np.sum((chord - v(xs[n], t_grid[n])) ** 2, axis=1)
        for n in range(len(t_grid) - 1)
    )
    assert straightness_of_path(xs, t_grid) == pytest.approx(np.mean(left), rel=1e-12)


@given(st.integers(0, 10_000), st.floats(-5, 5))
def test_path_estimate_nonnegative_and_translation_invariant(seed, shift):
    rng = np.random.default_rng(seed)
    xs = rng.standard_normal((7, 4, 3))
    t_grid = np.sort(rng.uniform(0, 1, 7)) + np.arange(7)  # strictly increasing
    s = straightness_of_path(xs, t_grid)
    assert s >= 0
    assert straightness_of_path(xs + shift, t_grid) == pytest.approx(s, rel=1e-9, abs=1e-12)


def test_bad_input_is_a_value_error():
    with pytest.raises(ValueError, match="xs must have shape"):
        straightness_of_path(np.zeros((3, 2, 2)), np.linspace(0, 1, 4))
    with pytest.raises(ValueError, match="non-finite"):
        straightness_of_path(np.full((2, 2, 2), np.nan), np.linspace(0, 1, 2))


def test_noise_floor_matches_closed_form():
    """|mean(a) - mean(b)|^2 for two draws of n standard normal points in D dimensions has
    expectation 2 D / n and standard deviation 2 sqrt(2 D) / n (a scaled chi-square)."""
    from fm_numpy.metrics import noise_floor

    n, D, repeats = 50, 3, 2000
    mean, std = noise_floor(lambda a, b: float(np.sum((a.mean(0) - b.mean(0)) ** 2)),
                            lambda n, rng: rng.standard_normal((n, D)), n, repeats, rng=0)
    assert mean == pytest.approx(2 * D / n, rel=0.05)
    assert std == pytest.approx(2 * np.sqrt(2 * D) / n, rel=0.1)


def test_noise_floor_of_energy_distance_and_bad_input():
    from fm_numpy.data import sample_toy
    from fm_numpy.metrics import energy_distance, noise_floor

    def moons(n, rng):
        return sample_toy("moons", n, rng)

    mean, std = noise_floor(energy_distance, moons, 400, repeats=3, rng=1)
    assert 0 < mean < 0.05 and std >= 0
    shifted = energy_distance(moons(400, 2), moons(400, 3) + 0.5)
    assert shifted > mean + 10 * std  # a visible error stands well above the floor
    with pytest.raises(ValueError, match="n >= 2"):
        noise_floor(energy_distance, moons, 1)
