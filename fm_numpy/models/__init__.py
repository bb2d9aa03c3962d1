"""The networks of fm_numpy (models/mlp.py, models/resmlp.py) and `load_model` for any .npz."""

import json

from fm_numpy.io import load_npz

__all__ = ["ARCHITECTURES", "model_class", "load_model"]

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
