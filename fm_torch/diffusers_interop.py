"""diffusers models as our flows, and our flows in diffusers' flow-matching convention.

Optional: `pip install "fm-dual[diffusers]"`; diffusers is imported only by the
functions that need its classes, never by `import fm_torch`.

1. A diffusion UNet (`UNet2DModel`, or `UNet2DConditionModel` with its extra inputs
   such as encoder_hidden_states) and a `DDPMScheduler` / `DDIMScheduler`:
   `DiffusionToFlow.from_diffusers(unet, scheduler, **unet_kwargs)` reads the
   scheduler's `alphas_cumprod` and `config.prediction_type` (epsilon, v_prediction,
   sample -> our epsilon, v, x0) and calls the UNet at the fractional step k(t) as a
   float tensor of shape (B,): a Python float would be cast to long, truncating k.
2. `FlowMatchEulerDiscreteScheduler` (SD3, Flux): x = (1 - sigma) x_data + sigma noise,
   timestep = N sigma (N = num_train_timesteps, 1000), and the network predicts
   noise - data. In ours t = 1 - sigma, so x is our CondOT point and the output is -v:

       v(x, t) = -model(x, N (1 - t)),      model(x, timestep) = -v(x, 1 - timestep / N).

   `to_flow_match(v)` gives a model that diffusers' scheduler can sample;
   `from_flow_match(model)` gives a velocity field that our solvers can integrate.
"""

import torch

# the scheduler table and the UNet wrapper need no diffusers import: they live beside
# DiffusionToFlow (whose from_diffusers uses them) and are re-exported here
from fm_torch.diffusion import (
    DIFFUSERS_PREDICTIONS,
    DiffusersModel,
    DiffusionToFlow,
    _scheduler_table,  # noqa: F401  (the older private name of this module)
)

__all__ = [
    "DIFFUSERS_PREDICTIONS",
    "DiffusersModel",
    "from_diffusers",
    "to_flow_match",
    "from_flow_match",
    "flow_times_from_sigmas",
]

def from_diffusers(unet, scheduler, **unet_kwargs):
    """DiffusionToFlow of a diffusers UNet and its DDPM/DDIM scheduler (see the module doc)."""
    return DiffusionToFlow.from_diffusers(unet, scheduler, **unet_kwargs)


class to_flow_match:  # noqa: N801  (used like a function)
    """Our velocity v(x, t[, y]) as a diffusers flow-matching model(sample, timestep).

    model(x, timestep) = -v(x, 1 - timestep / N), timestep a scalar or (B,) in [0, N].
    """

    def __init__(self, v, num_train_timesteps=1000):
        self.v = v
        self.num_train_timesteps = float(num_train_timesteps)

    def __call__(self, sample, timestep, y=None):
        timestep = torch.as_tensor(timestep, dtype=torch.float64).cpu()
        t = 1 - timestep / self.num_train_timesteps
        t = t.to(sample.dtype).to(sample.device)
        v = self.v(sample, t) if y is None else self.v(sample, t, y)
        return -v


class from_flow_match:  # noqa: N801  (used like a function)
    """A diffusers flow-matching model(sample, timestep, **kwargs) as our v(x, t, y=None).

    v(x, t) = -model(x, N (1 - t)), the timestep a float tensor (B,). model may return
    a tensor or a diffusers output (its .sample).
    """

    def __init__(self, model, num_train_timesteps=1000, **model_kwargs):
        self.model = model
        self.num_train_timesteps = float(num_train_timesteps)
        self.model_kwargs = model_kwargs

    def __call__(self, x, t, y=None):
        t = torch.as_tensor(t, dtype=torch.float64)
        timestep = (self.num_train_timesteps * (1 - t)).to(x.dtype).to(x.device)
        timestep = timestep.expand(x.shape[0])  # (B,)
        kwargs = dict(self.model_kwargs)
        if y is not None:
            kwargs["class_labels"] = y
        out = self.model(x, timestep, **kwargs)
        return -(out.sample if hasattr(out, "sample") else out)


def flow_times_from_sigmas(sigmas):
    """t = 1 - sigma: a FlowMatchEulerDiscreteScheduler's sigmas as our time grid (float64)."""
    return 1 - torch.as_tensor(sigmas).to(torch.float64).cpu()
