"""Scalings between the data's own units (raw) and model space, and back.

A scaling is fitted once on the training split and recorded in the run folder (to_json),
so `sample` gives samples back in the data's units (decode). Three kinds:

- `Identity()`: z = x (toy sets, data already in model units).
- `Standardize(mean, std)`: vectors, per feature, z = (x - mean) / std; a constant feature
  (std = 0) keeps std = 1, so it stays constant instead of dividing by zero.
- `MinMax(lo, hi, shape, layout, eight_bit)`: images to [-1, 1], z = 2 (x - lo) / (hi - lo)
  - 1; 8-bit images use z = x / 127.5 - 1 and decode to uint8 with rounding and clipping.
  encode also moves the channels first: raw (B, H, W), (B, H, W, C) or (B, C, H, W) ->
  model space (B, C, H, W); decode gives (B, H, W) when the data were (N, H, W) and
  (B, H, W, C) otherwise.

encode(raw, dtype=float64) works on one batch of raw rows (a source casts to its own dtype
after); decode(z) takes (B, *shape) or flat
(B, prod(shape)) model-space rows. Fitting reads the rows in chunks (a memory-mapped array
is never loaded whole).
"""

import numpy as np

__all__ = ["Identity", "Standardize", "MinMax", "scaling_from_json", "LAYOUTS"]

LAYOUTS = ("NHW", "NHWC", "NCHW")
_CHUNK = 4096  # rows read at a time when fitting


def _chunks(rows, chunk=_CHUNK):
    for lo in range(0, len(rows), chunk):
        yield np.asarray(rows[lo:lo + chunk], dtype=np.float64)


class Identity:
    """z = x: for data already in model units."""

    kind = "identity"

    def encode(self, raw, dtype=np.float64):
        return np.asarray(raw, dtype=dtype)

    def decode(self, z):
        return np.asarray(z)

    def log_abs_det(self):
        """log |det dz/dx| = 0 (the change of variables of a likelihood)."""
        return 0.0

    def to_json(self):
        return {"kind": self.kind}


class Standardize:
    """Per-feature z = (x - mean) / std, mean and std of the training split (vectors)."""

    kind = "standardize"

    def __init__(self, mean, std, dtype="float64"):
        self.mean = np.asarray(mean, dtype=np.float64)  # (D,)
        self.std = np.asarray(std, dtype=np.float64)  # (D,)
        if self.mean.ndim != 1 or self.mean.shape != self.std.shape or np.any(self.std <= 0):
            raise ValueError("Standardize needs mean and std of one shape (D,), std > 0")
        self.dtype = str(dtype)  # the raw data's dtype; decode returns float of it

    @classmethod
    def fit(cls, rows, dtype=None):
        """Mean and (population) std per feature of rows (N, D), chunk by chunk.

        Chunks are merged with Chan et al.'s update of (count, mean, M2), which stays
        accurate where summing x and x^2 would cancel.
        """
        count, mean, m2 = 0, None, None
        for x in _chunks(rows):  # (n, D)
            n, mu = len(x), x.mean(axis=0)
            c2 = ((x - mu) ** 2).sum(axis=0)
            if mean is None:
                count, mean, m2 = n, mu, c2
                continue
            delta = mu - mean
            total = count + n
            mean = mean + delta * n / total
            m2 = m2 + c2 + delta ** 2 * count * n / total
            count = total
        if mean is None:
            raise ValueError("cannot fit a scaling to zero rows")
        std = np.sqrt(m2 / count)
        std[std == 0] = 1.0  # a constant feature: keep it, do not divide by zero
        return cls(mean, std, dtype or np.asarray(rows[:1]).dtype)

    def encode(self, raw, dtype=np.float64):
        x = np.asarray(raw, dtype=np.float64)  # (B, D)
        return ((x - self.mean) / self.std).astype(dtype)

    def decode(self, z):
        x = np.asarray(z, dtype=np.float64) * self.std + self.mean  # (B, D)
        out = np.dtype(self.dtype) if np.dtype(self.dtype).kind == "f" else np.float64
        return x.astype(out)

    def log_abs_det(self):
        """log |det dz/dx| = -sum_d log std_d, so log p_x(x) = log p_z(z) + log_abs_det()."""
        return float(-np.sum(np.log(self.std)))

    def to_json(self):
        return {"kind": self.kind, "mean": self.mean.tolist(), "std": self.std.tolist(),
                "dtype": self.dtype}


