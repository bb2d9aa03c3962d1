"""Data sources for the training loop (fm_numpy/loop.py; docs/training_core.md).

A data source:
    .shape         one sample's shape in model space: (D,) or (C, H, W)
    .num_classes   int or None
    .scaling       .encode(raw) -> model space, .decode(z) -> the data's units, .to_json()
    .batch(draws, B) -> (x1 (B, D) flat, y (B,) or None, x0 (B, D) or None)
ToySource (fresh toy samples each batch, the stream of older runs), ArraySource (indices
"idx" into a possibly memory-mapped raw array, scaling.encode per batch) and PairSource
(reflow's fixed (x0, x1) pairs, with their .npz reader and writer). MnistSource and
open_data are in fm_numpy/data.py, which re-exports all of these.
"""

import json

import numpy as np

from fm_numpy.io import load_npz, save_npz
from fm_numpy.toys import TOY_DATASETS

__all__ = ["IdentityScaling", "AffineScaling", "ToySource", "ArraySource", "PairSource",
           "save_pairs", "load_pairs"]


class IdentityScaling:
    """z = x: the data are already in model space."""

    def encode(self, x):
        return x

    def decode(self, z):
        return z

    def to_json(self):
        return {"kind": "identity"}


class AffineScaling:
    """z = x * scale + shift, x = (z - shift) / scale (MNIST: scale 2, shift -1, [0, 1] ->
    [-1, 1]); the arithmetic of the raw array's dtype, so float32 images give what the
    older loop computed for the whole set at once."""

    def __init__(self, scale, shift):
        self.scale, self.shift = float(scale), float(shift)

    def encode(self, x):
        return x * self.scale + self.shift

    def decode(self, z):
        return (z - self.shift) / self.scale

    def to_json(self):
        return {"kind": "affine", "scale": self.scale, "shift": self.shift}


class _GeneratorView:
    """The few numpy Generator methods the toy sets call, made from named draws with the
    same values: uniform(lo, hi, n) = lo + (hi - lo) random(n) bit for bit."""

    def __init__(self, draws, name):
        self.draws, self.name = draws, name

    def uniform(self, low, high, n):
        return low + (high - low) * self.draws.uniform(self.name, (n,), np.float64)  # (n,)

    def integers(self, low, high, n):
        return low + self.draws.integers(self.name, high - low, (n,))  # (n,)

    def standard_normal(self, shape):
        return self.draws.normal(self.name, shape, np.float64)


class ToySource:
    """A 2-D toy set, fresh samples each batch (draws named "toy")."""

    num_classes = None
    shape = (2,)
    scaling = IdentityScaling()

    def __init__(self, name, dtype=np.float32):
        if name not in TOY_DATASETS:
            raise ValueError(f"unknown data set {name!r}; choose mnist or one of "
                             f"{', '.join(TOY_DATASETS)}")
        self.name, self.dtype = name, np.dtype(dtype)

    def batch(self, draws, B):
        x1 = TOY_DATASETS[self.name](int(B), _GeneratorView(draws, "toy"))  # (B, 2)
        return x1.astype(self.dtype), None, None


def _model_shape(raw_shape):
    """(D,) for vectors, (1, H, W) for grey images, (C, H, W) as given otherwise."""
    if len(raw_shape) == 1:
        return tuple(raw_shape)
    if len(raw_shape) == 2:
        return (1, *raw_shape)
    return tuple(raw_shape)


class ArraySource:
    """Samples x (N, ...) (any array, memory-mapped too) with optional integer labels y (N,);
    a batch draws idx = draws.integers("idx", N, (B,)) and encodes only those rows."""

    def __init__(self, x, y=None, scaling=None, dtype=np.float32, num_classes=None):
        if not hasattr(x, "shape") or len(x.shape) < 2 or x.shape[0] < 1:
            raise ValueError(f"x must be an array of at least one sample, (N, ...), got "
                             f"shape {getattr(x, 'shape', None)}")
        self.x, self.dtype = x, np.dtype(dtype)
        self.scaling = IdentityScaling() if scaling is None else scaling
        self.shape = _model_shape(x.shape[1:])
        self.y = None
        self.num_classes = None
        if y is not None:
            y = np.asarray(y)
            if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
                raise ValueError(f"y must hold {len(x)} non-negative integer labels, got "
                                 f"shape {y.shape}, dtype {y.dtype}")
            self.y = y.astype(np.int64)
            self.num_classes = int(num_classes or int(self.y.max()) + 1)

    @property
    def dim(self):
        return int(np.prod(self.shape))

    def batch(self, draws, B):
        idx = draws.integers("idx", len(self.x), (int(B),))  # (B,)
        x1 = self.scaling.encode(self.x[idx])  # (B, ...) in model space
        x1 = x1.reshape(len(idx), -1).astype(self.dtype)  # (B, D)
        return x1, (None if self.y is None else self.y[idx]), None


def save_pairs(path, x0, x1, y=None, meta=None):
    """pairs .npz: x0, x1 (N, ...), y (N,) or empty, meta (JSON); written atomically."""
    save_npz(path, x0=np.asarray(x0), x1=np.asarray(x1),
             y=np.zeros(0, np.int64) if y is None else np.asarray(y, dtype=np.int64),
             meta=np.array(json.dumps(meta or {})))


def load_pairs(path):
    """(x0, x1, y or None, meta) of a pairs .npz; ValueError naming what is wrong."""
    arrays = load_npz(path)
    for key in ("x0", "x1", "y", "meta"):
        if key not in arrays:
            raise ValueError(f"{path} is not a pairs file (no {key!r})")
    x0, x1, y = arrays["x0"], arrays["x1"], arrays["y"]
    if x0.shape != x1.shape or len(x0) < 1:
        raise ValueError(f"{path}: x0 {x0.shape} and x1 {x1.shape} must be equal, non-empty")
    if y.size and y.shape != (len(x0),):
        raise ValueError(f"{path}: y must have shape ({len(x0)},), got {y.shape}")
    if not (np.all(np.isfinite(x0)) and np.all(np.isfinite(x1))):
        raise ValueError(f"{path}: the pairs hold non-finite values")
    return x0, x1, (y if y.size else None), json.loads(str(arrays["meta"]))


class PairSource:
    """Fixed (x0, x1 [, y]) pairs (reflow): a batch is idx = draws.integers("idx", N, (B,))
    and returns the teacher's noise x0[idx] with x1[idx]."""

    scaling = IdentityScaling()

    def __init__(self, path, dtype=np.float32):
        x0, x1, y, meta = load_pairs(path)
        self.x0 = x0.reshape(len(x0), -1).astype(dtype)  # (N, D)
        self.x1 = x1.reshape(len(x1), -1).astype(dtype)  # (N, D)
        self.y = y
        self.shape = (self.x1.shape[1],)
        self.num_classes = meta.get("num_classes")

    def batch(self, draws, B):
        idx = draws.integers("idx", len(self.x1), (int(B),))  # (B,)
        y = None if self.y is None else self.y[idx]
        return self.x1[idx], y, self.x0[idx]
