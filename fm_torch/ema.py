"""Exponential moving average of a model's weights, for sampling.

theta_ema <- d theta_ema + (1 - d) theta, with the warm-up d_n = min(decay, (1 + n) / (10 + n))
so a short run is not dominated by the random initial weights.
"""

import copy

import torch

__all__ = ["EMA"]


class EMA:
    """Holds a frozen copy of `model` whose weights track an average of model's."""

    def __init__(self, model, decay=0.999):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1), got {decay}")
        self.decay = float(decay)
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model):
        """theta_ema <- d theta_ema + (1 - d) theta (buffers are copied)."""
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        self.updates += 1
        source = model.state_dict()
        for name, p_ema in self.model.state_dict().items():
            p = source[name]
            if p_ema.dtype.is_floating_point:
                p_ema.mul_(d).add_(p.detach(), alpha=1 - d)
            else:
                p_ema.copy_(p)

    def state_dict(self):
        return {"model": self.model.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])
        self.decay = float(state["decay"])
