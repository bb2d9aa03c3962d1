"""The NumPy U-Net of fm_numpy/models/convnet.py in PyTorch: same parameters, same maps.

Same layout and equations as fm_numpy's ConvUNet (see its docstring), on NCHW tensors,
with torch.nn.functional's layers rather than a second im2col: conv2d with the weight
W (9 C_in, C_out) seen as W^T reshaped to (C_out, C_in, 3, 3) (W's rows are in
(c_in, dy, dx) order), group_norm, silu, avg_pool2d and nearest interpolate. So the
cross-check in tests/test_crosscheck_convnet.py compares two independent implementations;
their float64 results agree to rounding (1e-10), float32 to float32 rounding. Initial
weights are those of fm_numpy's ConvUNet with the same seed; weights move both ways
through one .npz. Images of any (C, H, W): padded with zeros to sizes that halve evenly
and cropped back, as fm_numpy's (fm_numpy/models/sizing.py says why). x may be flat,
(B, C H W), as fm_numpy's networks take it, or images (B, C, H, W), as fm_torch's data
sources give them; v comes back in the shape x came in.
"""

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fm_numpy.models.conv import GN_EPS, groups
from fm_numpy.models.convnet import ARCH
from fm_numpy.models.convnet import ConvUNet as NumpyConvUNet
from fm_numpy.models.files import NpzFile
from fm_numpy.models.sizing import upgrade_config
from fm_torch.models.mlp import _dtype_name

__all__ = ["ConvUNet", "conv3x3"]


def conv3x3(x, W, b):
    """out = conv2d(x, W^T as (C_out, C_in, 3, 3), b, padding 1) for x (B, C_in, H, W)."""
    Co, Ci = W.shape[1], W.shape[0] // 9
    return F.conv2d(x, W.t().reshape(Co, Ci, 3, 3), b, padding=1)  # (B, C_out, H, W)


class ConvUNet(nn.Module, NpzFile):
    """v = ConvUNet(x, t, y) with the parameter names of fm_numpy.models.convnet.ConvUNet."""

    ARCH, NAME = ARCH, "a ConvUNet"  # NpzFile
    FILE_DEFAULTS = staticmethod(upgrade_config)  # old files: a square dim, one channel
    dtype_name = staticmethod(_dtype_name)

    def __init__(self, dim=None, hidden=16, depth=3, time_features=32, num_classes=None, seed=0,
                 dtype=torch.float32, arch=ARCH, channels=1, height=None, width=None):
        super().__init__()
        reference = NumpyConvUNet(dim, hidden, depth, time_features, num_classes, seed,
                                  dtype=_dtype_name(dtype), arch=arch, channels=channels,
                                  height=height, width=width)
        self.config = dict(reference.config)
        self.dim, self.shape = reference.dim, reference.shape  # C H W, (C, H, W)
        (top, bottom), (left, right) = reference.pad_h, reference.pad_w
        self.pads = (left, right, top, bottom)  # F.pad's order: last axis first
        self.hidden, self.depth = reference.hidden, reference.depth
        self.time_features, self.num_classes = reference.time_features, reference.num_classes
        self.blocks = reference.blocks
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

    def _block(self, k, x, se):
        """Residual block k (fm_numpy.models.convnet.ConvUNet._block) on NCHW x."""
        ci, co = x.shape[1], self.p(f"{k}_conv1_b").shape[0]
        n1 = F.group_norm(x, groups(ci), self.p(f"{k}_gn1_g"), self.p(f"{k}_gn1_b"), GN_EPS)
        h1 = conv3x3(F.silu(n1), self.p(f"{k}_conv1_W"), self.p(f"{k}_conv1_b"))
        n2 = F.group_norm(h1, groups(co), self.p(f"{k}_gn2_g"), self.p(f"{k}_gn2_b"), GN_EPS)
        n2 = n2 + (se @ self.p(f"{k}_We") + self.p(f"{k}_be"))[:, :, None, None]
        h2 = conv3x3(F.silu(n2), self.p(f"{k}_conv2_W"), self.p(f"{k}_conv2_b"))
        if hasattr(self, f"{k}_Ws"):
            Ws = self.p(f"{k}_Ws")
            return F.conv2d(x, Ws.t()[:, :, None, None], self.p(f"{k}_bs")) + h2  # 1x1 skip
        return x + h2  # (B, c_out, h, w)

    def forward(self, x, t, y=None):
        """v = ConvUNet(x, t, y): x (B, C H W) or (B, C, H, W), t scalar or (B,), y None or
        ints (B,) (num_classes = null); v has the shape of x."""
        if tuple(x.shape[1:]) not in ((self.dim,), self.shape):
            C, H, W = self.shape
            raise ValueError(f"x must have shape (B, {self.dim}) or (B, {C}, {H}, {W}), got "
                             f"{tuple(x.shape)}")
        B, shape_in = x.shape[0], x.shape
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        if t.ndim == 0:
            t = t.expand(B)
        elif t.shape != (B,):
            raise ValueError(f"t must be a scalar or have shape ({B},), got {tuple(t.shape)}")
        if not bool(((t >= 0) & (t <= 1)).all()):
            raise ValueError(f"t must lie in [0, 1], got values from {t.min().item()} to "
                             f"{t.max().item()}")
        targ = (1000 * t)[:, None] * self.freqs  # (B, T/2)
        phi = torch.cat([torch.cos(targ), torch.sin(targ)], dim=1)  # (B, T)
        emb = F.silu(phi @ self.Wt1 + self.bt1) @ self.Wt2 + self.bt2  # (B, E)
        if self.num_classes:
            if y is None:
                y = torch.full((B,), self.num_classes, dtype=torch.long, device=x.device)
            else:
                y = torch.as_tensor(y, dtype=torch.long, device=x.device)
                if y.ndim == 0:
                    y = y.expand(B)
            emb = emb + self.E[y]  # (B, E)
        elif y is not None:
            raise ValueError("this ConvUNet is unconditional (num_classes=None) but labels "
                             "were given")
        se = F.silu(emb)  # (B, E)
        img = F.pad(x.reshape(B, *self.shape), self.pads)  # (B, C, H', W') zeros around
        h = conv3x3(img, self.conv_in_W, self.conv_in_b)  # (B, w_0, H', W')
        skips = []
        for k, _, _, level in self.blocks:
            if k[0] == "u":
                h = F.interpolate(h, scale_factor=2, mode="nearest")  # (B, c, 2h, 2w)
                h = torch.cat([h, skips.pop()], dim=1)  # (B, c + w_level, h, w)
            h = self._block(k, h, se)
            if k[0] == "d" and level < self.depth - 1:
                skips.append(h)
                h = F.avg_pool2d(h, 2)  # (B, c, h/2, w/2)
        n = F.group_norm(h, groups(h.shape[1]), self.out_gn_g, self.out_gn_b, GN_EPS)
        v = conv3x3(F.silu(n), self.conv_out_W, self.conv_out_b)  # (B, C, H', W')
        left, _, top, _ = self.pads
        v = v[:, :, top:top + self.shape[1], left:left + self.shape[2]]  # (B, C, H, W) crop
        return v.reshape(shape_in)

    def _arrays(self):  # NpzFile: save_npz, load_npz, from_npz
        return {k: p.detach().cpu().numpy() for k, p in self.named_parameters()}

    def _set_arrays(self, arrays):
        with torch.no_grad():
            for name, p in self.named_parameters():
                p.copy_(torch.from_numpy(arrays[name]))
