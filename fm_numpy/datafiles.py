"""The user's own data files: readers, validation and the held-out split.

`read_data(path, label_column=None)` reads
- vectors: `.npy` (N, D); `.npz` with `x` (N, D) and optional integer `y` (N,); `.csv` with
  numeric columns, header optional, `label_column` naming the integer label column (or its
  0-based index when there is no header);
- images: `.npy` / `.npz` of shape (N, H, W), (N, H, W, C) or (N, C, H, W) (C in 1, 3, 4;
  when both could be channels, channels last), uint8 or float; a folder of PNG / JPEG
  files (fm_numpy.imagefolder), flat or one subfolder per class;
and returns a `DataFile`. A `.npy` is memory-mapped, never loaded whole: its rows are read
where they are indexed. Bad data raise ValueError with one line naming the file and the
problem (NaN or Inf, ragged or non-numeric CSV rows, a label that is not an integer, a file
that is not what its extension says, ...), before anything is written.

Labels are kept as class indices 0..K-1 in sorted order of the label values (folders: of
the folder names); `label_values` maps an index back to the data's own label.
"""

import mmap
import os
from dataclasses import dataclass, field

import numpy as np

__all__ = ["DataFile", "RowView", "read_data", "split_indices", "sniff", "DATA_SUFFIXES"]

DATA_SUFFIXES = (".npy", ".npz", ".csv")
_MAGIC = {".npy": b"\x93NUMPY", ".npz": b"PK\x03\x04", ".png": b"\x89PNG\r\n\x1a\n",
          ".jpg": b"\xff\xd8\xff", ".gif": b"GIF8", ".gz": b"\x1f\x8b"}
_CHUNK = 4096  # rows checked at a time


@dataclass
class DataFile:
    """What a reader found: raw rows, labels, and how to read them as samples."""

    path: str
    kind: str  # "vectors" or "images"
    x: object  # raw rows (N, ...): ndarray, np.memmap or RowView; never scaled
    y: np.ndarray | None = None  # (N,) int64 class indices 0..K-1, or None
    class_names: list | None = None  # K names (str), index order
    label_values: list | None = None  # K original label values (int), index order
    layout: str | None = None  # images: "NHW", "NHWC" or "NCHW" (the raw array's)
    shape: tuple = ()  # one sample in model space: (D,) or (C, H, W)
    dtype: str = "float64"  # the raw dtype
    eight_bit: bool = False  # images stored as uint8 0-255
    extra: dict = field(default_factory=dict)  # reader notes (e.g. the image cache file)

    @property
    def num_classes(self):
        return None if self.y is None else len(self.class_names)

    def record(self):
        """JSON-able description for the run folder (no arrays)."""
        return {"path": os.path.abspath(self.path), "kind": self.kind, "n": len(self.x),
                "shape": list(self.shape), "layout": self.layout, "dtype": self.dtype,
                "eight_bit": self.eight_bit, "class_names": self.class_names,
                "label_values": self.label_values}