class MinMax:
    """Images to [-1, 1]: z = 2 (x - lo) / (hi - lo) - 1, channels first in model space."""

    kind = "minmax"

    def __init__(self, lo, hi, shape, layout, eight_bit, dtype="uint8"):
        self.lo, self.hi = float(lo), float(hi)
        self.shape = tuple(int(s) for s in shape)  # (C, H, W), model space
        self.layout, self.eight_bit, self.dtype = layout, bool(eight_bit), str(dtype)
        if layout not in LAYOUTS or len(self.shape) != 3 or not self.hi > self.lo:
            raise ValueError(f"MinMax needs lo < hi, shape (C, H, W) and a layout in "
                             f"{LAYOUTS}, got {lo}, {hi}, {shape}, {layout}")
        if layout == "NHW" and self.shape[0] != 1:
            raise ValueError("layout NHW has one channel")

    @classmethod
    def fit(cls, rows, shape, layout):
        """8-bit rows: [0, 255]. Float rows: [0, 1] when the data lie in it, else their range."""
        dtype = np.asarray(rows[:1]).dtype
        if dtype == np.uint8:
            return cls(0.0, 255.0, shape, layout, True, "uint8")
        lo, hi = np.inf, -np.inf
        for x in _chunks(rows):
            lo, hi = min(lo, float(x.min())), max(hi, float(x.max()))
        if lo > hi:
            raise ValueError("cannot fit a scaling to zero rows")
        if lo >= 0 and hi <= 1:
            lo, hi = 0.0, 1.0
        elif hi == lo:
            hi = lo + 1.0  # constant images: any positive width maps them to -1
        return cls(lo, hi, shape, layout, False, dtype)

    def _to_model(self, x, layout):  # raw (B, ...) -> (B, C, H, W)
        if layout == "NHW":
            return x[:, None]
        if layout == "NHWC":
            return x.transpose(0, 3, 1, 2)
        return x

    def encode(self, raw, dtype=np.float64):
        """Raw images in the data's layout, or as decode gives them ((B, H, W, C) for data
        stored channels first, so `evaluate --samples` reads `sample`'s files)."""
        x = np.asarray(raw)
        layout = self.layout
        if x.shape[1:] != self.raw_shape:
            c, h, w = self.shape
            if layout != "NCHW" or x.shape[1:] != (h, w, c):
                raise ValueError(f"images must be (B, {', '.join(map(str, self.raw_shape))}), "
                                 f"got {x.shape}")
            layout = "NHWC"  # a decoded sample of channels-first data
        if self.eight_bit:
            z = x.astype(np.float64) / 127.5 - 1  # (B, ...)
        else:
            z = 2 * (x.astype(np.float64) - self.lo) / (self.hi - self.lo) - 1
        return np.ascontiguousarray(self._to_model(z, layout), dtype=dtype)  # (B, C, H, W)

    @property
    def raw_shape(self):
        c, h, w = self.shape
        return {"NHW": (h, w), "NHWC": (h, w, c), "NCHW": (c, h, w)}[self.layout]

    def decode(self, z):
        """Model rows -> images (B, H, W) [layout NHW] or (B, H, W, C), in the data's units."""
        z = np.asarray(z, dtype=np.float64).reshape(-1, *self.shape)  # (B, C, H, W)
        if self.eight_bit:
            x = np.clip(np.rint((z + 1) * 127.5), 0, 255).astype(np.uint8)
        else:
            x = np.clip((z + 1) / 2 * (self.hi - self.lo) + self.lo, self.lo, self.hi)
            x = x.astype(self.dtype)
        return x[:, 0] if self.layout == "NHW" else x.transpose(0, 2, 3, 1)

    def to_json(self):
        return {"kind": self.kind, "lo": self.lo, "hi": self.hi, "shape": list(self.shape),
                "layout": self.layout, "eight_bit": self.eight_bit, "dtype": self.dtype}


def scaling_from_json(d):
    """The scaling that to_json() described (a run folder's record)."""
    kind = (d or {}).get("kind", "identity")
    if kind == "identity":
        return Identity()
    if kind == "standardize":
        return Standardize(d["mean"], d["std"], d.get("dtype", "float64"))
    if kind == "minmax":
        return MinMax(d["lo"], d["hi"], d["shape"], d["layout"], d["eight_bit"],
                      d.get("dtype", "uint8"))
    raise ValueError(f"unknown scaling kind {kind!r} in the run's record")
