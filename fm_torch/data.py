"""Data as tensors: MNIST scaled to [-1, 1] and pools of 2-D toy points, sharded per rank,
and the data sources the training loop (fm_torch/loop.py) draws its batches from.

The arrays come from fm_numpy.data (the package file or IDX files; the seeded toy
generators), so both packages train on the same numbers.

A source has `.shape` (one sample, (D,) or (C, H, W)), `.num_classes` (int or None),
`.scaling` (None: the arrays are in model space) and `.batch(draws, B) -> (x1, y, x0)`:
x1 (B, *shape), y (B,) or None, x0 (B, *shape) for reflow pairs, else None. Each holds the
shard of its rank only (every world_size-th item from rank), and `.to(device)` moves it.
    ArraySource(x, y=None, scaling=None)   idx = draws.integers("idx", N, (B,)), x1 = x[idx]
    ToySource(name, pool, seed)            a fixed pool of 2-D toy points (the stream of older runs)
    MnistSource(split, data_dir, n_train)  MNIST as 2 image - 1, 10 classes
    PairSource(x0, x1, y)                  reflow pairs: x1[idx], y[idx] and x0[idx]
`open_data(spec, ...)` gives the source of a name ("mnist" or a toy set).
"""

import numpy as np
import torch

from fm_numpy.data import TOY_DATASETS, load_mnist, sample_toy
from fm_numpy.sources import load_pairs

__all__ = ["load_mnist_tensors", "toy_tensor", "shard", "DATASETS", "ArraySource", "ToySource",
           "MnistSource", "PairSource", "open_data", "open_user_data"]

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


class ArraySource:
    """x (N, *shape) and labels y (N,) or None: a tensor, or a numpy array (memory-mapped is
    fine: only the drawn rows are read) whose rows pass through scaling.encode per batch.

    num_classes defaults to max(y) + 1. rank/world_size keep every world_size-th item.
    """

    def __init__(self, x, y=None, scaling=None, num_classes=None, rank=0, world_size=1):
        x, y = shard(x, y, rank, world_size)
        self.x, self.y, self.scaling = x, y, scaling
        if y is not None and not torch.is_tensor(y):
            self.y = torch.as_tensor(np.asarray(y), dtype=torch.long)
        if num_classes is None and self.y is not None:
            num_classes = int(self.y.max()) + 1
        self.num_classes = None if num_classes is None else int(num_classes)
        self.shape = tuple(int(s) for s in x.shape[1:])
        self.device = x.device if torch.is_tensor(x) else torch.device("cpu")
        self.dtype = x.dtype if torch.is_tensor(x) else torch.float32

    def __len__(self):
        return len(self.x)

    def to(self, device):
        """This source with its tensors on `device` (batches are then drawn there)."""
        self.device = torch.device(device)
        if torch.is_tensor(self.x):
            self.x = self.x.to(self.device)
        if self.y is not None:
            self.y = self.y.to(self.device)
        return self

    def _rows(self, idx):
        if torch.is_tensor(self.x):
            return self.x[idx]  # (B, *shape)
        rows = self.x[idx.cpu().numpy()]  # (B, *shape), read from the (mapped) file
        if self.scaling is not None:
            rows = self.scaling.encode(rows)
        return torch.as_tensor(np.asarray(rows), dtype=self.dtype).to(self.device)

    def batch(self, draws, B):
        idx = draws.integers("idx", len(self.x), (B,)).to(self.device)  # (B,)
        return self._rows(idx), (None if self.y is None else self.y[idx]), None


class ToySource(ArraySource):
    """A fixed pool of `pool` points of the 2-D toy set `name` (seeded), float32."""

    def __init__(self, name, pool=100_000, seed=0, rank=0, world_size=1):
        super().__init__(toy_tensor(name, pool, seed=seed), rank=rank, world_size=world_size)
        self.name = name


class MnistSource(ArraySource):
    """MNIST x1 = 2 image - 1 (N, 1, 28, 28) float32 with labels, the first n_train images."""

    def __init__(self, split="train", data_dir=None, n_train=None, rank=0, world_size=1):
        x1, y = load_mnist_tensors(split, data_dir=data_dir)
        if n_train is not None:
            x1, y = x1[:n_train], y[:n_train]
        super().__init__(x1, y, num_classes=10, rank=rank, world_size=world_size)


class PairSource(ArraySource):
    """Fixed reflow pairs (x0, x1 [, y]): batches give x1[idx], y[idx] and x0[idx]."""

    def __init__(self, x0, x1, y=None, num_classes=None, rank=0, world_size=1):
        super().__init__(x1, y, num_classes=num_classes, rank=rank, world_size=world_size)
        self.x0, _ = shard(x0, None, rank, world_size)

    @classmethod
    def from_file(cls, path, num_classes=None, rank=0, world_size=1):
        """The pairs of a pairs .npz (fm_numpy.sources.save_pairs) as float32 tensors."""
        x0, x1, y, _ = load_pairs(path)
        y = None if y is None else torch.from_numpy(y).long()
        return cls(torch.from_numpy(x0).float(), torch.from_numpy(x1).float(), y,
                   num_classes, rank, world_size)

    def to(self, device):
        super().to(device)
        self.x0 = self.x0.to(self.device)
        return self

    def batch(self, draws, B):
        idx = draws.integers("idx", len(self.x), (B,)).to(self.device)  # (B,)
        y = None if self.y is None else self.y[idx]
        return self._rows(idx), y, self.x0[idx]  # x0: the teacher's noise of the pairs


def open_data(spec, data_dir=None, n_train=None, toy_pool=100_000, seed=0, rank=0,
              world_size=1, label_column=None, val_fraction=None):
    """The source of a data set name ("mnist" or one of the toy sets) or of the user's file
    or image folder (fm_torch/datafiles.py: this rank's shard of the training split, the
    split seeded by seed, fm_numpy's split and scaling; .info is the run's data.json)."""
    from fm_numpy.userdata import is_data_file

    if is_data_file(spec):
        return open_user_data(spec, label_column, val_fraction, seed, rank, world_size)
    if spec == "mnist":
        return MnistSource("train", data_dir, n_train, rank, world_size)
    if spec in TOY_DATASETS:
        return ToySource(spec, toy_pool, seed, rank, world_size)
    raise ValueError(f"unknown data set {spec!r}; choose one of {', '.join(DATASETS)}")


def open_user_data(spec, label_column=None, val_fraction=None, seed=0, rank=0, world_size=1):
    """fm_torch.data.ArraySource of this rank's shard of the training split of the user's
    file (fm_numpy/userdata.py: the same split and scaling as fm_numpy's, from the same
    seed); .shape is the model-space sample shape, .info the run folder's data.json."""
    from fm_numpy.userdata import UserData

    data = UserData(spec, label_column, val_fraction, seed)
    y = data.labels(data.train_idx)
    # the source shards x[rank::world] itself: a RowView of those rows, nothing read yet
    src = ArraySource(data.train, None if y is None else torch.from_numpy(y), data.scaling,
                      num_classes=data.rec.num_classes, rank=rank, world_size=world_size)
    src.shape = data.rec.shape  # (D,) or (C, H, W), whatever the raw layout
    src.info = data.info()
    return src
