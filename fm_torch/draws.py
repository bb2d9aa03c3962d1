"""Every random number of a training run, through one named interface (fm_numpy/draws.py).

    draws.normal(name, shape, dtype)    ~ N(0, 1)
    draws.uniform(name, shape, dtype)   ~ U[0, 1)
    draws.integers(name, high, shape)   uniform in {0, ..., high - 1}  (int64)

The name labels a draw (Recorder / Replay, the conformance kit); it never changes the
stream. GeneratorDraws(gen, device) calls exactly `torch.randn / torch.rand / torch.randint(...,
generator=gen, device=device)`, the calls fm_torch.train made before this module existed, so
old runs keep their stream and their ckpt.pt files resume bit-identically.

Replay(log, device, dtype) hands back the arrays of fm_numpy.draws.Recorder's log
`[(name, shape_tuple, ndarray), ...]` as tensors on `device` (floats in `dtype`, integers as
int64) and raises fm_numpy.draws.ReplayMismatch at the first (name, shape) that differs from
the log, naming the draw's index: the fm_torch loop then takes the fm_numpy loop's draws.
"""

import numpy as np
import torch

from fm_numpy.draws import Draws, ReplayMismatch

__all__ = ["Draws", "GeneratorDraws", "Recorder", "Replay", "ReplayMismatch"]


def _shape(shape):
    return (int(shape),) if np.ndim(shape) == 0 else tuple(int(s) for s in shape)


class GeneratorDraws(Draws):
    """Draws from a torch.Generator on `device` (default: the generator's device)."""

    def __init__(self, generator, device=None):
        self.generator = generator
        self.device = torch.device(device) if device is not None else generator.device

    def normal(self, name, shape, dtype=None):
        return torch.randn(_shape(shape), generator=self.generator, dtype=dtype,
                           device=self.device)

    def uniform(self, name, shape, dtype=None):
        return torch.rand(_shape(shape), generator=self.generator, dtype=dtype,
                          device=self.device)

    def integers(self, name, high, shape):
        return torch.randint(0, int(high), _shape(shape), generator=self.generator,
                             device=self.device)

    def state_dict(self):
        """{"generator": the generator's state (a uint8 tensor, what ckpt.pt stores per rank)}."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state):
        # checkpoints written before this class stored the bare state tensor
        self.generator.set_state(state if torch.is_tensor(state) else state["generator"])


class Recorder(Draws):
    """Forwards every draw to `inner` and appends (name, shape, numpy copy) to `.log`."""

    def __init__(self, inner):
        self.inner = inner
        self.log = []

    def _keep(self, name, shape, value):
        self.log.append((name, _shape(shape), value.detach().cpu().numpy().copy()))
        return value

    def normal(self, name, shape, dtype=None):
        return self._keep(name, shape, self.inner.normal(name, shape, dtype))

    def uniform(self, name, shape, dtype=None):
        return self._keep(name, shape, self.inner.uniform(name, shape, dtype))

    def integers(self, name, high, shape):
        return self._keep(name, shape, self.inner.integers(name, high, shape))

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state):
        self.inner.load_state_dict(state)


class Replay(Draws):
    """The arrays of a Recorder's log, in order, as tensors; `.position` is the next index.

    dtype: the dtype of every float draw (None: the dtype each draw asks for), so a float64
    replay of fm_numpy's float64 draws compares the same numbers (a label-dropout uniform
    logged in float64 is not rounded to float32 before `u < p`).
    """

    def __init__(self, log, device="cpu", dtype=torch.float64):
        self.log = list(log)
        self.device = torch.device(device)
        self.dtype = dtype
        self.position = 0

    def _next(self, name, shape):
        i, shape = self.position, _shape(shape)
        if i >= len(self.log):
            raise ReplayMismatch(f"draw {i} ({name!r}, {shape}): the log holds only "
                                 f"{len(self.log)} draws")
        logged_name, logged_shape, value = self.log[i]
        if (logged_name, tuple(logged_shape)) != (name, shape):
            raise ReplayMismatch(f"draw {i}: asked for ({name!r}, {shape}), the log holds "
                                 f"({logged_name!r}, {tuple(logged_shape)})")
        self.position += 1
        return torch.as_tensor(np.array(value, copy=True), device=self.device)

    def _float(self, name, shape, dtype):
        value = self._next(name, shape)
        return value.to(self.dtype or dtype or torch.get_default_dtype())

    def normal(self, name, shape, dtype=None):
        return self._float(name, shape, dtype)

    def uniform(self, name, shape, dtype=None):
        return self._float(name, shape, dtype)

    def integers(self, name, high, shape):
        value = self._next(name, shape).long()
        if value.numel() and (int(value.min()) < 0 or int(value.max()) >= high):
            raise ReplayMismatch(f"draw {self.position - 1} ({name!r}): logged integers lie "
                                 f"outside [0, {high})")
        return value

    def state_dict(self):
        return {"replay_position": self.position}

    def load_state_dict(self, state):
        self.position = int(state["replay_position"])
