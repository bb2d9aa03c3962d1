"""The residual LayerNorm MLP of fm_numpy/models/resmlp.py in PyTorch: same parameters, same
arithmetic order.

    h_0     = concat[x, phi(t), E[y]],   z_0 = h_0 @ W_in + b_in                # (B, H)
    n_k     = LN(z_k) g{k} + beta{k},    a_k = n_k @ W{k}_1 + b{k}_1
    z_{k+1} = z_k + silu(a_k) @ W{k}_2 + b{k}_2,                  k = 0..depth-1
    v       = (LN(z_depth) g_out + beta_out) @ W_out + b_out                   # (B, dim)

LN is written out (mean, biased variance, 1 / sqrt(var + eps)) as in fm_numpy rather than
calling torch.nn.functional.layer_norm, so both packages round alike. Initial weights are
those of fm_numpy's ResMLP with the same seed; weights move both ways through one .npz.
"""

import numpy as np
import torch
from torch import nn

from fm_numpy.models.files import NpzFile
from fm_numpy.models.resmlp import ARCH, LN_EPS
from fm_numpy.models.resmlp import ResMLP as NumpyResMLP
from fm_torch.models.mlp import _dtype_name

__all__ = ["ResMLP", "layer_norm"]


def layer_norm(z, g, beta, eps=LN_EPS):
    """n = (z - mu) / sqrt(var + eps) g + beta per row (fm_numpy.models.resmlp.layer_norm)."""
    mu = z.mean(dim=1, keepdim=True)  # (B, 1)
    zc = z - mu  # (B, H)
    var = (zc * zc).mean(dim=1, keepdim=True)  # (B, 1) biased variance
    rstd = 1.0 / torch.sqrt(var + eps)  # (B, 1)
    return zc * rstd * g + beta  # (B, H)


class ResMLP(nn.Module, NpzFile):
    """v = ResMLP(x, t, y) with the parameter names of fm_numpy.models.resmlp.ResMLP."""

    ARCH, NAME, FILE_DEFAULTS = ARCH, "a ResMLP", None  # NpzFile
    dtype_name = staticmethod(_dtype_name)

    def __init__(self, dim, hidden=512, depth=3, time_features=32, num_classes=None, seed=0,
                 dtype=torch.float32, arch=ARCH):
        super().__init__()
        reference = NumpyResMLP(dim, hidden, depth, time_features, num_classes, seed,
                                dtype=_dtype_name(dtype), arch=arch)
        self.config = dict(reference.config)
        self.dim, self.hidden, self.depth = reference.dim, reference.hidden, reference.depth
        self.time_features, self.num_classes = reference.time_features, reference.num_classes
        self.dtype = getattr(torch, reference.dtype.name)
        for name, p in reference.params.items():
            self.register_parameter(name, nn.Parameter(torch.from_numpy(p.copy())))
        half = self.time_features // 2
        freqs = torch.exp(-np.log(10000.0) * torch.arange(half, dtype=torch.float64) / half)
        self.register_buffer("freqs", freqs.to(self.dtype), persistent=False)  # (T/2,)

    def extra_repr(self):
        return ", ".join(f"{k}={v!r}" for k, v in self.config.items() if k != "arch")

    def p(self, name):
        return getattr(self, name)

    def forward(self, x, t, y=None):
        """v = ResMLP(x, t, y): x (B, dim), t scalar or (B,), y None or ints (B,) (C = null)."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (B, {self.dim}), got {tuple(x.shape)}")
        B = x.shape[0]
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        if t.ndim == 0:
            t = t.expand(B)
        elif t.shape != (B,):
            raise ValueError(f"t must be a scalar or have shape ({B},), got {tuple(t.shape)}")
        if not bool(((t >= 0) & (t <= 1)).all()):
            raise ValueError(f"t must lie in [0, 1], got values from {t.min().item()} to "
                             f"{t.max().item()}")
        targ = (1000 * t)[:, None] * self.freqs  # (B, T/2)
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
            raise ValueError("this ResMLP is unconditional (num_classes=None) but labels were "
                             "given")
        h0 = torch.cat(parts, dim=1)  # (B, D + T [+ T])
        z = h0 @ self.W_in + self.b_in  # (B, H)
        for k in range(self.depth):
            n = layer_norm(z, self.p(f"g{k}"), self.p(f"beta{k}"))  # (B, H)
            a = n @ self.p(f"W{k}_1") + self.p(f"b{k}_1")  # (B, H)
            u = a * torch.sigmoid(a)  # (B, H) silu(a)
            z = z + (u @ self.p(f"W{k}_2") + self.p(f"b{k}_2"))  # (B, H)
        n_out = layer_norm(z, self.g_out, self.beta_out)  # (B, H)
        return n_out @ self.W_out + self.b_out  # (B, D)

    def _arrays(self):  # NpzFile: save_npz, load_npz, from_npz
        return {k: p.detach().cpu().numpy() for k, p in self.named_parameters()}

    def _set_arrays(self, arrays):
        with torch.no_grad():
            for name, p in self.named_parameters():
                p.copy_(torch.from_numpy(arrays[name]))
