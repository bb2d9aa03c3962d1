"""fm_numpy.diffusion and fm_torch.diffusion agree (float64): schedules, time and scale
maps, both wrappers for every prediction type, the DDPM loss and DDIM."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fm_numpy.diffusion as nd
import fm_torch.diffusion as td
from fm_numpy.solvers import odeint as odeint_np
from fm_torch.solvers import odeint as odeint_torch

TOL = dict(rtol=1e-12, atol=1e-12)
SCHEDULES = {"ddpm": nd.alphas_cumprod(nd.linear_betas()),
             "sd": nd.alphas_cumprod(nd.scaled_linear_betas())}


def test_schedules_agree():
    np.testing.assert_allclose(td.linear_betas().numpy(), nd.linear_betas(), rtol=1e-15, atol=0)
    np.testing.assert_allclose(td.scaled_linear_betas().numpy(), nd.scaled_linear_betas(),
                               rtol=1e-14, atol=0)
    for betas in (nd.linear_betas(), nd.scaled_linear_betas()):
        np.testing.assert_allclose(td.alphas_cumprod(torch.from_numpy(betas)).numpy(),
                                   nd.alphas_cumprod(betas), **TOL)


@given(k=st.lists(st.floats(0, 999), min_size=1, max_size=8),
       u=st.lists(st.floats(0, 1), min_size=1, max_size=8),
       name=st.sampled_from(sorted(SCHEDULES)))
def test_time_and_scale_maps_agree(k, u, name):
    abar = SCHEDULES[name]
    abar_t = torch.from_numpy(abar)
    k = np.array(k)
    np.testing.assert_allclose(td.timestep_to_flow_time(torch.from_numpy(k), abar_t).numpy(),
                               nd.timestep_to_flow_time(k, abar), **TOL)
    np.testing.assert_allclose(td.alpha_bar_at(torch.from_numpy(k), abar_t).numpy(),
                               nd.alpha_bar_at(k, abar), **TOL)
    t = np.array(u)
    for clamp in (True,):
        np.testing.assert_allclose(
            td.flow_time_to_timestep(torch.from_numpy(t), abar_t, clamp=clamp).numpy(),
            nd.flow_time_to_timestep(t, abar, clamp=clamp), rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(td.scale_from_flow_time(torch.from_numpy(t)).numpy(),
                               nd.scale_from_flow_time(t), **TOL)
    np.testing.assert_allclose(td.alpha_bar_from_flow_time(torch.from_numpy(t)).numpy(),
                               nd.alpha_bar_from_flow_time(t), **TOL)


def test_out_of_range_errors_agree():
    abar = SCHEDULES["sd"]
    for mod, arr in ((nd, abar), (td, torch.from_numpy(abar))):
        with pytest.raises(ValueError, match="diffusion counterpart"):
            mod.flow_time_to_timestep(0.05, arr)
        with pytest.raises(ValueError, match="unknown prediction"):
            mod.DiffusionToFlow(None, arr, "sample")
        with pytest.raises(ValueError, match="strictly decreasing"):
            mod.flow_time_table(arr.flip(0) if mod is td else arr[::-1])


class LinearTanhNumpy:
    """A smooth test network out = tanh(x W + (k / 1000) c) + 0.1 x, with labels y shifting c."""

    def __init__(self, seed, dim):
        rng = np.random.default_rng(seed)
        self.W, self.c = rng.standard_normal((dim, dim)), rng.standard_normal(dim)

    def __call__(self, x, k, y=None):
        shift = 0.0 if y is None else np.asarray(y, dtype=np.float64)[:, None]
        return np.tanh(x @ self.W + (np.asarray(k)[:, None] / 1000) * (self.c + shift)) + 0.1 * x


class LinearTanhTorch:
    def __init__(self, net):
        self.W, self.c = torch.from_numpy(net.W), torch.from_numpy(net.c)

    def __call__(self, x, k, y=None):
        shift = 0.0 if y is None else torch.as_tensor(y, dtype=torch.float64)[:, None]
        k = k.to(torch.float64)[:, None]
        return torch.tanh(x @ self.W + (k / 1000) * (self.c + shift)) + 0.1 * x


@pytest.mark.parametrize("prediction", ["epsilon", "v", "x0"])
@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_wrappers_agree(prediction, name):
    abar = SCHEDULES[name]
    net = LinearTanhNumpy(0, 3)
    v_np = nd.DiffusionToFlow(net, abar, prediction)
    v_t = td.DiffusionToFlow(LinearTanhTorch(net), torch.from_numpy(abar), prediction)
    assert v_t.t_min == v_np.t_min and v_t.t_max == v_np.t_max
    np.testing.assert_allclose(v_t.time_grid(7).numpy(), v_np.time_grid(7), **TOL)
    x = np.random.default_rng(1).standard_normal((5, 3))
    y = np.array([0, 1, 2, 1, 0])
    for t in (0.07, 0.3, 0.5, 0.9, 0.97, np.array([0.1, 0.2, 0.6, 0.8, 0.95])):
        for labels in (None, y):
            np.testing.assert_allclose(
                v_t(torch.from_numpy(x), t, None if labels is None else torch.from_numpy(labels)
                    ).numpy(), v_np(x, t, labels), **TOL)
    k = np.array([0.0, 3.5, 500.0, 998.25, 999.0])
    f_np = nd.FlowToDiffusion(lambda x, t: np.tanh(x) * t[:, None], abar, prediction)
    f_t = td.FlowToDiffusion(lambda x, t: torch.tanh(x) * t[:, None], torch.from_numpy(abar),
                             prediction)
    np.testing.assert_allclose(f_t(torch.from_numpy(x), torch.from_numpy(k)).numpy(),
                               f_np(x, k), **TOL)


def test_ddpm_loss_ddim_and_flow_sampling_agree():
    abar = SCHEDULES["sd"]
    net = LinearTanhNumpy(2, 2)
    rng = np.random.default_rng(3)
    x0, x1 = rng.standard_normal((2, 16, 2))
    k = rng.integers(0, 1000, 16)
    loss_np, _ = nd.ddpm_loss(net, x0, x1, k, abar)
    loss_t = td.ddpm_loss(LinearTanhTorch(net), torch.from_numpy(x0), torch.from_numpy(x1),
                          torch.from_numpy(k), torch.from_numpy(abar))
    assert loss_t.item() == pytest.approx(loss_np, rel=1e-12)
    for prediction in ("epsilon", "v", "x0"):
        out_np = nd.ddim_sample(net, x0, abar, 10, prediction)
        out_t = td.ddim_sample(LinearTanhTorch(net), torch.from_numpy(x0),
                               torch.from_numpy(abar), 10, prediction)
        np.testing.assert_allclose(out_t.numpy(), out_np, rtol=1e-11, atol=1e-11)
    v_np = nd.DiffusionToFlow(net, abar)
    v_t = td.DiffusionToFlow(LinearTanhTorch(net), torch.from_numpy(abar))
    grid = v_np.time_grid(6)
    xs_np = odeint_np(v_np, x0, grid, "rk4")
    xs_t = odeint_torch(v_t, torch.from_numpy(x0), torch.from_numpy(grid), "rk4")
    np.testing.assert_allclose(xs_t.numpy(), xs_np, rtol=1e-11, atol=1e-11)


def test_wrapped_torch_mlp_equals_wrapped_numpy_mlp():
    from fm_numpy.models.mlp import MLP as MLPNumpy
    from fm_torch.models.mlp import MLP as MLPTorch

    abar = SCHEDULES["sd"]
    net_np = MLPNumpy(2, hidden=16, depth=2, time_features=8, seed=4, dtype=np.float64)
    net_t = MLPTorch(2, hidden=16, depth=2, time_features=8, seed=4, dtype=torch.float64)
    with torch.no_grad():  # same weights, whatever the two initialisers do
        for name, p in net_t.named_parameters():
            p.copy_(torch.from_numpy(net_np.params[name]))
    v_np = nd.DiffusionToFlow(nd.TimestepModel(net_np), abar, "v")
    v_t = td.DiffusionToFlow(td.TimestepModel(net_t), torch.from_numpy(abar), "v")
    x = np.random.default_rng(5).standard_normal((6, 2))
    with torch.no_grad():
        for t in (0.1, 0.5, 0.99):
            np.testing.assert_allclose(v_t(torch.from_numpy(x), t).numpy(), v_np(x, t),
                                       rtol=1e-10, atol=1e-12)
