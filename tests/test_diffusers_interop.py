"""fm_torch.diffusers_interop: diffusers UNets and schedulers as our flows, and back.

Offline (HF_HUB_OFFLINE=1): a tiny UNet2DModel / UNet2DConditionModel built from a
config dict, no weights downloaded. Independent references: the closed-form CondOT
velocity of Gaussian data (fm_torch.analytic.GaussianMixtureField), the UNet called by
hand, and diffusers' own FlowMatchEulerDiscreteScheduler stepping a model.
"""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
diffusers = pytest.importorskip("diffusers")

from fm_torch.analytic import GaussianMixtureField  # noqa: E402
from fm_torch.diffusers_interop import (  # noqa: E402
    from_flow_match,
    to_flow_match,
)
from fm_torch.diffusion import (  # noqa: E402
    DiffusionToFlow,
    flow_time_table,
    flow_time_to_timestep,
    signal_noise_from_flow_time,
)
from fm_torch.solvers import odeint  # noqa: E402

KINDS = {"epsilon": "epsilon", "v_prediction": "v", "sample": "x0"}


def tiny_unet2d(num_class_embeds=None):
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
        block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
        num_class_embeds=num_class_embeds)
    return unet.double().eval()


def gaussian_field(m, s, d):
    return GaussianMixtureField(torch.full((1, d), m, dtype=torch.float64),
                                torch.full((1, d), s**2, dtype=torch.float64))


class ClosedFormUNet(torch.nn.Module):
    """The optimal predictor of N(m, s^2) pixels with UNet2DModel's call signature.

    abar at a fractional step comes from the flow time interpolated linearly in the
    step (docs/diffusion.md's convention); at integer steps it is the scheduler's table.
    """

    def __init__(self, abar, m, s, kind):
        super().__init__()
        self.abar, self.m, self.s, self.kind = abar, m, s, kind
        self.seen = []

    def forward(self, sample, timestep, class_labels=None, return_dict=True):
        self.seen.append(timestep)
        abar = self.abar.to(torch.float64)
        a_tab, b_tab = abar.sqrt(), (1 - abar).sqrt()
        t_tab = a_tab / (a_tab + b_tab)
        k = timestep.to(torch.float64)
        i = torch.clamp(torch.floor(k).long(), 0, len(abar) - 2)
        t = t_tab[i] + (k - i) * (t_tab[i + 1] - t_tab[i])
        abar_k = (t**2 / (t**2 + (1 - t) ** 2)).reshape(-1, 1, 1, 1)
        a, b = abar_k.sqrt(), (1 - abar_k).sqrt()
        var = a**2 * self.s**2 + b**2
        eps = b * (sample - a * self.m) / var
        data = self.m + a * self.s**2 * (sample - a * self.m) / var
        out = {"epsilon": eps, "sample": data, "v_prediction": a * eps - b * data}[self.kind]
        from diffusers.models.unets.unet_2d import UNet2DOutput

        return UNet2DOutput(sample=out)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("scheduler_class", ["DDPMScheduler", "DDIMScheduler"])
def test_closed_form_predictor_gives_the_closed_form_velocity(kind, scheduler_class):
    scheduler = getattr(diffusers, scheduler_class)(
        num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
        beta_end=0.012, prediction_type=kind)
    m, s = 0.2, 0.7
    unet = ClosedFormUNet(scheduler.alphas_cumprod, m, s, kind)
    v = DiffusionToFlow.from_diffusers(unet, scheduler)
    assert v.prediction == KINDS[kind]
    field = gaussian_field(m, s, 4)
    table = flow_time_table(scheduler.alphas_cumprod)
    times = torch.cat([table[[1, 10, 500, 998]], 0.5 * (table[[20, 600]] + table[[21, 601]])])
    x = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for t in times:
        torch.testing.assert_close(v(x, t), field(x, t), rtol=1e-7, atol=1e-7)
    # the fractional steps reached the UNet as floats, one per sample
    assert all(k.is_floating_point() and k.shape == (3,) for k in unet.seen)
    assert 20 < float(unet.seen[-2][0]) < 21 and 600 < float(unet.seen[-1][0]) < 601


def test_tiny_unet2d_is_called_at_the_fractional_step_with_the_scaled_input():
    unet = tiny_unet2d(num_class_embeds=10)
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, prediction_type="epsilon")
    v = DiffusionToFlow.from_diffusers(unet, scheduler)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 1, 8, 8, generator=g, dtype=torch.float64)
    y = torch.tensor([3, 5])
    t = torch.tensor(0.37, dtype=torch.float64)
    # by hand: k(t) fractional, x_dm = (a + b) x, v = (x_dm - b eps) / a - eps
    k = flow_time_to_timestep(t, scheduler.alphas_cumprod)
    a, b = signal_noise_from_flow_time(t)
    with torch.no_grad():
        eps = unet(x * (a + b), torch.full((2,), float(k), dtype=torch.float64),
                   class_labels=y).sample
        truncated = unet(x * (a + b), int(k), class_labels=y).sample  # what a float would do
        out = v(x, t, y)
    torch.testing.assert_close(out, (x * (a + b) - b * eps) / a - eps, rtol=1e-10, atol=1e-10)
    assert not torch.allclose(eps, truncated)  # the fraction matters


