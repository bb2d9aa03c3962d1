"""Neural velocity fields for fm_torch, and `network_for`: a network sized from the data."""

import numpy as np
import torch

from fm_numpy.models.sizing import default_sizes, sample_shape

__all__ = ["TORCH_ARCHITECTURES", "network_for"]

TORCH_ARCHITECTURES = ("mlp", "resmlp", "unet", "convnet")


def network_for(shape, num_classes=None, arch=None, seed=0, dtype=torch.float32, **sizes):
    """A fresh network for samples of `shape` ((D,) vectors or (C, H, W) images, as a data
    source's `.shape`) with labels 0..num_classes-1 (None: unconditional).

    arch None picks "mlp" for vectors and "unet" (fm_torch/models/unet.py) for images;
    "convnet" is the twin of fm_numpy's ConvUNet, "resmlp" the residual MLP. `sizes`
    (hidden, depth, time_features / base, mults, res_blocks, heads, ...) override the rule
    of fm_numpy.models.sizing.default_sizes. Image networks take (B, C, H, W), the MLPs
    (B, D). `seed` seeds the MLPs' and the ConvUNet's own initialisation; the U-Net draws
    from torch's global generator (seed it with torch.manual_seed), as it always has.
    """
    shape = sample_shape(shape)
    arch = arch or ("mlp" if len(shape) == 1 else "unet")
    if arch not in TORCH_ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of "
                         f"{', '.join(TORCH_ARCHITECTURES)}")
    if arch in ("mlp", "resmlp") and len(shape) != 1:
        raise ValueError(f"fm_torch's {arch} takes vectors (B, D); images {shape} need "
                         f"arch 'unet' or 'convnet'")
    sizes = {**default_sizes(shape, arch), **sizes}
    if arch == "unet":
        from fm_torch.models.unet import UNet

        return UNet(shape[0], num_classes=num_classes, **sizes).to(dtype)
    if arch == "convnet":
        from fm_torch.models.convnet import ConvUNet

        C, H, W = shape
        return ConvUNet(None, num_classes=num_classes, seed=seed, dtype=dtype, channels=C,
                        height=H, width=W, **sizes)
    if arch == "mlp":
        from fm_torch.models.mlp import MLP as cls
    else:
        from fm_torch.models.resmlp import ResMLP as cls
    return cls(int(np.prod(shape)), num_classes=num_classes, seed=seed, dtype=dtype, **sizes)
