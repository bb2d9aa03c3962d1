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
import shutil
import tempfile
import time

import numpy as np

__all__ = ["atomic_path", "save_npz", "load_npz", "save_json", "read_log", "write_log",
           "available_memory", "check_memory", "check_disk"]

def _umask():
    """The process umask, read without changing it (mkstemp files are 0600; outputs get the
    mode a plain open() would give them). os.umask can only be read by setting it, which
    races with threads that create files meanwhile, so Linux's /proc/self/status is asked;
    elsewhere the set-and-restore is the only way."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_folder(folder):
    """Flush the folder's entry list, so the rename itself survives a power loss."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # e.g. Windows: folders cannot be opened; NTFS journals renames
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder; the rename is done
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; on success fsync it, rename it to `path` and
    fsync the folder (a crash or power loss leaves the old file or the new, never a torn
    one or none)."""
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
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
        _fsync_folder(folder)
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


# ------------------------------------------------------------------ counts that cannot fit
def _cgroup_memory_left():
    """Bytes this process's cgroup (v2) may still take, or None where no limit is set."""
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit == "max":
            return None
        with open("/sys/fs/cgroup/memory.current") as f:
            return max(0, int(limit) - int(f.read()))
    except (OSError, ValueError):
        return None


def available_memory():
    """Bytes of memory a new allocation can have now, or None when the system does not say:
    MemAvailable of /proc/meminfo (free plus reclaimable cache), else os.sysconf's free
    pages; lowered to what a cgroup limit (a container's) leaves."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024  # kB
                    break
    except (OSError, ValueError, IndexError):
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            return None
    left = _cgroup_memory_left()
    return avail if left is None else min(avail, left)


def _gb(nbytes):
    return f"{nbytes / 1e9:.3g} GB"


def check_memory(nbytes, what):
    """ValueError (one line, bad input) when `what` would need more than the available
    memory; called with an estimate from the count and the sample shape before any work."""
    avail = available_memory()
    if avail is not None and nbytes > avail:
        raise ValueError(f"{what} needs about {_gb(nbytes)} of memory but only {_gb(avail)} "
                         "are available; ask for fewer")


def check_disk(path, nbytes, what):
    """ValueError (one line) when nbytes would not fit in the free space of path's folder
    (the nearest existing parent when the folder is made later)."""
    folder = os.path.dirname(os.path.abspath(os.fspath(path))) or "."
    while not os.path.isdir(folder):
        folder = os.path.dirname(folder)
    free = shutil.disk_usage(folder).free
    if nbytes > free:
        raise ValueError(f"{what} needs {_gb(nbytes)} but only {_gb(free)} are free in "
                         f"{folder}; ask for fewer or write elsewhere")
