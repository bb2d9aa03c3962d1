"""Network .npz files: the JSON config every network writes beside its arrays, the
architecture check before weights are copied in, and `NpzFile`, the save_npz / load_npz /
from_npz of every network of both packages (MLP, ResMLP, ConvUNet in fm_numpy/models and
fm_torch/models): one file format, read and refused the same way everywhere."""

import json

import numpy as np

from fm_numpy.io import load_npz, save_npz

__all__ = ["config_dtype", "read_config", "read_weights", "MLP_FILE_DEFAULTS", "NpzFile"]


def config_dtype(dtype):
    """The dtype name a network config stores: float32 or float64, else a ValueError."""
    name = np.dtype(dtype).name
    if name not in ("float32", "float64"):
        raise ValueError(f"dtype must be float32 or float64, got {name}")
    return name


# How a refusal names each architecture ("holds an MLP with ..., not ...")
_NAMES = {"mlp": "an MLP", "resmlp": "a ResMLP", "convnet": "a ConvUNet"}


def read_weights(path, config, shapes, defaults=None):
    """The parameter arrays of a network .npz, checked against an architecture.

    Refuses (ValueError naming the file) a file of another architecture (config "arch",
    none meaning "mlp"), one whose config differs from `config` in anything but seed and
    dtype (keys it lacks take `defaults`), or whose arrays miss a name of `shapes` or have
    another shape. Shared by every network of both packages.
    """
    arrays = load_npz(path)
    theirs_config = read_config(arrays, path, defaults)
    mine_arch, theirs_arch = config.get("arch", "mlp"), theirs_config.get("arch", "mlp")
    if theirs_arch != mine_arch:
        raise ValueError(f"{path} holds a {theirs_arch!r} network, not a {mine_arch!r} one")
    keys = (set(config) | set(theirs_config)) - {"seed", "dtype"}  # mean_flow only when True
    mine = {k: config.get(k) for k in sorted(keys)}
    theirs = {k: theirs_config.get(k) for k in sorted(keys)}
    if mine != theirs:
        name = _NAMES.get(mine_arch, f"a {mine_arch!r} network")
        raise ValueError(f"{path} holds {name} with {theirs}, not {mine}")
    for name, shape in shapes.items():
        if name not in arrays or arrays[name].shape != tuple(shape):
            got = arrays[name].shape if name in arrays else "nothing"
            raise ValueError(
                f"{path}: parameter {name} should have shape {tuple(shape)}, got {got}")
    return {name: arrays[name] for name in shapes}


# MLP settings added after the first files were written, with the value those files meant
MLP_FILE_DEFAULTS = {"time_scale": 1000.0}


def read_config(arrays, path, defaults=None):
    """The JSON "config" of a network .npz as a dict; `defaults` fill keys older files lack
    (a dict of values, or a function that maps an old config to today's)."""
    if "config" not in arrays:
        raise ValueError(f"{path} has no 'config' entry; it is not an MLP file")
    try:
        config = json.loads(str(arrays["config"]))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: config is not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: config is not a JSON object")
    if callable(defaults):  # a network whose old files need more than fixed values
        return defaults(config)
    for key, value in (defaults or {}).items():
        config.setdefault(key, value)
    return config


class NpzFile:
    """save_npz / load_npz / from_npz for a network with `config` (its constructor's
    arguments, JSON) and named parameters.

    A network sets ARCH (its config's "arch"; "mlp" files carry none), NAME ("an MLP")
    and FILE_DEFAULTS (keys older files lack), and defines `_arrays()` (its parameters as
    NumPy arrays, by name) and `_set_arrays(arrays)` (copy them in); a torch network also
    sets `dtype_name` (torch dtypes are not NumPy's).
    """

    ARCH, NAME, FILE_DEFAULTS = "mlp", "an MLP", None
    dtype_name = staticmethod(config_dtype)

    def save_npz(self, path):
        """Write the parameters and the constructor arguments ("config", JSON) atomically."""
        save_npz(path, config=np.array(json.dumps(self.config)), **self._arrays())

    def load_npz(self, path):
        """Load parameters from an .npz written by either package; refuses another architecture."""
        shapes = {name: tuple(a.shape) for name, a in self._arrays().items()}
        self._set_arrays(read_weights(path, self.config, shapes, self.FILE_DEFAULTS))
        return self

    @classmethod
    def from_npz(cls, path, dtype=None):
        """The network an .npz file describes, with its weights (dtype overrides the file's)."""
        config = read_config(load_npz(path), path, cls.FILE_DEFAULTS)
        if cls.ARCH != "mlp" and config.get("arch") != cls.ARCH:  # an MLP's constructor refuses
            raise ValueError(f"{path} holds a {config.get('arch', 'mlp')!r} network, not a "
                             f"{cls.ARCH!r} one")
        if dtype is not None:
            config["dtype"] = cls.dtype_name(dtype)
        try:
            model = cls(**config)
        except TypeError as e:
            raise ValueError(f"{path}: config is not {cls.NAME} configuration ({e})") from None
        return model.load_npz(path)
