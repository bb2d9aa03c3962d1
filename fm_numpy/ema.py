"""Exponential moving average of a model's weights, for sampling (mirrors fm_torch/ema.py).

theta_ema <- d theta_ema + (1 - d) theta, with the warm-up d_n = min(decay, (1 + n) / (10 + n))
(n = updates so far) so a short run is not dominated by the random initial weights.
decay = 0 keeps theta_ema = theta.
"""

import numpy as np

__all__ = ["EMA"]


class EMA:
    """Copies of `params` (a dict of arrays) that track an average of them."""

    def __init__(self, params, decay=0.999):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1), got {decay}")
        self.decay = float(decay)
        self.params = {k: np.array(p, copy=True) for k, p in params.items()}
        self._tmp = {k: np.empty_like(p) for k, p in self.params.items()}  # (1 - d) theta
        self.updates = 0

    def update(self, params):
        """theta_ema <- d theta_ema + (1 - d) theta, in place (fm_torch: mul_(d).add_(., 1 - d))."""
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        self.updates += 1
        for name, p_ema in self.params.items():
            p_ema *= d
            tmp = self._tmp[name]  # preallocated: no new array per parameter per step
            np.multiply(params[name], 1 - d, out=tmp)
            p_ema += tmp

    def state_dict(self):
        """Arrays for a checkpoint: "param.<name>" and "updates"/"decay" as 0-d arrays."""
        state = {f"param.{k}": p for k, p in self.params.items()}
        state["updates"] = np.array(self.updates, dtype=np.int64)
        state["decay"] = np.array(self.decay)
        return state

    def load_state_dict(self, state):
        for name, p_ema in self.params.items():
            key = f"param.{name}"
            if key not in state or state[key].shape != p_ema.shape:
                raise ValueError(f"EMA state: {key} is missing or has the wrong shape")
            p_ema[...] = state[key]
        self.updates = int(state["updates"])
        self.decay = float(state["decay"])
