"""Adam and AdamW, in place, with the arithmetic of torch.optim.Adam / AdamW.

One step, for every parameter p with gradient g (k = the step number, from 1):

    g  <- g * min(1, max_norm / (||all g||_2 + 1e-6))     (optional global-norm clipping)
    p  <- p (1 - lr wd)                                     (AdamW: decoupled weight decay)
    g  <- g + wd p                                          (Adam with weight decay: L2 term)
    m  <- m + (1 - beta1) (g - m)                           (torch's lerp)
    s  <- beta2 s + (1 - beta2) g g
    p  <- p - (lr / (1 - beta1^k)) m / (sqrt(s) / sqrt(1 - beta2^k) + eps)

eps is added after the bias correction of sqrt(s), as torch does.
"""

import numpy as np

from fm_numpy import kernels

__all__ = ["Adam", "AdamW", "clip_grad_norm"]


def clip_grad_norm(grads, max_norm):
    """Scale all gradients in place by min(1, max_norm / (total_norm + 1e-6)); return total_norm.

    total_norm = sqrt(sum over tensors of ||g||_2^2), as torch.nn.utils.clip_grad_norm_.
    """
    norms = np.array([np.linalg.norm(g.ravel()) for g in grads.values()])
    total_norm = float(np.linalg.norm(norms))
    clip_coef = min(1.0, max_norm / (total_norm + 1e-6))
    for g in grads.values():
        g *= clip_coef
    return total_norm


class Adam:
    """Adam over a dict of arrays `params` (updated in place by `step(grads)`).

    decoupled=True is AdamW (weight decay multiplies p by 1 - lr wd before the update);
    otherwise a nonzero weight_decay adds wd p to the gradient (torch.optim.Adam).
    max_grad_norm (optional) clips the global gradient norm before the update.
    `fast` (default True) runs the update through fm_numpy.kernels.adam_update, bitwise
    the same numbers as the plain lines of `step`.
    """

    fast = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 decoupled=False, max_grad_norm=None):
        if not lr >= 0:
            raise ValueError(f"learning rate must be >= 0, got {lr}")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        if not eps >= 0 or not weight_decay >= 0:
            raise ValueError(f"eps and weight_decay must be >= 0, got {eps}, {weight_decay}")
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be positive or None, got {max_grad_norm}")
        self.params = params
        self.lr, self.betas, self.eps = float(lr), (float(betas[0]), float(betas[1])), float(eps)
        self.weight_decay, self.decoupled = float(weight_decay), bool(decoupled)
        self.max_grad_norm = None if max_grad_norm is None else float(max_grad_norm)
        self.step_count = 0
        self.m = {k: np.zeros_like(p) for k, p in params.items()}  # first moment
        self.s = {k: np.zeros_like(p) for k, p in params.items()}  # second moment
        self._tmp = {k: np.empty_like(p) for k, p in params.items()}
        self._tmp2 = {k: np.empty_like(p) for k, p in params.items()} if (
            weight_decay and not decoupled) else None

    def step(self, grads):
        """One Adam update of every parameter from `grads` (a dict with the same names)."""
        if self.max_grad_norm is not None:
            clip_grad_norm(grads, self.max_grad_norm)
        self.step_count += 1
        lr, (beta1, beta2), eps, wd = self.lr, self.betas, self.eps, self.weight_decay
        bias_correction1 = 1 - beta1**self.step_count
        bias_correction2 = 1 - beta2**self.step_count
        step_size = lr / bias_correction1
        bias_correction2_sqrt = bias_correction2**0.5
        for name, p in self.params.items():
            g, m, s, tmp = grads[name], self.m[name], self.s[name], self._tmp[name]
            if wd and self.decoupled:
                p *= 1 - lr * wd
            elif wd:
                g = np.add(g, np.multiply(p, wd, out=self._tmp2[name]), out=self._tmp2[name])
            if self.fast and p.flags.c_contiguous and g.flags.c_contiguous:
                kernels.adam_update(p, g, m, s, tmp, beta1, beta2, eps, step_size,
                                    bias_correction2_sqrt)  # the lines below, in blocks
                continue
            np.subtract(g, m, out=tmp)
            tmp *= 1 - beta1
            m += tmp  # m + (1 - beta1) (g - m)
            s *= beta2
            np.multiply(g, 1 - beta2, out=tmp)
            tmp *= g
            s += tmp  # beta2 s + (1 - beta2) g g
            np.sqrt(s, out=tmp)
            tmp /= bias_correction2_sqrt
            tmp += eps  # denominator sqrt(s_hat) + eps
            np.divide(m, tmp, out=tmp)
            tmp *= step_size
            p -= tmp

    def state_dict(self):
        """Plain arrays: "step" and "m.<name>", "s.<name>" for every parameter (copies)."""
        state = {"step": np.array(self.step_count, dtype=np.int64)}
        for name in self.params:
            state[f"m.{name}"] = self.m[name].copy()
            state[f"s.{name}"] = self.s[name].copy()
        return state

    def load_state_dict(self, state):
        """Restore the moments and step from `state_dict()` output (shapes must match)."""
        for name, p in self.params.items():
            for key, target in ((f"m.{name}", self.m[name]), (f"s.{name}", self.s[name])):
                if key not in state or np.shape(state[key]) != p.shape:
                    raise ValueError(f"optimizer state {key} is missing or has the wrong shape")
                target[...] = state[key]
        self.step_count = int(state["step"])


class AdamW(Adam):
    """Adam with decoupled weight decay (torch.optim.AdamW; default weight_decay 1e-2)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 max_grad_norm=None):
        super().__init__(params, lr, betas, eps, weight_decay, decoupled=True,
                         max_grad_norm=max_grad_norm)
