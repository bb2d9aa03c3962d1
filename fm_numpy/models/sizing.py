"""How fm_numpy's and fm_torch's networks are sized from the data: an image network's
(C, H, W) and its padding to sizes that halve evenly, the config of old ConvUNet files,
and the widths `network_for` (fm_numpy/models/__init__.py, fm_torch/models/__init__.py)
gives a network for a data source's shape and class count. NumPy only."""

import numpy as np

__all__ = ["image_shape", "padding", "upgrade_config", "sample_shape", "levels_for",
           "default_sizes", "IMAGE_DEFAULTS", "LARGE_IMAGE_DEFAULTS", "IMAGE_GUIDANCE",
           "image_defaults"]


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
    """(before, after): zeros that bring `size` up to a multiple of 2^(depth-1).

    Pad and crop, rather than fewer levels, for sizes that do not halve evenly: the network
    keeps its depth at every size (7 x 9 included), and sizes that divide are not padded,
    so their outputs are those of the plain network. Zero is the mean of the noise x0 and
    of centred data; the padded pixels are cropped from v, so no loss ever sees them.
    """
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


def sample_shape(shape):
    """One sample's shape as (D,) for vectors or (C, H, W) for images ((H, W) means one
    channel); a ValueError names anything else."""
    shape = tuple(shape)
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) not in (1, 3) or any(int(s) != s or s < 1 for s in shape):
        raise ValueError(f"a sample's shape must be (D,), (H, W) or (C, H, W) of positive "
                         f"integers, got {shape}")
    return tuple(int(s) for s in shape)


def levels_for(height, width):
    """Resolution levels of an image network: the lowest level keeps at least 3 pixels on
    the shorter side (before padding), at most 3 levels: 28 x 28 -> 3 (28, 14, 7),
    8 x 8 -> 2 (8, 4), 32 x 32 -> 3 (32, 16, 8), 5 x 5 -> 1."""
    return int(min(3, max(1, 1 + np.floor(np.log2(min(height, width) / 3)))))


def default_sizes(shape, arch):
    """The widths of network `arch` for samples of `shape` (see sample_shape).

    Vectors ("mlp", "resmlp"): hidden 256 up to D = 64 (the 2-D sets' width), 512 up to
    D = 1024, else 1024; depth 3. Images: levels_for(H, W) levels, base width 32 up to a side
    of 12 pixels and 16 above (fm_numpy's "convnet" with widths base x (1, 2, 2), fm_torch's
    "unet" with multipliers (1, 2, 2)[:levels]). A step costs about width^2 x pixels; CPU
    time of one step, 1 thread (benchmarks/small_data.py): NumPy ConvUNet 85 ms at 8 x 8,
    width 32, batch 64; 404 ms at 32 x 32 RGB, width 16, batch 32 (MNIST's 16: 285 ms);
    torch U-Net 117 ms at 8 x 8, base 32, batch 64.
    """
    shape = sample_shape(shape)
    if arch in ("mlp", "resmlp"):
        D = int(np.prod(shape))
        return {"hidden": 256 if D <= 64 else 512 if D <= 1024 else 1024, "depth": 3,
                "time_features": 32}
    if len(shape) != 3:
        raise ValueError(f"arch {arch!r} needs images (C, H, W), got a sample shape {shape}")
    _, H, W = shape
    levels = levels_for(H, W)
    width = 32 if max(H, W) <= 12 else 16
    if arch == "convnet":
        return {"hidden": width, "depth": levels, "time_features": 32}
    if arch == "unet":
        return {"base": width, "mults": [1, 2, 2][:levels], "res_blocks": 1,
                "time_features": 32}
    raise ValueError(f"no sizing rule for arch {arch!r}")


# Training defaults for a user's images (both packages), measured with
# benchmarks/small_data.py on scikit-learn's digits (1438 training images, 8 x 8): 600 steps
# of 64 (EMA 0.999, warm-up then cosine decay) gave guided samples (w = 2, midpoint, 20
# steps) that a logistic regression fitted on the real training split (0.964 on held-out
# real digits) assigned to their class 100 % of the time, 96 % at w = 1; 1500 steps gave
# the same; the torch U-Net (base 32, 2 levels) with the same recipe: 1.000 at w = 2, 0.943
# at w = 1. A step costs 85 ms of CPU (NumPy ConvUNet) / 117 ms (torch U-Net) at 8 x 8.
IMAGE_DEFAULTS = {"arch": "convnet", "steps": 600, "batch": 64, "lr": 2e-3, "warmup": 50,
                  "lr_schedule": "cosine", "ema_decay": 0.999}
IMAGE_GUIDANCE = 2.0  # `sample`'s default w for image models
# Larger images (a side above 12 pixels: width 16, 3 levels): a step of 32 costs 404 ms of
# CPU at 32 x 32 RGB, so the budget buys about 600 steps of 32 (400 CPU-s with the samples).
# Not enough: on the digits resized to 32 x 32 and tinted RGB, samples were judged their
# class 0.83 of the time at w = 2 (0.54 at w = 1); more steps do not fit 5 minutes on 2 cores.
LARGE_IMAGE_DEFAULTS = {**IMAGE_DEFAULTS, "batch": 32}


def image_defaults(shape):
    """The training settings of IMAGE_DEFAULTS / LARGE_IMAGE_DEFAULTS for images of `shape`
    (a side above 12 pixels is large); the network's widths come from default_sizes."""
    shape = sample_shape(shape)
    if len(shape) == 1:
        raise ValueError(f"image_defaults takes an image shape (C, H, W), got {shape}")
    _, H, W = shape
    return dict(IMAGE_DEFAULTS if max(H, W) <= 12 else LARGE_IMAGE_DEFAULTS)
