"""fm_numpy's scalings (fm_numpy/scaling.py) with tensors in model space.

Same classes, same numbers: encode(raw, dtype, device) -> Tensor (B, ...) (the arithmetic
is fm_numpy's, in float64, then cast), decode(z) takes a Tensor or array and returns the
data's own units as a NumPy array (8-bit images: uint8), as `sample` writes them.
"""

import numpy as np
import torch

from fm_numpy import scaling as _np

__all__ = ["Identity", "Standardize", "MinMax", "scaling_from_json"]


class _Tensors:
    def encode(self, raw, dtype=torch.float32, device=None):
        np_dtype = np.float64 if dtype == torch.float64 else np.float32
        z = super().encode(raw, dtype=np_dtype)  # (B, ...) model space, fm_numpy's numbers
        return torch.from_numpy(z).to(device=device, dtype=dtype)

    def decode(self, z):
        if torch.is_tensor(z):
            z = z.detach().to("cpu", torch.float64).numpy()
        return super().decode(z)


class Identity(_Tensors, _np.Identity):
    """z = x."""


class Standardize(_Tensors, _np.Standardize):
    """Per-feature z = (x - mean) / std (vectors)."""


class MinMax(_Tensors, _np.MinMax):
    """Images to [-1, 1], channels first (B, C, H, W); 8-bit decodes to uint8."""


_CLASSES = {"identity": Identity, "standardize": Standardize, "minmax": MinMax}


def scaling_from_json(d):
    """The tensor scaling that to_json() described (same record as fm_numpy's)."""
    inner = _np.scaling_from_json(d)
    out = _CLASSES[inner.kind].__new__(_CLASSES[inner.kind])
    out.__dict__.update(inner.__dict__)
    return out
