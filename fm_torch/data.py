"""Data as tensors: MNIST scaled to [-1, 1] and pools of 2-D toy points, sharded per rank.

The arrays come from fm_numpy.data (the package file or IDX files; the seeded toy
generators), so both packages train on the same numbers.
"""

import numpy as np
import torch

from fm_numpy.data import TOY_DATASETS, load_mnist, sample_toy

__all__ = ["load_mnist_tensors", "toy_tensor", "shard", "DATASETS"]

DATASETS = ("mnist",) + tuple(TOY_DATASETS)


def load_mnist_tensors(split="train", data_dir=None, cache_dir=None):
    """MNIST as (x1 (N, 1, 28, 28) float32 in [-1, 1], y (N,) int64): x1 = 2 image - 1."""
    images, labels = load_mnist(split, data_dir=data_dir, cache_dir=cache_dir)
    x1 = torch.from_numpy(images).unsqueeze(1) * 2 - 1  # (N, 1, 28, 28)
    return x1, torch.from_numpy(labels)


def toy_tensor(name, n, seed=0):
    """A pool of n points of the 2-D toy set `name` (fm_numpy's generator, seeded): (n, 2)."""
    return torch.from_numpy(sample_toy(name, n, np.random.default_rng(seed), dtype=np.float32))


def shard(x, y, rank, world_size):
    """Rank `rank`'s share of (x, y): every world_size-th item starting at rank (y may be None)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must lie in [0, {world_size}), got {rank}")
    if len(x) < world_size:
        raise ValueError(f"{len(x)} items cannot be shared among {world_size} processes")
    return x[rank::world_size], (None if y is None else y[rank::world_size])
