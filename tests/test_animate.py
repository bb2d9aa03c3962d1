"""--animate: GIFs of sampling, one frame per solver step (fm_numpy/ and fm_torch/animate.py)."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from fm_numpy.animate import animate_images, animate_points, tile_images
from fm_torch.animate import animate_images as torch_animate_images


def _frames(path):
    """Every frame of a GIF as an RGB array, and their count."""
    im = Image.open(path)
    frames = []
    for k in range(im.n_frames):
        im.seek(k)
        frames.append(np.asarray(im.convert("RGB"), dtype=np.int16))
    return frames


def test_points_gif_has_a_frame_per_step_and_moves(tmp_path):
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((300, 2))  # (B, 2)
    x1 = 2 * np.sign(rng.standard_normal((300, 2)))  # the corners of a square
    t = np.linspace(0, 1, 6)
    xs = t[:, None, None] * x1 + (1 - t[:, None, None]) * x0  # (6, B, 2)
    path = tmp_path / "flow.gif"
    animate_points(path, xs, t)
    frames = _frames(path)
    assert len(frames) == len(t)  # the held last frame merges into one longer frame
    assert np.abs(frames[0] - frames[-1]).mean() > 1  # the particles moved
    assert [p for p in os.listdir(tmp_path) if p.startswith(".tmp")] == []  # renamed


def test_image_gif_last_frame_shows_the_last_state(tmp_path):
    rng = np.random.default_rng(1)
    x1 = np.zeros((4, 8, 8))
    x1[:, 2:6, 3:5] = 1  # a bar
    xs = np.stack([rng.random((4, 8, 8)), 0.5 * x1, x1])  # (3, B, H, W)
    path = tmp_path / "grid.gif"
    animate_images(path, xs, rows=2)
    frames = _frames(path)
    assert len(frames) == 3
    last = frames[-1].mean(axis=-1)  # grey
    tiled = tile_images(x1, 2)  # (2 * 9 + 1, 2 * 9 + 1)
    # the image is scaled up: compare the bar's share of pixels, not pixels
    bright = (last > 128).mean()
    assert abs(bright - (tiled > 0.5).mean()) < 0.08


def test_torch_images_in_model_space_become_unit_pixels(tmp_path):
    xs = torch.full((2, 3, 3, 5, 7), -1.0)  # (N + 1, B, C, H, W): black
    xs[1] = 1.0  # white
    path = tmp_path / "rgb.gif"
    torch_animate_images(path, xs, rows=1)
    frames = _frames(path)
    assert frames[0].mean() < frames[-1].mean()


@pytest.mark.parametrize("xs, match", [
    (np.zeros((1, 4, 2)), "at least 2 grid times"),
    (np.full((3, 4, 2), np.nan), "NaN"),
    (np.zeros((3, 4, 3)), "2-D points"),
])
def test_bad_trajectories_get_one_line(tmp_path, xs, match):
    with pytest.raises(ValueError, match=match):
        animate_points(tmp_path / "x.gif", xs)
    assert not (tmp_path / "x.gif").exists()
