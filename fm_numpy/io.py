"""Files on disk: atomic writes and loaders that never execute code.

Every output goes to a temporary file in the target folder, is flushed to disk and then
renamed over the target, so a crash leaves either the old file or the new one, never a
torn one. `.npz` files are read with allow_pickle=False.

Test hook: FM_DUAL_SLOW_WRITE=<seconds> sleeps between writing the temporary file and
renaming it, so tests/test_reliability_crash.py can kill a process inside that window.
"""

import contextlib
import csv
import json
import os
import tempfile
import time

import numpy as np

__all__ = ["atomic_path", "save_npz", "load_npz", "save_json", "read_log", "write_log"]

_UMASK = os.umask(0)
os.umask(_UMASK)  # read the process umask once: mkstemp files are 0600, outputs should not be


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; on success fsync it and rename it to `path`."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    suffix = os.path.splitext(path)[1]  # keep the extension: np.savez appends .npz otherwise
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        yield tmp
        if os.environ.get("FM_DUAL_SLOW_WRITE"):
            time.sleep(float(os.environ["FM_DUAL_SLOW_WRITE"]))  # test hook, see the docstring
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_npz(path, **arrays):
    """Write arrays to `path` (.npz) atomically."""
    with atomic_path(path) as tmp:
        np.savez(tmp, **arrays)


def load_npz(path):
    """Read every array of an .npz file into a dict, refusing pickled objects.

    Raises ValueError with one line naming the file if it is missing, truncated, corrupt
    or holds pickled objects.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such file: {path}")
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except Exception as e:  # noqa: BLE001  (garbage fails in many ways, e.g. SyntaxError)
        reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(
            f"{path} is not a readable .npz file ({type(e).__name__}: {reason})"
        ) from None


def save_json(path, obj):
    """Write obj as indented JSON atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")


def read_log(path, up_to_step):
    """Rows (lists of strings, header dropped) of a step-indexed CSV log up to `up_to_step`.

    A last row without its newline was torn by a crash in the middle of an append and is
    dropped, so a resumed run rewrites the log exactly as an uninterrupted one wrote it.
    """
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        lines = f.read().splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines = lines[:-1]
    return [row for row in list(csv.reader(lines))[1:] if int(row[0]) <= up_to_step]


def write_log(path, header, rows, append):
    """Rewrite a CSV log atomically (header + rows), or append rows and fsync them."""
    if not append:
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rows)
        return
    with open(path, "a", newline="") as f:
        csv.writer(f).writerows(rows)
        f.flush()
        os.fsync(f.fileno())
