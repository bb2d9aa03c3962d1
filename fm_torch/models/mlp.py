"""The MLP of fm_numpy/models/mlp.py in PyTorch: same parameters, same arithmetic order.

    freqs_k = exp(-log(10000) k / half),  k = 0..half-1,  half = time_features // 2
    phi(t)  = [cos(s t freqs), sin(s t freqs)]   s = time_scale (1000)  # (B, time_features)
    h_0     = concat[x, phi(t), E[y]]        (E[y] only with num_classes; y=None -> null row)
    a_i     = h_i @ W{i} + b{i},   h_{i+1} = a_i * sigmoid(a_i),   i = 0..depth-1
    v       = h_depth @ W{depth} + b{depth}                            # (B, dim)

mean_flow=True: the average velocity u(x, r, t), phi(r) in place of phi(t) and phi(t - r)
appended to h_0 (as fm_numpy/models/mlp.py); r=None means r = t. phi(t - r) runs at
interval_scale (default time_scale; files from before the key: 1000, as they were trained).
Initial weights are those of fm_numpy.models.mlp.MLP with the same seed, so both packages start
from the same network. Weights move both ways through one .npz file.
"""

import numpy as np
import torch
from torch import nn

from fm_numpy.models.files import NpzFile
from fm_numpy.models.mlp import MLP as NumpyMLP
from fm_numpy.models.mlp import upgrade_file_config

__all__ = ["MLP"]


def _dtype_name(dtype):
    if isinstance(dtype, torch.dtype):
        return {torch.float32: "float32", torch.float64: "float64"}.get(dtype, str(dtype))
    return np.dtype(dtype).name


class MLP(nn.Module, NpzFile):
    """v = MLP(x, t, y) with parameters "W0", "b0", ..., "W{depth}", "b{depth}" [, "E"]."""

    ARCH, NAME = "mlp", "an MLP"  # NpzFile
    FILE_DEFAULTS = staticmethod(upgrade_file_config)
    dtype_name = staticmethod(_dtype_name)

    def __init__(self, dim, hidden=256, depth=3, time_features=32, num_classes=None, seed=0,
                 dtype=torch.float32, mean_flow=False, time_scale=1000.0, interval_scale=None):
        super().__init__()
        reference = NumpyMLP(dim, hidden, depth, time_features, num_classes, seed,
                             dtype=_dtype_name(dtype), mean_flow=mean_flow,
                             time_scale=time_scale, interval_scale=interval_scale)
        self.mean_flow = reference.mean_flow
        self.time_scale, self.interval_scale = reference.time_scale, reference.interval_scale
        self.config = dict(reference.config)
        self.dim, self.hidden, self.depth = reference.dim, reference.hidden, reference.depth
        self.time_features, self.num_classes = reference.time_features, reference.num_classes
        self.dtype = getattr(torch, reference.dtype.name)
        for name, p in reference.params.items():
            self.register_parameter(name, nn.Parameter(torch.from_numpy(p.copy())))
        half = self.time_features // 2
        freqs = torch.exp(-np.log(10000.0) * torch.arange(half, dtype=torch.float64) / half)
        if self.mean_flow:  # fm_numpy's slower rate (MEAN_FLOW_TIME_RATE), its very numbers
            freqs = torch.from_numpy(reference.freqs.astype(np.float64))
        self.register_buffer("freqs", freqs.to(self.dtype), persistent=False)  # (T/2,)

    def extra_repr(self):
        return ", ".join(f"{k}={v!r}" for k, v in self.config.items())

    def forward(self, x, t, y=None, r=None):
        """v = MLP(x, t, y): x (B, dim), t scalar or (B,), y None or ints (B,) (C = null class).

        Mean-flow models: u(x, r, t) with x at time r <= t (r=None: r = t)."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (B, {self.dim}), got {tuple(x.shape)}")
        B = x.shape[0]
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        if t.ndim == 0:
            t = t.expand(B)
        elif t.shape != (B,):
            raise ValueError(f"t must be a scalar or have shape ({B},), got {tuple(t.shape)}")
        if not bool(((t >= 0) & (t <= 1)).all()):  # as fm_numpy.models.mlp: NaN fails too
            raise ValueError(f"t must lie in [0, 1], got values from {t.min().item()} to "
                             f"{t.max().item()}")
        t, interval = self._check_r(r, t, B)  # t <- r: the time of x; interval = t - r
        targ = (self.time_scale * t)[:, None] * self.freqs  # (B, T/2)
        parts = [x, torch.cos(targ), torch.sin(targ)]
        if self.num_classes:
            if y is None:
                y = torch.full((B,), self.num_classes, dtype=torch.long, device=x.device)
            else:
                y = torch.as_tensor(y, dtype=torch.long, device=x.device)
                if y.ndim == 0:
                    y = y.expand(B)
            parts.append(self.E[y])  # (B, T)
        elif y is not None:
            raise ValueError("this MLP is unconditional (num_classes=None) but labels were given")
        if self.mean_flow:
            targ = (self.interval_scale * interval)[:, None] * self.freqs  # (B, T/2) phi(t - r)
            parts += [torch.cos(targ), torch.sin(targ)]
        h = torch.cat(parts, dim=1)  # (B, D + T [+ T])
        for i in range(self.depth):
            a = h @ getattr(self, f"W{i}") + getattr(self, f"b{i}")  # (B, H)
            h = a * torch.sigmoid(a)  # silu(a) = a / (1 + exp(-a))
        return h @ getattr(self, f"W{self.depth}") + getattr(self, f"b{self.depth}")  # (B, D)

    def _check_r(self, r, t, B):
        if r is None:
            return t, torch.zeros_like(t)
        if not self.mean_flow:
            raise ValueError("r is an input of mean-flow models only (mean_flow=False here)")
        r = torch.as_tensor(r, dtype=t.dtype, device=t.device)
        if r.ndim == 0:
            r = r.expand(B)
        elif r.shape != (B,):
            raise ValueError(f"r must be a scalar or have shape ({B},), got {tuple(r.shape)}")
        if not bool(((r >= 0) & (r <= t)).all()):
            raise ValueError("r must lie in [0, t] (the average velocity runs from r to t)")
        return r, t - r

    def _arrays(self):  # NpzFile: save_npz, load_npz, from_npz
        return {k: p.detach().cpu().numpy() for k, p in self.named_parameters()}

    def _set_arrays(self, arrays):
        with torch.no_grad():
            for name, p in self.named_parameters():
                p.copy_(torch.from_numpy(arrays[name]))
