"""2-D toy distributions drawn from a generator: (n, 2) float arrays, roughly centred with
unit-order scale. The functions call only rng.uniform, rng.integers and
rng.standard_normal, so a named-draws view (fm_numpy/sources.py) can stand in for rng.
"""

import numpy as np

__all__ = ["TOY_DATASETS", "sample_toy"]


def _moons(n, rng):
    n_upper = n // 2
    angle = np.concatenate([rng.uniform(0, np.pi, n_upper), rng.uniform(0, np.pi, n - n_upper)])
    upper = np.arange(n) < n_upper
    x = np.where(upper, np.cos(angle), 1 - np.cos(angle))
    y = np.where(upper, np.sin(angle), 0.5 - np.sin(angle))
    pts = np.stack([x - 0.5, y - 0.25], axis=1) * 1.5  # (n, 2)
    return pts + 0.05 * rng.standard_normal((n, 2))


def _eight_gaussians(n, rng):
    angles = 2 * np.pi * rng.integers(0, 8, n) / 8
    centres = 2.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)  # (n, 2)
    return centres + 0.1 * rng.standard_normal((n, 2))


def _checkerboard(n, rng):
    # 8 unit squares on a 4x4 board over [-2, 2]^2, alternate ones filled.
    x = rng.uniform(-2, 2, n)
    y = rng.uniform(0, 1, n) + rng.integers(0, 2, n) * 2 - 2  # in [-2, -1) or [0, 1)
    y = y + (np.floor(x) % 2)  # shift odd columns up by one
    return np.stack([x, y], axis=1)


def _two_spirals(n, rng):
    n_a = n // 2
    r = np.sqrt(rng.uniform(0, 1, n)) * 3 * np.pi
    sign = np.where(np.arange(n) < n_a, 1.0, -1.0)
    pts = sign[:, None] * np.stack([r * np.cos(r), r * np.sin(r)], axis=1) / (1.5 * np.pi)
    return pts + 0.05 * rng.standard_normal((n, 2))


def _circles(n, rng):
    radius = np.where(rng.uniform(0, 1, n) < 0.5, 1.0, 2.0)
    angle = rng.uniform(0, 2 * np.pi, n)
    pts = radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return pts + 0.05 * rng.standard_normal((n, 2))


TOY_DATASETS = {
    "moons": _moons,
    "8gaussians": _eight_gaussians,
    "checkerboard": _checkerboard,
    "spirals": _two_spirals,
    "circles": _circles,
}


def sample_toy(name, n, rng=None, dtype=np.float64):
    """Draw n points of the 2-D toy set `name` from the generator rng (or a seed)."""
    if name not in TOY_DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(TOY_DATASETS)}")
    if int(n) <= 0:
        raise ValueError(f"the number of samples must be positive, got {n}")
    rng = np.random.default_rng(rng)
    return TOY_DATASETS[name](int(n), rng).astype(dtype)
