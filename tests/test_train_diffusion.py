"""fm_torch.train_diffusion: the DDPM objective, the flow of a diffusion U-Net, Diff2Flow.

Independent references: the diffusion targets written out per prediction type, the
closed-form CondOT velocity of Gaussian data (fm_torch.analytic.GaussianMixtureField),
DDIM's own update (fm_torch.diffusion.ddim_sample) against Euler on the mapped grid,
and the weights of the checkpoint a fine-tune starts from.
"""

import math

import pytest
import torch

from fm_torch.analytic import GaussianMixtureField
from fm_torch.diffusion import (
    TimestepModel,
    alphas_cumprod,
    ddim_sample,
    ddpm_loss,
    flow_time_table,
    linear_betas,
    scale_from_flow_time,
    scaled_linear_betas,
)
from fm_torch.models.unet import UNet
from fm_torch.paths import AffinePath
from fm_torch.solvers import odeint
from fm_torch.train_diffusion import (
    DiffusionVelocity,
    check_diffusion_config,
    diffusion_loss,
    training_loss,
)

DDPM = alphas_cumprod(linear_betas())
SD = alphas_cumprod(scaled_linear_betas())
PREDICTIONS = ("epsilon", "v", "x0")


def tiny_unet(seed=0):
    """A float64 U-Net with every weight random (the zero-initialised output layers too)."""
    torch.manual_seed(seed)
    net = UNet(1, base=8, mults=(1, 2), res_blocks=1, time_features=16, num_classes=10).double()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.2)
    return net.eval()


def gaussian_oracle(abar, m, s, prediction):
    """The optimal predictor of N(m, s^2) data per coordinate at a fractional step k.

    Between table entries the noise level of step k is, by the convention of
    docs/diffusion.md, that of the flow time interpolated linearly in k:
    t(k) = t_i + (k - i)(t_{i+1} - t_i), t_i = a_i / (a_i + b_i), abar(k) = t^2 / (t^2 + (1-t)^2);
    at integer steps that is the table itself.
    """
    a_tab, b_tab = torch.sqrt(abar), torch.sqrt(1 - abar)
    t_tab = a_tab / (a_tab + b_tab)

    def model(x_dm, timestep, y=None):
        k = torch.as_tensor(timestep, dtype=torch.float64)
        i = torch.clamp(torch.floor(k).long(), 0, len(abar) - 2)
        t = t_tab[i] + (k - i) * (t_tab[i + 1] - t_tab[i])
        abar_k = t**2 / (t**2 + (1 - t) ** 2)
        a = torch.sqrt(abar_k).reshape(-1, *[1] * (x_dm.ndim - 1))
        b = torch.sqrt(1 - abar_k).reshape(-1, *[1] * (x_dm.ndim - 1))
        var = a**2 * s**2 + b**2
        eps = b * (x_dm - a * m) / var  # E[x0 | x_dm]
        data = m + a * s**2 * (x_dm - a * m) / var  # E[x1 | x_dm]
        return {"epsilon": eps, "x0": data, "v": a * eps - b * data}[prediction]
    return model


# ------------------------------------------------------------------- DDPM loss
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_diffusion_loss_is_zero_for_the_true_target(prediction):
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(6, 3, generator=g, dtype=torch.float64)
    x0 = torch.randn(6, 3, generator=g, dtype=torch.float64)
    k = torch.tensor([0, 1, 10, 500, 998, 999])
    a, b = torch.sqrt(DDPM[k])[:, None], torch.sqrt(1 - DDPM[k])[:, None]
    target = {"epsilon": x0, "x0": x1, "v": a * x0 - b * x1}[prediction]  # by hand

    def oracle(x_dm, timestep, y=None):
        torch.testing.assert_close(x_dm, a * x1 + b * x0)
        return target

    assert diffusion_loss(oracle, x0, x1, k, DDPM, prediction).item() == 0.0
    shifted = diffusion_loss(lambda *args: target + 0.5, x0, x1, k, DDPM, prediction)
    assert shifted.item() == pytest.approx(0.25, rel=1e-12)


def test_diffusion_loss_for_epsilon_is_ddpm_loss():
    g = torch.Generator().manual_seed(1)
    net = TimestepModel(lambda x, t, y: torch.tanh(x * (1 + t[:, None])))
    x1, x0 = torch.randn(8, 2, generator=g), torch.randn(8, 2, generator=g)
    k = torch.randint(0, 1000, (8,), generator=g)
    torch.testing.assert_close(diffusion_loss(net, x0, x1, k, SD, "epsilon"),
                               ddpm_loss(net, x0, x1, k, SD))


