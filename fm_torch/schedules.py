"""Learning-rate schedules and time-sampling distributions (PyTorch), as fm_numpy/schedules.py.

The learning rate eta_n of update n is fm_numpy.schedules.LRSchedule itself (plain Python
floats, so both packages take the very same rates); `set_lr` writes it into every
param_group of a torch optimizer before its step (no torch.optim.lr_scheduler, whose
closed forms round differently). Time sampling draws with a torch.Generator:
    uniform        t = U, U ~ U[0, 1)      (torch.rand: the stream older runs drew)
    logit-normal   t = 1 / (1 + exp(-(m + s z))), z ~ N(0, 1)
"""

import torch

from fm_numpy.schedules import LR_SCHEDULES, TIME_SAMPLINGS, LRSchedule
from fm_numpy.schedules import TimeSampler as _NumpyTimeSampler

__all__ = ["LR_SCHEDULES", "TIME_SAMPLINGS", "LRSchedule", "TimeSampler", "logit_normal",
           "set_lr"]


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
