"""Animations of sampling: the ODE's states x_{t_k}, k = 0..N, one GIF frame per solver step.

A sampler integrates dx/dt = v(x, t) from noise at t = 0 to data at t = 1 and returns
every state of its grid, xs (N + 1, B, ...). These functions draw xs[k] as frame k:
- `animate_points`: 2-D particles (B, 2) flowing from the Gaussian to the data;
- `animate_images`: an image grid (B, H, W) or (B, H, W, C), values in [0, 1], forming.
Frames are drawn with matplotlib's object API (a Figure on an Agg canvas, no pyplot, so
the global backend is left alone) and written by its Pillow writer to a temporary file
that is renamed over the target (fm_numpy.io.atomic_path): a crash never leaves half a GIF.
"""

import numpy as np

from fm_numpy.io import atomic_path

__all__ = ["tile_images", "animate_points", "animate_images"]

HOLD = 5  # the last frame (the samples) is shown this many frame times


def tile_images(images, rows, pad=1):
    """Tile (B, H, W[, C]) images in [0, 1] into `rows` rows: (rows (H + pad) + pad, ...)."""
    images = np.clip(np.asarray(images, dtype=np.float32), 0, 1)
    B, H, W = images.shape[:3]
    cols = -(-B // rows)
    canvas = np.ones((rows * (H + pad) + pad, cols * (W + pad) + pad, *images.shape[3:]),
                     dtype=np.float32)  # white gaps between the images
    for i in range(B):
        r, c = divmod(i, cols)
        top, left = pad + r * (H + pad), pad + c * (W + pad)
        canvas[top:top + H, left:left + W] = images[i]
    return canvas


def _save(fig, draw, n_frames, path, fps):
    """Run draw(k) for k = 0..n_frames-1 (then hold the last) into a GIF at `path`."""
    from matplotlib.animation import FuncAnimation, PillowWriter
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)  # an Agg canvas of its own: no pyplot, no global backend
    frames = list(range(n_frames)) + [n_frames - 1] * HOLD
    anim = FuncAnimation(fig, draw, frames=frames, blit=False, cache_frame_data=False)
    with atomic_path(path) as tmp:
        anim.save(tmp, writer=PillowWriter(fps=fps))


def _check(xs, what):
    xs = np.asarray(xs)
    if xs.ndim < 3 or len(xs) < 2:
        raise ValueError(f"{what}: need the states of at least 2 grid times, (N + 1, B, ...), "
                         f"got shape {xs.shape}")
    if not np.all(np.isfinite(xs)):
        raise ValueError(f"{what}: the trajectory holds NaN or infinite values")
    return xs


def animate_points(path, xs, t_grid=None, lim=None, fps=8, max_points=2000):
    """GIF of 2-D particles: frame k scatters xs[k] (B, 2), titled with t_k."""
    from matplotlib.figure import Figure

    xs = _check(xs, "animate_points")[:, :max_points]  # (N + 1, B, 2)
    if xs.shape[-1] != 2:
        raise ValueError(f"animate_points draws 2-D points, got dimension {xs.shape[-1]}")
    t_grid = np.linspace(0, 1, len(xs)) if t_grid is None else np.asarray(t_grid)
    lim = lim or float(np.quantile(np.abs(xs), 0.995)) * 1.1
    fig = Figure(figsize=(4, 4), dpi=80)
    ax = fig.subplots()
    dots = ax.scatter(xs[0, :, 0], xs[0, :, 1], s=2, alpha=0.5, color="tab:blue")
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    title = ax.set_title("")

    def draw(k):
        dots.set_offsets(xs[k])
        title.set_text(f"t = {t_grid[k]:.2f}  (step {k} of {len(xs) - 1})")
        return dots, title

    _save(fig, draw, len(xs), path, fps)


def animate_images(path, xs, rows, t_grid=None, fps=8):
    """GIF of an image grid: frame k tiles xs[k] (B, H, W[, C]) in [0, 1] into `rows` rows."""
    from matplotlib.figure import Figure

    xs = _check(xs, "animate_images")  # (N + 1, B, H, W[, C])
    t_grid = np.linspace(0, 1, len(xs)) if t_grid is None else np.asarray(t_grid)
    first = tile_images(xs[0], rows)
    height, width = first.shape[:2]
    scale = max(1.0, 320 / max(height, width))  # small images get bigger pixels
    fig = Figure(figsize=(width * scale / 80, height * scale / 80 + 0.3), dpi=80)
    ax = fig.add_axes((0, 0, 1, height / (height + 0.3 * 80 / scale)))
    ax.set_axis_off()
    gray = first.ndim == 2
    im = ax.imshow(first, cmap="gray" if gray else None, vmin=0, vmax=1,
                   interpolation="nearest")
    title = fig.text(0.5, 0.995, "", ha="center", va="top", fontsize=9)

    def draw(k):
        im.set_data(tile_images(xs[k], rows))
        title.set_text(f"t = {t_grid[k]:.2f}  (step {k} of {len(xs) - 1})")
        return im, title

    _save(fig, draw, len(xs), path, fps)
