"""How fm_numpy's and fm_torch's networks are sized from the data: an image network's
(C, H, W) and its padding to sizes that halve evenly, the config of old ConvUNet files,
and the widths `network_for` (fm_numpy/models/__init__.py, fm_torch/models/__init__.py)
gives a network for a data source's shape and class count. NumPy only."""

import numpy as np

__all__ = ["image_shape", "padding", "upgrade_config"]


def image_shape(dim=None, channels=1, height=None, width=None):
    """(C, H, W) of a ConvUNet's images: from height and width (dim, if given, must be
    C H W), or from dim alone as C square images of side sqrt(dim / C) (the old files)."""
    for name, value in (("dim", dim), ("channels", channels), ("height", height),
                        ("width", width)):
        if value is not None and (int(value) != value or value < 1):
            raise ValueError(f"{name} must be a positive integer, got {value}")
    C = int(channels)
    if height is None and width is None:
        if dim is None:
            raise ValueError("a ConvUNet needs height and width (or a square dim)")
        side = int(round(np.sqrt(dim / C)))
        if C * side * side != dim:
            raise ValueError(f"dim must be channels * S^2 for square images when no height "
                             f"and width are given, got dim={dim}, channels={C}")
        return C, side, side
    if height is None or width is None:
        raise ValueError(f"give both height and width, got height={height}, width={width}")
    if dim is not None and dim != C * height * width:
        raise ValueError(f"dim={dim} is not channels * height * width = {C * height * width}")
    return C, int(height), int(width)


def padding(size, depth):
    """(before, after): zeros that bring `size` up to a multiple of 2^(depth-1)."""
    step = 2 ** (depth - 1)
    extra = -size % step
    return extra // 2, extra - extra // 2


def upgrade_config(config):
    """A ConvUNet file's config in today's terms: files written before channels, height and
    width existed hold one square channel of side sqrt(dim)."""
    config = dict(config)
    if "dim" in config and "height" not in config:
        C, H, W = image_shape(config.pop("dim"), config.pop("channels", 1))
        config.update(channels=C, height=H, width=W)
    return config