def test_unet2d_condition_model_with_its_extra_inputs():
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
        block_out_channels=(8, 16), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=8,
        norm_num_groups=4, attention_head_dim=2).double().eval()
    scheduler = diffusers.DDIMScheduler(num_train_timesteps=1000, prediction_type="v_prediction")
    text = torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    v = DiffusionToFlow.from_diffusers(unet, scheduler, encoder_hidden_states=text)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    t = torch.tensor([0.2, 0.8], dtype=torch.float64)
    k = flow_time_to_timestep(t, scheduler.alphas_cumprod)
    a, b = (c.reshape(2, 1, 1, 1) for c in signal_noise_from_flow_time(t))
    with torch.no_grad():
        out = unet(x * (a + b), k, encoder_hidden_states=text).sample
        torch.testing.assert_close(v(x, t), (a + b) * ((a - b) * x - out), rtol=1e-10,
                                   atol=1e-10)  # v-prediction: v = s ((a - b) x - out)


def test_bad_scheduler_and_prediction_type():
    unet = tiny_unet2d()
    with pytest.raises(ValueError, match="no alphas_cumprod"):
        DiffusionToFlow.from_diffusers(unet, diffusers.FlowMatchEulerDiscreteScheduler())
    scheduler = diffusers.DDPMScheduler()
    scheduler.config.prediction_type = "flow"  # a config nobody should write, read as given
    with pytest.raises(ValueError, match="unknown prediction_type 'flow'"):
        DiffusionToFlow.from_diffusers(unet, scheduler)


def _diffusers_flow_match_loop(model, x, num_steps):
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    scheduler.set_timesteps(num_steps)
    for timestep in scheduler.timesteps:
        x = scheduler.step(model(x, timestep), timestep, x).prev_sample
    return x, scheduler.sigmas


def test_our_velocity_sampled_by_diffusers_flow_match_scheduler():
    # a model "trained here" (the closed-form Gaussian field) sampled there: diffusers'
    # Euler on its sigmas is our Euler on t = 1 - sigma
    field = gaussian_field(0.5, 0.3, 4)

    def v(x, t):
        return field(x.reshape(len(x), 4), t).reshape(x.shape).to(x.dtype)

    x0 = torch.randn(64, 1, 2, 2, generator=torch.Generator().manual_seed(4))
    x_there, sigmas = _diffusers_flow_match_loop(to_flow_match(v), x0, 50)
    t_grid = 1 - sigmas.to(torch.float64)
    assert float(t_grid[0]) == 0.0 and float(t_grid[-1]) == 1.0
    x_here = odeint(v, x0, t_grid, "euler")[-1]
    torch.testing.assert_close(x_there, x_here, rtol=1e-5, atol=1e-5)  # diffusers steps in f32
    # and both reach the data distribution N(0.5, 0.3^2)
    assert abs(float(x_there.mean()) - 0.5) < 0.02 and abs(float(x_there.std()) - 0.3) < 0.03


def test_diffusers_flow_match_model_sampled_by_our_solvers():
    # a model in diffusers' convention (predicts noise - data at timestep 1000 sigma),
    # written from the closed form in sigma: x = (1 - sigma) data + sigma noise
    m, s = -0.4, 0.5
    field = gaussian_field(m, s, 4)

    def flow_match_model(sample, timestep, **kwargs):
        sigma = (timestep.to(torch.float64) / 1000).reshape(-1, 1)  # (B, 1)
        xf = sample.reshape(len(sample), 4)
        # u in sigma: d x / d sigma = noise - data; with t = 1 - sigma this is -u_t(x)
        t = 1 - sigma
        u = m + (t * s**2 - (1 - t)) / (t**2 * s**2 + (1 - t) ** 2) * (xf - t * m)
        return (-u).reshape(sample.shape).to(sample.dtype)

    v = from_flow_match(flow_match_model)
    x = torch.randn(5, 1, 2, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    for t in (0.0, 0.3, 0.999):
        torch.testing.assert_close(v(x, t), field(x, t), rtol=1e-12, atol=1e-12)
    x0 = torch.randn(16, 1, 2, 2, generator=torch.Generator().manual_seed(6))
    x_there, sigmas = _diffusers_flow_match_loop(flow_match_model, x0, 20)
    x_here = odeint(v, x0, 1 - sigmas.to(torch.float64), "euler")[-1]
    torch.testing.assert_close(x_here, x_there, rtol=1e-5, atol=1e-5)


def test_round_trip_of_the_two_conventions():
    field = gaussian_field(0.1, 0.9, 4)

    def v(x, t):
        return field(x.reshape(len(x), 4), t).reshape(x.shape)

    back = from_flow_match(to_flow_match(v))
    x = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    for t in (0.0, 0.25, 1.0):
        torch.testing.assert_close(back(x, t), v(x, t), rtol=1e-12, atol=1e-12)
