"""A PNG grid of generated images of any size and channel count, written by fm_numpy.png
(no plotting library): one row per class (the first `per_row` samples of each), or a
near-square block for an unconditional model."""

import numpy as np

from fm_numpy.png import write_png

__all__ = ["grid_canvas", "write_image_grid"]


def _to_pixels(z, shape):
    """Model-space rows (B, C*H*W) in [-1, 1] -> uint8 (B, H, W) or (B, H, W, 3)."""
    z = np.asarray(z, dtype=np.float64).reshape(-1, *shape)  # (B, C, H, W)
    pixels = np.clip(np.rint((z + 1) * 127.5), 0, 255).astype(np.uint8)
    if shape[0] in (3, 4):
        return pixels[:, :3].transpose(0, 2, 3, 1)  # RGB (an alpha channel is not shown)
    return pixels[:, 0]  # gray (the first channel of any other count)


def grid_canvas(z, shape, labels=None, per_row=10, gap=2):
    """uint8 canvas of the images z (model space, shape (C, H, W)): rows of classes or a
    square block; each image enlarged by an integer factor to at least 32 pixels a side."""
    images = _to_pixels(z, shape)  # (B, H, W[, 3])
    if labels is not None:
        rows = [np.flatnonzero(labels == c)[:per_row] for c in np.unique(labels)]
    else:
        side = int(np.ceil(np.sqrt(min(len(images), per_row * per_row))))
        order = np.arange(min(len(images), side * side))
        rows = [order[i:i + side] for i in range(0, len(order), side)]
    k = max(1, int(np.ceil(32 / max(shape[1:]))))
    images = images.repeat(k, axis=1).repeat(k, axis=2)  # (B, kH, kW[, 3])
    h, w = images.shape[1:3]
    cols = max(len(r) for r in rows)
    canvas = np.full((len(rows) * (h + gap) + gap, cols * (w + gap) + gap) + images.shape[3:],
                     128, np.uint8)
    for i, row in enumerate(rows):
        for j, idx in enumerate(row):
            top, left = gap + i * (h + gap), gap + j * (w + gap)
            canvas[top:top + h, left:left + w] = images[idx]
    return canvas


def write_image_grid(path, z, shape, labels=None, per_row=10):
    """Write grid_canvas(...) to path (PNG, atomically)."""
    write_png(path, grid_canvas(z, shape, labels, per_row))
