"""Pictures written by fm-torch: image grids, 2-D scatters and the grids taken during training.
Every PNG is written atomically (fm_numpy.io.atomic_path)."""

import os

import numpy as np
import torch

from fm_numpy.io import atomic_path
from fm_torch.sampling import sample

__all__ = ["to_unit", "save_image_grid", "save_scatter", "plot_progress"]


def to_unit(x):
    """Images from [-1, 1] (clipped) to [0, 1]: (x + 1) / 2."""
    return ((x.clamp(-1, 1) + 1) / 2).float()


def save_image_grid(path, images, rows):
    """Tile images (N, 28, 28) in [0, 1] into `rows` rows and write a grey PNG atomically.
    matplotlib.image.imsave needs no figure and no backend (pyplot is never imported, so a
    notebook's backend is left as it was)."""
    from matplotlib.image import imsave

    images = np.asarray(images, dtype=np.float32)
    n, h, w = images.shape
    cols = -(-n // rows)
    canvas = np.ones((rows * (h + 2) + 2, cols * (w + 2) + 2), dtype=np.float32)
    for i in range(n):
        r, c = divmod(i, cols)
        top, left = 2 + r * (h + 2), 2 + c * (w + 2)
        canvas[top : top + h, left : left + w] = images[i]
    canvas = np.kron(canvas, np.ones((3, 3), dtype=np.float32))  # 3x upscale for viewing
    with atomic_path(path) as tmp:
        imsave(tmp, canvas, cmap="gray", vmin=0, vmax=1, format="png")


def save_scatter(path, points, title=""):
    """Scatter plot of 2-D points (N, 2), written as a PNG atomically (a matplotlib Figure,
    no pyplot: the global backend is left alone)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4, 4), dpi=100)
    ax = fig.subplots()
    ax.scatter(points[:, 0], points[:, 1], s=1, alpha=0.5)
    ax.set_xlim(-4, 4)
    ax.set_ylim(-4, 4)
    ax.set_aspect("equal")
    ax.set_title(title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")


def plot_progress(out, config, model, step, device):
    """out/samples_<step>.png during training: a 10x10 class grid (guidance 2, midpoint 10
    steps) for MNIST, a scatter of 2000 samples for the 2-D sets; fixed noise (seed 1234)."""
    g = torch.Generator().manual_seed(1234)
    model.eval()
    if config["data"] == "mnist":
        y = torch.arange(10).repeat_interleave(10).to(device)  # (100,) one row per class
        x0 = torch.randn((100, 1, 28, 28), generator=g).to(device)
        x1 = sample(model, x0, y, guidance=2.0, method="midpoint", steps=10)[-1]
        save_image_grid(os.path.join(out, f"samples_{step:07d}.png"),
                        to_unit(x1[:, 0]).cpu().numpy(), rows=10)
    else:
        x0 = torch.randn((2000, 2), generator=g).to(device)
        x1 = sample(model, x0, None, method="midpoint", steps=20)[-1]
        save_scatter(os.path.join(out, f"samples_{step:07d}.png"), x1.cpu().numpy(),
                     f"{config['data']}, step {step}")