class RowView:
    """Rows idx of x (possibly memory-mapped) without copying them: view[i] = x[idx[i]].

    For an .npy memory-mapped by np.load, rows are read from the file with os.pread at
    their offsets: the OS page cache holds the file, and this process only the rows read,
    so resident memory stays a batch, not the file, however long the run. (Reading through
    the map itself would count every touched page, and the kernel maps 16 pages around each
    fault: 300 random batches of 512 rows held 1.4 GB of a 2 GB file. bench_memmap.py.)
    Other arrays are indexed as they are; for any other memory map, its pages are dropped
    from this process every `release_every` reads (madvise MADV_DONTNEED).
    view[i], view[a:b] and view[index array] read rows; a slice with a step, view[a::k], is
    a RowView of those rows, read nothing (as numpy's strided slices are views): so
    x[rank::world], the shard of a rank, costs nothing.
    """

    def __init__(self, x, idx=None, release_every=64):
        self.x = x
        self.idx = np.arange(len(x)) if idx is None else np.asarray(idx, dtype=np.int64)
        self.release_every, self._reads = int(release_every), 0
        self.shape = (len(self.idx),) + tuple(x.shape[1:])
        self.dtype, self.ndim = x.dtype, len(self.shape)
        self._file, self._fd = None, None
        if (isinstance(x, np.memmap) and isinstance(x.base, mmap.mmap) and x.filename
                and x.flags.c_contiguous):  # the whole mapped array of a file, row-major
            self._file = (x.filename, int(x.offset), x.dtype.itemsize * int(np.prod(
                x.shape[1:], dtype=np.int64)))

    def __len__(self):
        return len(self.idx)

    def _pread(self, rows, contiguous):
        path, offset, row_bytes = self._file
        if self._fd is None:
            self._fd = os.open(path, os.O_RDONLY)
        span = int(rows[-1] - rows[0]) + 1 if len(rows) else 0
        if not contiguous and len(rows) > 1 and 0 < span <= 4 * len(rows) and np.all(
                np.diff(rows) > 0):  # sorted and dense (a split's chunk): read the span once
            block = self._pread(np.arange(rows[0], rows[-1] + 1), True)  # (span, ...)
            return block[rows - rows[0]]
        if contiguous:
            n = len(rows) * row_bytes
            buf = os.pread(self._fd, n, offset + int(rows[0]) * row_bytes) if len(rows) else b""
        else:
            buf = b"".join([os.pread(self._fd, row_bytes, offset + int(r) * row_bytes)
                            for r in rows])
        if len(buf) != len(rows) * row_bytes:
            raise ValueError(f"{path} is shorter than its header says (truncated?)")
        return np.frombuffer(bytearray(buf), self.dtype).reshape(len(rows), *self.shape[1:])

    def __getitem__(self, key):
        if isinstance(key, slice) and key.step is not None:
            return self.rows(np.arange(len(self.idx))[key])
        rows = self.idx[key]
        contiguous = rows.ndim == 1 and len(rows) > 0 and bool(np.all(np.diff(rows) == 1))
        if rows.ndim == 0:
            return self[np.atleast_1d(key)][0]
        if self._file is not None:
            return self._pread(rows, contiguous)
        if contiguous:
            out = np.array(self.x[rows[0]:rows[-1] + 1])  # one slice read
        else:
            out = np.asarray(self.x[rows])  # fancy indexing copies just these rows
        self._reads += 1
        if self._reads % self.release_every == 0:
            self.release()
        return out

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

    def __getstate__(self):  # a copy opens its own file descriptor
        return {**self.__dict__, "_fd": None}

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def rows(self, idx):
        """A RowView of rows idx of this view (a split, a rank's shard)."""
        return RowView(self.x, self.idx[np.asarray(idx, dtype=np.int64)], self.release_every)

    def release(self):
        m = getattr(self.x, "_mmap", None)
        if m is not None and hasattr(m, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            m.madvise(mmap.MADV_DONTNEED)


def sniff(head):
    """The format whose magic bytes start `head` ('.npy', '.png', ...), or None."""
    for suffix, magic in _MAGIC.items():
        if head.startswith(magic) or (suffix == ".npz" and head.startswith(b"PK\x05\x06")):
            return suffix
    return None


def _check_magic(path, suffix):
    with open(path, "rb") as f:
        head = f.read(4096)
    found = sniff(head)
    if suffix == ".csv":
        if found is not None or b"\x00" in head:
            what = f"it starts like a {found} file" if found else "it holds binary bytes"
            raise ValueError(f"{path} is not a CSV text file ({what})")
        return
    if found != suffix:
        what = f"it starts like a {found} file" if found else "its first bytes are not a " \
               f"{suffix} header"
        raise ValueError(f"{path} is not a {suffix} file ({what})")


def _check_finite(path, x):
    if np.dtype(x.dtype).kind not in "fc":
        return
    view = x if isinstance(x, RowView) else RowView(x)
    for lo in range(0, len(view), _CHUNK):
        block = view[lo:lo + _CHUNK]  # (n, ...)
        bad = ~np.isfinite(block.reshape(len(block), -1)).all(axis=1)
        if bad.any():
            row = lo + int(np.flatnonzero(bad)[0])
            raise ValueError(f"{path}: row {row} holds NaN or Inf values")
    view.release()


def _labels(path, y, n, what="y"):
    """Integer labels (N,) -> (indices 0..K-1, label values)."""
    y = np.asarray(y)
    if y.shape != (n,):
        raise ValueError(f"{path}: labels {what} must have shape ({n},), got {y.shape}")
    if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        y = y.astype(np.int64)  # integral floats (a CSV's 1.0) are integers
    if y.dtype.kind not in "iub":
        raise ValueError(f"{path}: labels {what} must be integers, got {y.dtype} values")
    values, index = np.unique(y.astype(np.int64), return_inverse=True)
    return index.astype(np.int64), [int(v) for v in values]


def _from_array(path, x, y=None):
    """A DataFile for an array of vectors (N, D) or images (N, H, W[, C]) / (N, C, H, W)."""
    if x.dtype.kind not in "fiub" or x.dtype.kind == "b":
        raise ValueError(f"{path}: the data must be numbers, got dtype {x.dtype}")
    if x.ndim < 2 or x.ndim > 4 or 0 in x.shape:
        raise ValueError(f"{path}: expected vectors (N, D) or images (N, H, W), (N, H, W, C) "
                         f"or (N, C, H, W), got shape {x.shape}")
    rec = DataFile(path, "vectors", x, dtype=str(x.dtype))
    if x.ndim == 2:
        rec.shape = (x.shape[1],)
    else:
        if x.dtype != np.uint8 and x.dtype.kind != "f":
            raise ValueError(f"{path}: images must be uint8 or float, got {x.dtype}")
        if x.ndim == 3:
            layout, shape = "NHW", (1,) + x.shape[1:]
        elif x.shape[3] in (1, 3, 4):  # channels last wins a tie, as PIL and matplotlib
            layout, shape = "NHWC", (x.shape[3],) + x.shape[1:3]
        elif x.shape[1] in (1, 3, 4):
            layout, shape = "NCHW", x.shape[1:]
        else:
            raise ValueError(f"{path}: a 4-D array needs 1, 3 or 4 channels first or last, "
                             f"got shape {x.shape}")
        rec.kind, rec.layout, rec.shape = "images", layout, tuple(int(s) for s in shape)
        rec.eight_bit = x.dtype == np.uint8
    _check_finite(path, x)
    if y is not None:
        rec.y, rec.label_values = _labels(path, y, len(x))
        rec.class_names = [str(v) for v in rec.label_values]
    return rec


def read_data(path, label_column=None, cache_dir=None):
    """Read the user's data file or image folder at path into a DataFile (see module doc)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        if label_column is not None:
            raise ValueError(f"{path}: --label-column is for CSV files; an image folder's "
                             "labels are its subfolders")
        from fm_numpy.imagefolder import read_image_folder

        x, y, names, extra = read_image_folder(path, cache_dir=cache_dir)
        rec = _from_array(path, x)
        rec.extra = extra
        if y is not None:
            rec.y, rec.class_names, rec.label_values = y, names, list(range(len(names)))
        return rec
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such data file or folder: {path}")
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in DATA_SUFFIXES:
        raise ValueError(f"{path}: unknown data file type {suffix or '(no extension)'!r}; use "
                         ".npy, .npz, .csv or a folder of PNG/JPEG images")
    if label_column is not None and suffix != ".csv":
        raise ValueError(f"{path}: --label-column is for CSV files; put labels in an .npz "
                         "as y")
    _check_magic(path, suffix)
    if suffix == ".csv":
        from fm_numpy.csvfile import read_csv

        x, y = read_csv(path, label_column)
        return _from_array(path, x, y)
    try:
        if suffix == ".npy":
            x = np.load(path, mmap_mode="r", allow_pickle=False)  # never loaded whole
            return _from_array(path, x)
        with np.load(path, allow_pickle=False) as f:
            if "x" not in f.files:
                raise ValueError(f"{path}: an .npz needs an array named x (found: "
                                 f"{', '.join(f.files) or 'none'})")
            x, y = f["x"], (f["y"] if "y" in f.files else None)
    except ValueError as e:
        if str(e).startswith(path):
            raise
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path} is not a readable {suffix} file ({reason})") from None
    except Exception as e:  # noqa: BLE001  (a torn zip or header fails in many ways)
        raise ValueError(f"{path} is not a readable {suffix} file ({type(e).__name__})") \
            from None
    return _from_array(path, x, y)


def split_indices(n, val_fraction, seed=0):
    """(train, val) row indices, each sorted: a seeded permutation's first round(f n) rows
    are held out. Raises ValueError when a non-empty split would hold fewer than 2 rows."""
    f = float(val_fraction)
    if not 0 <= f < 1:
        raise ValueError(f"--val-fraction must lie in [0, 1), got {val_fraction}")
    n_val = int(round(f * n))
    if (f > 0 and n_val < 2) or n - n_val < 2:
        raise ValueError(f"{n} samples are too few for --val-fraction {f:g}: the held-out "
                         f"split would hold {n_val} and training {n - n_val} (need 2 each)")
    perm = np.random.default_rng(seed).permutation(n)  # (N,)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])
