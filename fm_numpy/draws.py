"""Every random number of a training run, through one named interface (docs/training_core.md).

The loop and its pieces (data sources, time samplers, couplings, objectives) never touch a
generator directly; they ask a Draws object:

    draws.normal(name, shape, dtype)    ~ N(0, 1)
    draws.uniform(name, shape, dtype)   ~ U[0, 1)
    draws.integers(name, high, shape)   uniform in {0, ..., high - 1}

The name labels a draw (for Recorder / Replay and the conformance kit); it never changes the
stream. RngDraws calls exactly `rng.standard_normal(shape, dtype=dtype)`,
`rng.random(shape, dtype=dtype)` and `rng.integers(0, high, shape)`, the calls the loop made
before this module existed, so old runs keep their stream and old checkpoints resume
bit-identically.

Recorder(inner) forwards to inner and logs `[(name, shape_tuple, ndarray), ...]`; Replay(log)
gives the logged arrays back in order (fm_torch's Replay reads the same log) and raises at the
first draw whose (name, shape) differs from the log, naming its index.
"""

import json

import numpy as np

__all__ = ["Draws", "RngDraws", "Recorder", "Replay", "ReplayMismatch"]


class Draws:
    """The protocol (documentation only; any object with these methods will do)."""

    def normal(self, name, shape, dtype):  # pragma: no cover - protocol
        raise NotImplementedError

    def uniform(self, name, shape, dtype):  # pragma: no cover - protocol
        raise NotImplementedError

    def integers(self, name, high, shape):  # pragma: no cover - protocol
        raise NotImplementedError

    def state_dict(self):  # pragma: no cover - protocol
        return {}

    def load_state_dict(self, state):  # pragma: no cover - protocol
        pass


def _shape(shape):
    return (int(shape),) if np.ndim(shape) == 0 else tuple(int(s) for s in shape)


class RngDraws(Draws):
    """Draws from a numpy Generator, call for call as the loop drew before (same stream)."""

    def __init__(self, rng):
        self.rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) \
            else rng

    def normal(self, name, shape, dtype):
        return self.rng.standard_normal(_shape(shape), dtype=dtype)

    def uniform(self, name, shape, dtype):
        return self.rng.random(_shape(shape), dtype=dtype)

    def integers(self, name, high, shape):
        return self.rng.integers(0, high, _shape(shape))

    def state_dict(self):
        """The bit generator's state as JSON text (what checkpoints store as rng_state)."""
        return {"rng_state": json.dumps(self.rng.bit_generator.state)}

    def load_state_dict(self, state):
        self.rng.bit_generator.state = json.loads(str(state["rng_state"]))


class Recorder(Draws):
    """Forwards every draw to `inner` and appends (name, shape, array copy) to `.log`."""

    def __init__(self, inner):
        self.inner = inner
        self.log = []

    def _keep(self, name, shape, value):
        self.log.append((name, _shape(shape), np.array(value, copy=True)))
        return value

    def normal(self, name, shape, dtype):
        return self._keep(name, shape, self.inner.normal(name, shape, dtype))

    def uniform(self, name, shape, dtype):
        return self._keep(name, shape, self.inner.uniform(name, shape, dtype))

    def integers(self, name, high, shape):
        return self._keep(name, shape, self.inner.integers(name, high, shape))

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state):
        self.inner.load_state_dict(state)


class ReplayMismatch(ValueError):
    """A replayed run asked for a draw the log does not hold at that position."""


class Replay(Draws):
    """Returns the arrays of a Recorder's log in order; `.position` is the next index."""

    def __init__(self, log):
        self.log = list(log)
        self.position = 0

    def _next(self, name, shape, dtype=None):
        i, shape = self.position, _shape(shape)
        if i >= len(self.log):
            raise ReplayMismatch(f"draw {i} ({name!r}, {shape}): the log holds only "
                                 f"{len(self.log)} draws")
        logged_name, logged_shape, value = self.log[i]
        if (logged_name, tuple(logged_shape)) != (name, shape):
            raise ReplayMismatch(f"draw {i}: asked for ({name!r}, {shape}), the log holds "
                                 f"({logged_name!r}, {tuple(logged_shape)})")
        self.position += 1
        value = np.array(value, copy=True)
        return value if dtype is None else value.astype(dtype, copy=False)

    def normal(self, name, shape, dtype):
        return self._next(name, shape, dtype)

    def uniform(self, name, shape, dtype):
        return self._next(name, shape, dtype)

    def integers(self, name, high, shape):
        value = self._next(name, shape)
        if value.size and (value.min() < 0 or value.max() >= high):
            raise ReplayMismatch(f"draw {self.position - 1} ({name!r}): logged integers lie "
                                 f"outside [0, {high})")
        return value

    def state_dict(self):
        return {"replay_position": np.array(self.position, dtype=np.int64)}

    def load_state_dict(self, state):
        self.position = int(state["replay_position"])
