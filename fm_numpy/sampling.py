"""Sampling many points in chunks: memory bounded by the chunk, not by the number of samples.

The ODE dx/dt = v(x, t) moves every row of a batch on its own (the MLP treats rows
independently), so integrating rows lo..hi of x0 alone gives rows lo..hi of the whole
batch's result. `sample_in_chunks` integrates `chunk` rows at a time and keeps only each
chunk's end state (odeint(..., only_last=True)); the source rows can be drawn chunk by
chunk too, and the results handed to a sink (`NpzStreamWriter` writes them straight into
an .npz), so neither x0 nor the samples need to exist whole. Smaller batches also run
faster on a CPU once a batch's activations no longer fit in the cache.

`check_output_fits` refuses, with one line, an output larger than the free disk space.
"""

import os
import zipfile

import numpy as np

from fm_numpy.io import atomic_path, check_disk
from fm_numpy.solvers import odeint

__all__ = ["DEFAULT_CHUNK", "sample_in_chunks", "check_output_fits", "NpzStreamWriter"]

DEFAULT_CHUNK = 1024


def _check_chunk(chunk):
    if isinstance(chunk, bool) or int(chunk) != chunk or chunk < 1:
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
    return int(chunk)


def sample_in_chunks(v, x0, t_grid, method="euler", chunk=DEFAULT_CHUNK, y=None, n=None,
                     sink=None, progress=None):
    """x(t_grid[-1]) for every row of x0, integrating `chunk` rows at a time.

    x0: an array (N, ...), or a callable draw(k) returning the next k rows (then n = N is
    required; drawing from one seeded generator chunk after chunk gives the rows one big
    draw would). v(x, t), or v(x, t, y[lo:hi]) when labels y (N,) are given.
    sink: None (the results are returned as one (N, ...) array) or a callable
    sink(x1_rows) given the end states in row order (then nothing is returned).
    progress: an optional callable progress(rows_done) (e.g. a tqdm update).
    Adaptive methods control the error of each chunk as a whole, so their steps (and
    results, within the tolerance) depend on the chunk; fixed-step methods do not.
    """
    chunk = _check_chunk(chunk)
    draw = x0 if callable(x0) else None
    if draw is None:
        x0 = np.asarray(x0)
        n = len(x0)
    elif n is None or int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer when x0 is a callable, got {n!r}")
    n = int(n)
    if y is not None and len(y) != n:
        raise ValueError(f"y must have {n} labels, got {len(y)}")
    out = None
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        rows = draw(hi - lo) if draw is not None else x0[lo:hi]
        field = v if y is None else (lambda x, t, _y=y[lo:hi]: v(x, t, _y))
        x1 = odeint(field, rows, t_grid, method=method, only_last=True)  # (hi - lo, ...)
        if sink is not None:
            sink(x1)
        else:
            if out is None:
                out = np.empty((n,) + x1.shape[1:], dtype=x1.dtype)  # (N, ...)
            out[lo:hi] = x1
        if progress is not None:
            progress(hi - lo)
    return out


def check_output_fits(path, nbytes, what="the output"):
    """ValueError (one line) when nbytes would not fit in the free space of path's folder
    (fm_numpy.io.check_disk)."""
    check_disk(path, nbytes, what)


class NpzStreamWriter:
    """An .npz written array by array, each array in row chunks (memory: one chunk).

        with NpzStreamWriter(path) as w:
            w.begin("samples", (N, D), np.float32)
            for rows in ...: w.write(rows)
            w.begin("labels", (N,), np.int64); w.write(labels)

    The file is a plain .npz (np.load reads it, allow_pickle=False), written to a temporary
    file renamed over `path` when the block ends without error (fm_numpy.io.atomic_path);
    an array that got fewer or more rows than its shape says is an error.
    """

    def __init__(self, path):
        self.path = os.fspath(path)

    def __enter__(self):
        self._atomic = atomic_path(self.path)
        tmp = self._atomic.__enter__()
        self._zip = zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
        self._entry, self._left = None, 0
        return self

    def begin(self, name, shape, dtype):
        self._finish_entry()
        dtype, shape = np.dtype(dtype), tuple(int(s) for s in shape)
        self._entry = self._zip.open(name + ".npy", "w", force_zip64=True)
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                  "shape": shape}
        np.lib.format.write_array_header_2_0(self._entry, header)
        self._dtype, self._row_shape, self._left, self._name = dtype, shape[1:], shape[0], name

    def write(self, rows):
        rows = np.ascontiguousarray(rows, dtype=self._dtype)
        if rows.shape[1:] != self._row_shape or len(rows) > self._left:
            raise ValueError(f"{self._name}: rows of shape {rows.shape} do not fit the "
                             f"{self._left} rows of shape {self._row_shape} still expected")
        self._entry.write(rows.tobytes())
        self._left -= len(rows)

    def _finish_entry(self):
        if self._entry is not None:
            self._entry.close()
            self._entry = None
            if self._left:
                raise ValueError(f"{self._name}: {self._left} rows were never written")

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self._finish_entry()
        finally:
            if self._entry is not None:
                self._entry.close()
            self._zip.close()
        return self._atomic.__exit__(exc_type, exc, tb)
