"""The networks of fm_numpy (models/mlp.py, resmlp.py, convnet.py), `network_for` (a network
sized from the data) and `load_model` for any .npz."""

import json

import numpy as np

from fm_numpy.io import load_npz
from fm_numpy.models.sizing import default_sizes, image_shape, sample_shape

__all__ = ["ARCHITECTURES", "model_class", "load_model", "network_for"]

ARCHITECTURES = ("mlp", "resmlp", "convnet")


def model_class(arch):
    """The class of an architecture name: "mlp" -> fm_numpy.models.mlp.MLP, "resmlp" -> ResMLP,
    "convnet" -> ConvUNet."""
    if arch == "mlp":
        from fm_numpy.models.mlp import MLP

        return MLP
    if arch == "resmlp":
        from fm_numpy.models.resmlp import ResMLP

        return ResMLP
    if arch == "convnet":
        from fm_numpy.models.convnet import ConvUNet

        return ConvUNet
    raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")


def load_model(path, dtype=None):
    """The network an .npz describes (its config's "arch"; none means the MLP), with weights."""
    arrays = load_npz(path)
    arch = "mlp"
    if "config" in arrays:
        try:
            config = json.loads(str(arrays["config"]))
        except json.JSONDecodeError:
            config = {}
        if isinstance(config, dict):
            arch = config.get("arch", "mlp")
    return model_class(arch).from_npz(path, dtype=dtype)


def network_for(shape, num_classes=None, arch=None, seed=0, dtype=np.float32, **sizes):
    """A fresh network for samples of `shape` ((D,) vectors or (C, H, W) images, as a data
    source's `.shape`) with labels 0..num_classes-1 (None: unconditional).

    arch None picks "mlp" for vectors and "convnet" for images; `sizes` (hidden, depth,
    time_features, ...) override the rule of fm_numpy.models.sizing.default_sizes. The
    network takes x flat, (B, prod(shape)), as every fm_numpy network. A "convnet" for
    vectors (D,) reads them as one square channel (reflow pairs of MNIST are flat).
    """
    shape = sample_shape(shape)
    arch = arch or ("mlp" if len(shape) == 1 else "convnet")
    cls = model_class(arch)
    if arch == "convnet" and len(shape) == 1:  # flat square images (reflow pairs, old runs)
        shape = image_shape(shape[0])  # (1, S, S), or a ValueError naming dim
    sizes = {**default_sizes(shape, arch), **sizes}
    if arch == "convnet":
        C, H, W = shape
        return cls(None, num_classes=num_classes, seed=seed, dtype=dtype, channels=C, height=H,
                   width=W, **sizes)
    return cls(int(np.prod(shape)), num_classes=num_classes, seed=seed, dtype=dtype, **sizes)