def test_ddpm_objective_draws_uniform_integer_steps_from_t():
    config = {"diffusion": check_diffusion_config({"prediction": "v", "schedule": "linear"})}
    seen = []

    def net(x, t, y):
        seen.append(t * 1000)  # TimestepModel hands the net k / N
        return torch.zeros_like(x)

    t = torch.tensor([0.0, 0.0004, 0.001, 0.5, 0.9999999])
    x1, x0 = torch.ones(5, 2), torch.zeros(5, 2)
    training_loss(config)(net, None, x1, None, x0, t)
    torch.testing.assert_close(seen[0], torch.tensor([0.0, 0.0, 1.0, 500.0, 999.0]))


def test_bad_diffusion_settings():
    for bad, message in [({"prediction": "score"}, "unknown prediction"),
                         ({"schedule": "cosine"}, "unknown diffusion schedule"),
                         ({"num_train_steps": 1}, "num_train_steps"),
                         ({"mode": "sde"}, "unknown diffusion mode"),
                         ({"beta": 1}, "unknown diffusion settings")]:
        with pytest.raises(ValueError, match=message):
            check_diffusion_config(bad)
    with pytest.raises(ValueError, match="CondOT"):
        check_diffusion_config({"mode": "diff2flow"}, scheduler="cosine")


# -------------------------------------------- the flow of a diffusion network
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("abar", [DDPM, SD], ids=["linear", "scaled_linear"])
def test_wrapped_gaussian_oracle_is_the_closed_form_velocity(prediction, abar):
    m, s = 0.3, 0.6
    field = GaussianMixtureField(torch.full((1, 4), m, dtype=torch.float64),
                                 torch.full((1, 4), s**2, dtype=torch.float64))
    v = DiffusionVelocity(lambda x, t, y: None, abar, prediction)  # network replaced below
    v.flow.model = gaussian_oracle(abar, m, s, prediction)
    table = flow_time_table(abar)
    lo, hi = (1, len(abar) - 2) if prediction == "x0" else (0, len(abar) - 1)
    at_table = table[[lo, 3, 250, 999 if hi == 999 else hi]]
    between = 0.5 * (table[[10, 400, 900]] + table[[11, 401, 901]])  # half-way in t
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for t in torch.cat([at_table, between]):
        torch.testing.assert_close(v(x, t), field(x, t), rtol=1e-9, atol=1e-9)


def test_time_map_edges_feed_the_network_a_step_in_range():
    # CompVis's map wraps to the last entry below t_min and patches NaN to 0; ours clamps
    # the step the network sees and converts with the exact a, b, s of t.
    seen = []

    def net(x, t, y=None):
        seen.append(t * 1000)
        return torch.zeros_like(x)

    v = DiffusionVelocity(net, DDPM, "v")
    x = torch.ones(1, 2, dtype=torch.float64)
    table = flow_time_table(DDPM)
    times = [0.0, 0.5 * table[-1], table[-1], table[500], 0.5 * (table[10] + table[11]),
             table[0], 1.0]
    outs = [v(x, t) for t in times]
    steps = [float(k) for k in torch.cat(seen)]
    assert steps[:4] == [999.0, 999.0, 999.0, 500.0]
    assert 10 < steps[4] < 11 and steps[5:] == [0.0, 0.0]
    # v-prediction, out = 0: v = s (a - b) x at every t, NaN nowhere
    for t, out in zip(times, outs, strict=True):
        tt = torch.as_tensor(t, dtype=torch.float64)
        r = torch.sqrt(tt**2 + (1 - tt) ** 2)
        torch.testing.assert_close(out, (tt - (1 - tt)) / r**2 * x, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="epsilon-prediction defines no velocity at t = 0"):
        DiffusionVelocity(net, DDPM, "epsilon")(x, 0.0)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_ddim_is_euler_on_the_mapped_grid_for_the_mnist_unet(prediction):
    net = tiny_unet()
    v = DiffusionVelocity(net, DDPM, prediction)
    g = torch.Generator().manual_seed(3)
    x_T = torch.randn(3, 1, 28, 28, generator=g, dtype=torch.float64)
    y = torch.tensor([1, 4, 7])
    for num_steps in (1, 4):
        grid = v.flow.time_grid(num_steps)
        xs = odeint(lambda x, t: v(x, t, y), x_T / scale_from_flow_time(v.t_min), grid, "euler")
        ddim = ddim_sample(v.timestep_model, x_T, DDPM, num_steps, prediction, y)
        # x0-prediction's last step divides by b = sqrt(1 - abar_0) = 0.01: rounding grows
        tol = 1e-7 if prediction == "x0" else 1e-10
        torch.testing.assert_close(xs[-1], ddim, rtol=tol, atol=tol)


