"""Animations of sampling in fm-torch: the twin of fm_numpy/animate.py, for tensors.

The drawing is fm_numpy's (matplotlib's Pillow writer, written atomically); this module
only brings a trajectory (N + 1, B, ...) from the device to NumPy, and images from the
model's (B, C, H, W) in [-1, 1] to (B, H, W[, C]) in [0, 1].
"""

import numpy as np
import torch

from fm_numpy.animate import animate_images as _animate_images
from fm_numpy.animate import animate_points as _animate_points
from fm_numpy.animate import tile_images

__all__ = ["tile_images", "animate_points", "animate_images"]


def _numpy(x):
    return x.detach().float().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)


def animate_points(path, xs, t_grid=None, **kwargs):
    """GIF of 2-D particles xs (N + 1, B, 2), one frame per grid time."""
    _animate_points(path, _numpy(xs), None if t_grid is None else _numpy(t_grid), **kwargs)


def animate_images(path, xs, rows, t_grid=None, **kwargs):
    """GIF of image grids xs (N + 1, B, C, H, W) in model space [-1, 1]: frame k shows
    (x_k + 1) / 2, clipped to [0, 1]."""
    xs = _numpy(xs)
    if xs.ndim != 5:
        raise ValueError(f"animate_images needs (N + 1, B, C, H, W), got shape {xs.shape}")
    frames = (np.clip(xs, -1, 1) + 1) / 2  # (N + 1, B, C, H, W) in [0, 1]
    frames = np.moveaxis(frames, 2, -1)  # (N + 1, B, H, W, C)
    if frames.shape[-1] == 1:
        frames = frames[..., 0]  # grey: (N + 1, B, H, W)
    _animate_images(path, frames, rows, None if t_grid is None else _numpy(t_grid), **kwargs)
