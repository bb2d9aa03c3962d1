"""fm_torch.solvers: the adaptive method meets its tolerance; dtype, shape and NFE."""

import math

import pytest
import torch

from fm_torch.solvers import FIXED_METHODS, NFE_PER_STEP, odeint


def v_rotation(x, t):
    """dx/dt = (2 pi t) J x: a rotation by angle pi t^2."""
    return 2 * math.pi * t * torch.stack([-x[:, 1], x[:, 0]], dim=1)


def exact_rotation(x0, t):
    a = math.pi * t**2
    c, s = math.cos(a), math.sin(a)
    return torch.stack([c * x0[:, 0] - s * x0[:, 1], s * x0[:, 0] + c * x0[:, 1]], dim=1)


@pytest.mark.parametrize("direction", [1, -1])
def test_dopri5_meets_tolerance(direction):
    x0 = torch.randn(6, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grid = torch.linspace(0, 1, 5, dtype=torch.float64).tolist()[::direction]
    start = exact_rotation(x0, grid[0])
    xs, nfe = odeint(v_rotation, start, grid, "dopri5", return_nfe=True, rtol=1e-8, atol=1e-10)
    truth = torch.stack([exact_rotation(x0, t) for t in grid])
    assert (xs - truth).abs().max().item() < 1e-6
    coarse, nfe_coarse = odeint(
        v_rotation, start, grid, "dopri5", return_nfe=True, rtol=1e-3, atol=1e-3
    )
    assert nfe_coarse < nfe
    assert (coarse - truth).abs().max().item() < 1e-2


@pytest.mark.parametrize("method", list(FIXED_METHODS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fixed_shape_dtype_nfe(method, dtype):
    x0 = torch.zeros(3, 1, 4, 4, dtype=dtype)
    grid = [0.0, 0.2, 0.4, 1.0]
    xs, nfe = odeint(lambda x, t: torch.ones_like(x), x0, grid, method, return_nfe=True)
    assert xs.shape == (4, 3, 1, 4, 4) and xs.dtype == dtype
    assert nfe == 3 * NFE_PER_STEP[method]
    torch.testing.assert_close(xs[:, 1, 0, 2, 2], torch.tensor([0.0, 0.2, 0.4, 1.0], dtype=dtype))


def test_bad_method_is_named():
    with pytest.raises(ValueError, match="unknown solver method 'RK45'"):
        odeint(v_rotation, torch.zeros(2, 2), [0.0, 1.0], "RK45")


@pytest.mark.parametrize("grid", [[0.0, 0.5, 1.0], [1.0, 0.3, 0.0]])
def test_dopri5_never_leaves_the_time_interval(grid):
    """A field that refuses t outside [0, 1] (as the models do) still integrates accurately.

    torchdiffeq overshoots the last time unless made to step onto the grid; clamping alone
    would hide that but evaluate the last stages at the wrong time, which the accuracy
    check below catches.
    """
    seen = []

    def v(x, t):
        seen.append(float(t))
        return v_rotation(x, t)

    x0 = torch.randn(4, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    start = exact_rotation(x0, grid[0])
    xs = odeint(v, start, grid, "dopri5", rtol=1e-8, atol=1e-10)
    assert min(seen) >= 0.0 and max(seen) <= 1.0, (min(seen), max(seen))
    assert (xs[-1] - exact_rotation(x0, grid[-1])).abs().max().item() < 1e-6