def test_flow_sample_starts_at_t_min_from_the_ddim_start():
    net = tiny_unet(1)
    v = DiffusionVelocity(net, SD, "epsilon")
    x_T = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(4),
                      dtype=torch.float64)
    xs, nfe = v.flow_sample(x_T, None, 1.0, "euler", 3, return_nfe=True)
    assert nfe == 3 and xs.shape == (4, 2, 1, 28, 28)
    # x = x_T / s(t_min) with 1 / s = t / a
    torch.testing.assert_close(xs[0], x_T * flow_time_table(SD)[-1] / math.sqrt(SD[-1]))
    grid = torch.linspace(v.t_min, 1, 4, dtype=torch.float64)
    torch.testing.assert_close(xs, odeint(lambda x, t: v(x, t), xs[0], grid, "euler"))


def test_diff2flow_loss_is_flow_matching_of_the_wrapped_network():
    net = tiny_unet(2)
    config = {"diffusion": check_diffusion_config(
        {"mode": "diff2flow", "prediction": "epsilon", "schedule": "scaled_linear"})}
    g = torch.Generator().manual_seed(5)
    x1 = torch.randn(4, 1, 28, 28, generator=g, dtype=torch.float64)
    x0 = torch.randn(4, 1, 28, 28, generator=g, dtype=torch.float64)
    t = torch.tensor([0.0, 0.3, 0.6, 0.99], dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 10])
    loss = training_loss(config)(net, AffinePath(), x1, y, x0, t)
    v = DiffusionVelocity(net, SD, "epsilon")
    t_fm = v.t_min + (1 - v.t_min) * t  # epsilon: t ~ U(t_min, 1), no t = 0
    xt = t_fm.reshape(-1, 1, 1, 1) * x1 + (1 - t_fm.reshape(-1, 1, 1, 1)) * x0
    expected = torch.mean((v(xt, t_fm, y) - (x1 - x0)) ** 2)
    torch.testing.assert_close(loss, expected)
    loss.backward()  # autograd reaches the U-Net through the affine wrapper
    assert net.conv_in.weight.grad is not None and net.conv_in.weight.grad.abs().sum() > 0


def test_ddim_return_all_gives_every_state_in_both_packages():
    import numpy as np

    from fm_numpy.diffusion import ddim_sample as ddim_numpy

    W = np.random.default_rng(6).standard_normal((2, 2))

    def net_numpy(x, k, y=None):
        return np.tanh(x @ W + np.asarray(k)[:, None] / 300)

    def net_torch(x, k, y=None):
        return torch.tanh(x @ torch.from_numpy(W) + k[:, None] / 300)

    x_T = np.random.default_rng(7).standard_normal((5, 2))
    states = ddim_numpy(net_numpy, x_T, DDPM.numpy(), 4, "v", return_all=True)
    assert states.shape == (5, 5, 2)
    np.testing.assert_array_equal(states[0], x_T)
    np.testing.assert_array_equal(states[-1], ddim_numpy(net_numpy, x_T, DDPM.numpy(), 4, "v"))
    # Every state is one DDIM step (eta = 0, v-prediction, Song et al. 2021; Salimans & Ho
    # 2022 for v) from the one before, written out here: x1_hat = sqrt(abar) x - sqrt(1-abar)
    # v, eps_hat = sqrt(1-abar) x + sqrt(abar) v, x_next = sqrt(abar') x1_hat +
    # sqrt(1-abar') eps_hat, on the sub-grid 999, 666, 333, 0 and abar' = 1 after step 0.
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))  # Ho et al.'s linear betas
    grid = [999, 666, 333, 0]
    for k, step in enumerate(grid):
        a, b = np.sqrt(abar[step]), np.sqrt(1 - abar[step])
        a_next = np.sqrt(abar[grid[k + 1]]) if k + 1 < len(grid) else 1.0
        b_next = np.sqrt(1 - a_next**2)
        v = net_numpy(states[k], np.full(5, float(step)))  # (B, 2)
        x1_hat, eps_hat = a * states[k] - b * v, b * states[k] + a * v
        np.testing.assert_allclose(states[k + 1], a_next * x1_hat + b_next * eps_hat,
                                   rtol=1e-12, atol=1e-12, err_msg=f"state {k + 1}")
    states_torch = ddim_sample(net_torch, torch.from_numpy(x_T), DDPM, 4, "v", return_all=True)
    np.testing.assert_allclose(states_torch.numpy(), states, rtol=1e-10, atol=1e-10)
