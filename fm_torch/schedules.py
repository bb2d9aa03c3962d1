"""Learning-rate schedules and time-sampling distributions (PyTorch), as fm_numpy/schedules.py.

The learning rate eta_n of update n is fm_numpy.schedules.LRSchedule itself (plain Python
floats, so both packages take the very same rates); `set_lr` writes it into every
param_group of a torch optimizer before its step (no torch.optim.lr_scheduler, whose
closed forms round differently). Time sampling draws with a torch.Generator:
    uniform        t = U, U ~ U[0, 1)      (torch.rand: the stream older runs drew)
    logit-normal   t = 1 / (1 + exp(-(m + s z))), z ~ N(0, 1)
    fixed          t = c (distillation: c = 0), after the base sampler's draw (the stream of
                   older runs, which drew t and then zeroed it)
The loop's samplers (Uniform, LogitNormal, Fixed; fm_numpy.schedules' names) take a Draws
object (fm_torch/draws.py): `times.sample(draws, B, dtype) -> t (B,)`, draw names "t" and
"t_z". TimeSampler keeps the older `sample(B, generator, dtype)`.

Recipe(lr_at, times, ema_decay, weight_decay, max_grad_norm, label_dropout) bundles what the
loop (fm_torch/loop.py) needs of a recipe besides the network, data and objective.
"""

import torch

from fm_numpy.schedules import LR_SCHEDULES, TIME_SAMPLINGS, LRSchedule
from fm_numpy.schedules import Recipe as _NumpyRecipe
from fm_numpy.schedules import TimeSampler as _NumpyTimeSampler

__all__ = ["LR_SCHEDULES", "TIME_SAMPLINGS", "LRSchedule", "TimeSampler", "logit_normal",
           "set_lr", "Uniform", "LogitNormal", "Fixed", "Recipe", "make_times"]


def set_lr(optimizer, lr):
    """Use learning rate `lr` for the optimizer's next step (every param_group)."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def logit_normal(z, mean=0.0, std=1.0):
    """t = 1 / (1 + exp(-(mean + std z))), elementwise, in fm_numpy's order of operations."""
    return 1.0 / (1.0 + torch.exp(-(mean + std * z)))


class TimeSampler(_NumpyTimeSampler):
    """t ~ the named distribution on [0, 1]; `sample(B, generator, dtype)` -> (B,), drawn on
    the generator's device (the training loop keeps its generator on the training device)."""

    def sample(self, B, generator=None, dtype=torch.float32):
        device = None if generator is None else generator.device
        if self.name == "uniform":
            return torch.rand(B, generator=generator, dtype=dtype, device=device)  # (B,)
        z = torch.randn(B, generator=generator, dtype=dtype, device=device)  # (B,)
        return logit_normal(z, self.mean, self.std)  # (B,)


class Uniform:
    """t ~ U[0, 1): draws.uniform("t", (B,), dtype) (torch.rand: the stream of older runs)."""

    name = "uniform"

    def sample(self, draws, B, dtype=torch.float32):
        return draws.uniform("t", (B,), dtype)  # (B,)


class LogitNormal:
    """t = 1 / (1 + exp(-(mean + std z))), z = draws.normal("t_z", (B,), dtype)."""

    name = "logit-normal"

    def __init__(self, mean=0.0, std=1.0):
        _NumpyTimeSampler("logit-normal", mean, std)  # the same checks
        self.mean, self.std = float(mean), float(std)

    def sample(self, draws, B, dtype=torch.float32):
        z = draws.normal("t_z", (B,), dtype)  # (B,)
        return logit_normal(z, self.mean, self.std)  # (B,)


class Fixed:
    """t = value for every sample. With `base`, base's draw is made first and discarded, so
    the random stream is that of a run that sampled t and then fixed it (distill runs)."""

    name = "fixed"

    def __init__(self, value=0.0, base=None):
        self.value, self.base = float(value), base

    def sample(self, draws, B, dtype=torch.float32):
        if self.base is None:
            return torch.full((B,), self.value, dtype=dtype, device=getattr(draws, "device", None))
        t = self.base.sample(draws, B, dtype)  # keeps the stream; the values are unused
        return torch.full_like(t, self.value)  # (B,)


class Recipe(_NumpyRecipe):
    """fm_numpy.schedules.Recipe (plain numbers) with fm_torch's Uniform() as default times."""

    def __init__(self, lr_at, times=None, ema_decay=0.0, weight_decay=0.0, max_grad_norm=None,
                 label_dropout=0.0):
        super().__init__(lr_at, Uniform() if times is None else times, ema_decay,
                         weight_decay, max_grad_norm, label_dropout)


def make_times(config):
    """The loop's time sampler of a training config (Fixed(0) over it when distilling)."""
    if config["time_sampling"] == "uniform":
        times = Uniform()
    else:
        times = LogitNormal(config["time_mean"], config["time_std"])
    return Fixed(0.0, base=times) if config.get("distill") else times
