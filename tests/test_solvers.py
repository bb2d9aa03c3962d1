"""fm_numpy.solvers on ODEs with known solutions: convergence order, tolerance, NFE."""

import numpy as np
import pytest

from fm_numpy.solvers import FIXED_METHODS, NFE_PER_STEP, ClassifierFreeGuidance, odeint

ORDER = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}


def v_linear(x, t):
    """dx/dt = -(1 + t) x, solved by x(t) = x(0) exp(-(t + t^2/2))."""
    return -(1 + t) * x


def exact_linear(x0, t):
    return x0 * np.exp(-(t + 0.5 * t**2))


def v_rotation(x, t):
    """dx/dt = (2 pi t) J x with J a 90-degree rotation: a rotation by angle pi t^2."""
    return 2 * np.pi * t * np.stack([-x[:, 1], x[:, 0]], axis=1)


def exact_rotation(x0, t):
    a = np.pi * t**2
    c, s = np.cos(a), np.sin(a)
    return np.stack([c * x0[:, 0] - s * x0[:, 1], s * x0[:, 0] + c * x0[:, 1]], axis=1)


@pytest.mark.parametrize("method", list(FIXED_METHODS))
@pytest.mark.parametrize("field", ["linear", "rotation"])
def test_fixed_step_convergence_order(method, field):
    v, exact = {"linear": (v_linear, exact_linear), "rotation": (v_rotation, exact_rotation)}[field]
    x0 = np.random.default_rng(0).standard_normal((5, 2))
    errors = []
    steps = [16, 32, 64] if method != "rk4" else [8, 16, 32]
    for n in steps:
        xs = odeint(v, x0, np.linspace(0, 1, n + 1), method)
        errors.append(np.abs(xs[-1] - exact(x0, 1.0)).max())
    slopes = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    # The observed order approaches p as h -> 0; at these step sizes it is within 0.2.
    assert np.all(np.abs(slopes - ORDER[method]) < 0.2), (method, field, slopes)


@pytest.mark.parametrize("method", list(FIXED_METHODS))
def test_backward_in_time_inverts_forward(method):
    x0 = np.random.default_rng(1).standard_normal((4, 2))
    errors = []
    for n in [40, 80]:
        grid = np.linspace(0, 1, n + 1)
        x1 = odeint(v_rotation, x0, grid, method)[-1]
        x0_back = odeint(v_rotation, x1, grid[::-1], method)[-1]
        errors.append(np.abs(x0_back - x0).max())
    # Forward then backward returns to x0 up to O(h^p): halving h divides the gap by 2^p.
    assert errors[0] / errors[1] > 0.9 * 2 ** ORDER[method], errors
    assert errors[1] < {"euler": 0.3, "midpoint": 1e-3, "heun": 1e-3, "rk4": 1e-6}[method]


@pytest.mark.parametrize("method", list(FIXED_METHODS))
def test_trajectory_shape_and_nfe(method):
    x0 = np.zeros((3, 1, 4, 4), dtype=np.float32)
    grid = np.linspace(0, 1, 6)
    xs, nfe = odeint(lambda x, t: np.ones_like(x), x0, grid, method, return_nfe=True)
    assert xs.shape == (6, 3, 1, 4, 4) and xs.dtype == np.float32
    assert nfe == 5 * NFE_PER_STEP[method]
    np.testing.assert_allclose(xs[:, 0, 0, 0, 0], grid, atol=1e-6)  # x(t) = t exactly


def test_non_uniform_grid_reports_every_time():
    grid = np.array([0.0, 0.1, 0.15, 0.5, 0.9, 1.0])
    x0 = np.ones((2, 1))
    xs = odeint(v_linear, x0, grid, "rk4")
    # Steps of 0.4 leave an RK4 error of about 2e-3; small steps are ~1e-7 accurate.
    np.testing.assert_allclose(xs[:3, 0, 0], exact_linear(1.0, grid[:3]), rtol=1e-6)
    np.testing.assert_allclose(xs[:, 0, 0], exact_linear(1.0, grid), rtol=5e-3)


@pytest.mark.parametrize("method", ["RK45", "DOP853"])
@pytest.mark.parametrize("direction", [1, -1])
def test_adaptive_meets_tolerance(method, direction):
    x0 = np.random.default_rng(2).standard_normal((6, 2))
    grid = np.linspace(0, 1, 5)[::direction]
    start = exact_rotation(x0, grid[0])
    xs, nfe = odeint(v_rotation, start, grid, method, return_nfe=True, rtol=1e-8, atol=1e-10)
    err = np.abs(xs - np.stack([exact_rotation(x0, t) for t in grid])).max()
    assert err < 1e-6, err
    coarse, nfe_coarse = odeint(
        v_rotation, start, grid, method, return_nfe=True, rtol=1e-3, atol=1e-3
    )
    assert nfe_coarse < nfe  # a looser tolerance takes fewer evaluations
    assert np.abs(coarse - np.stack([exact_rotation(x0, t) for t in grid])).max() < 1e-2


def test_bad_arguments_are_named():
    x0 = np.zeros((2, 2))
    with pytest.raises(ValueError, match="unknown solver method 'rk5'"):
        odeint(v_linear, x0, [0, 1], "rk5")
    with pytest.raises(ValueError, match="at least 2 times"):
        odeint(v_linear, x0, [0.0], "euler")
    with pytest.raises(ValueError, match="strictly"):
        odeint(v_linear, x0, [0, 0.5, 0.2], "euler")
    with pytest.raises(ValueError, match="finite"):
        odeint(v_linear, x0, [0, np.nan], "euler")


def test_classifier_free_guidance_formula():
    rng = np.random.default_rng(3)
    W_cond, W_uncond = rng.standard_normal((2, 3, 3))

    def model(x, t, y):
        return x @ (W_uncond if y is None else W_cond) * (1 + t)

    x = rng.standard_normal((4, 3))
    v_cond, v_uncond = model(x, 0.3, 1), model(x, 0.3, None)
    for w in [0.0, 1.0, 2.5, -0.5]:
        v = ClassifierFreeGuidance(model, 1, w)(x, 0.3)
        np.testing.assert_allclose(v, v_uncond + w * (v_cond - v_uncond), rtol=1e-12, atol=1e-12)
