"""The user's own data file as a training source, and the run folder's record of it.

`--data PATH` (a .npy, .npz or .csv file, or a folder of images; fm_numpy/datafiles.py)
becomes, in order:
1. the file read once (memory-mapped for .npy), checked (bad data: one ValueError line,
   before any run folder exists);
2. a held-out split: a permutation seeded by the run's seed keeps round(val_fraction N)
   rows out of training (default 0.1; `evaluate` compares samples with them);
3. a scaling fitted on the training rows only: vectors standardised per feature, images
   to [-1, 1] (fm_numpy/scaling.py);
4. an ArraySource over the training rows (a RowView: rows are read per batch, never copied).
The run folder's data.json records the file, the scaling, the split and the class names,
so `sample` decodes to the data's own units and `evaluate` finds the held-out rows again.
"""

import functools
import json
import os

import numpy as np

from fm_numpy.datafiles import DATA_SUFFIXES, RowView, read_data, split_indices
from fm_numpy.scaling import MinMax, Standardize, scaling_from_json
from fm_numpy.sources import ArraySource
from fm_numpy.toys import TOY_DATASETS

__all__ = ["is_data_file", "data_defaults", "open_user_data", "run_data_info", "UserData",
           "read_cached",
           "DATA_JSON", "DEFAULT_VAL_FRACTION"]

DATA_JSON = "data.json"
DEFAULT_VAL_FRACTION = 0.1


def is_data_file(spec):
    """True when `spec` names a file or folder of the user's (not mnist or a toy set)."""
    if not isinstance(spec, (str, os.PathLike)):
        return False
    spec = os.fspath(spec)
    if spec in ("mnist", "custom", *TOY_DATASETS):
        return False
    return (os.path.exists(spec) or os.sep in spec
            or os.path.splitext(spec)[1].lower() in DATA_SUFFIXES)


@functools.lru_cache(maxsize=4)
def _read(path, label_column, stamp):  # stamp: the file's (size, mtime), so edits re-read
    return read_data(path, label_column)


def read_cached(path, label_column=None):
    """read_data(path, label_column), read once per process while the file is unchanged."""
    return _read_data(path, label_column)


def _read_data(path, label_column=None):
    path = os.path.abspath(os.fspath(path))
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such data file or folder: {path}")
    st = os.stat(path)
    return _read(path, label_column, (st.st_size, st.st_mtime_ns))


def data_defaults(spec, label_column=None, arch=None, steps=None):
    """Training defaults for the user's file: the network sized from its shape (an MLP for
    vectors, the ConvUNet for images; fm_numpy/models/sizing.py) and the held-out split;
    images also take the measured image recipe of sizing.image_defaults (its warm-up cut to
    a tenth of a shorter run)."""
    from fm_numpy.models.sizing import default_sizes, image_defaults

    rec = _read_data(spec, label_column)
    arch = arch or ("convnet" if rec.kind == "images" else "mlp")
    out = {"arch": arch, "val_fraction": DEFAULT_VAL_FRACTION, **default_sizes(rec.shape, arch)}
    if rec.kind == "images":
        recipe = {k: v for k, v in image_defaults(rec.shape).items() if k != "arch"}
        try:  # a bad steps value is refused by the config's own check, not here
            short = int(recipe["steps"] if steps is None else steps) // 10
            recipe["warmup"] = max(0, min(recipe["warmup"], short))
        except (TypeError, ValueError, OverflowError):
            pass
        out.update(recipe)
    return out


class UserData:
    """The file, its split and its scaling (fitted on the training rows)."""

    def __init__(self, spec, label_column=None, val_fraction=DEFAULT_VAL_FRACTION, seed=0,
                 scaling=None):
        self.rec, self.label_column = _read_data(spec, label_column), label_column
        n = len(self.rec.x)
        f = DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction
        try:
            self.train_idx, self.val_idx = split_indices(n, f, seed)
        except ValueError as e:
            raise ValueError(f"{self.rec.path}: {e}") from None
        self.split = {"val_fraction": float(f), "seed": int(seed),
                      "n_train": len(self.train_idx), "n_val": len(self.val_idx)}
        self.train = RowView(self.rec.x, self.train_idx)
        self.val = RowView(self.rec.x, self.val_idx)
        if scaling is None:
            if self.rec.kind == "images":
                scaling = MinMax.fit(self.train, self.rec.shape, self.rec.layout)
            else:
                scaling = Standardize.fit(self.train, self.rec.dtype)
        self.scaling = scaling

    def labels(self, idx):
        return None if self.rec.y is None else self.rec.y[idx]

    def info(self):
        """The run folder's data.json."""
        return {"file": {**self.rec.record(), "label_column": self.label_column},
                "scaling": self.scaling.to_json(),
                "split": self.split, "class_names": self.rec.class_names,
                "label_values": self.rec.label_values}

    def source(self, dtype=np.float32):
        """An ArraySource over the training rows (model-space batches, flat in fm_numpy)."""
        src = ArraySource(self.train, self.labels(self.train_idx), self.scaling, dtype,
                          num_classes=self.rec.num_classes)
        src.shape = self.rec.shape  # model space (D,) or (C, H, W), whatever the raw layout
        src.info = self.info()
        return src

    @classmethod
    def from_info(cls, info):
        """The data a run's data.json describes (evaluate: its held-out rows)."""
        f = info["file"]
        split = info["split"]
        data = cls(f["path"], f.get("label_column"), split["val_fraction"], split["seed"],
                   scaling_from_json(info["scaling"]))
        if len(data.rec.x) != f["n"]:
            raise ValueError(f"{f['path']} now holds {len(data.rec.x)} samples, the run "
                             f"trained on {f['n']}: the held-out split is no longer known")
        return data


def open_user_data(spec, dtype=np.float32, label_column=None, val_fraction=None, seed=0):
    """The training source of the user's file (see the module docstring); .info is the
    record for the run folder."""
    return UserData(spec, label_column, val_fraction, seed).source(dtype)


def run_data_info(model_path):
    """The data.json beside a model or checkpoint file, or None (not a user-data run)."""
    path = os.path.join(os.path.dirname(os.path.abspath(model_path)), DATA_JSON)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            info = json.load(f)
        info["file"]["path"], info["scaling"]["kind"], info["split"]["seed"]  # noqa: B018
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise ValueError(f"{path} is not a readable data record (data.json)") from None
    return info
