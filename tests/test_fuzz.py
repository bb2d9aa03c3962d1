"""Fuzzing: every loader and both command lines fail only in the documented way.

Loaders get random bytes and random truncations/bit flips of valid files: each call either
loads or raises ValueError (one line). The CLIs get random argv lists drawn from their
real flags and junk values (main(argv) in-process): exit status 0 or 2, never an unhandled
exception, error output one line.
"""

import contextlib
import gzip
import io
import os
import pickle
import shutil
import tempfile
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fm_numpy import data as np_data
from fm_numpy.io import load_npz, save_npz
from fm_numpy.models.mlp import MLP as NumpyMLP
from fm_torch.io import load_checkpoint, save_checkpoint
from fm_torch.models.mlp import MLP as TorchMLP

_DIR = tempfile.mkdtemp(prefix="fm-fuzz-")
_TORCH_THREADS = torch.get_num_threads()  # the CLIs' --threads 1 must not outlive this file


def _valid_files():
    """One valid file of every kind the loaders read, built once."""
    files = {}
    files["mlp"] = os.path.join(_DIR, "model.npz")
    NumpyMLP(2, 8, 1, 4, num_classes=3).save_npz(files["mlp"])
    files["samples"] = os.path.join(_DIR, "samples.npz")
    save_npz(files["samples"], images=np.zeros((2, 28, 28), np.float32), labels=np.arange(2))
    files["ckpt"] = os.path.join(_DIR, "ckpt.pt")
    model = TorchMLP(2, 8, 1, 4)
    config = {"data": "8gaussians", "hidden": 8, "depth": 1, "time_features": 4}
    save_checkpoint(files["ckpt"], {"config": config, "model": model.state_dict(),
                                    "ema": {"model": model.state_dict()}, "step": 3})
    files["idx"] = os.path.join(_DIR, "t10k-labels-idx1-ubyte")
    with open(files["idx"], "wb") as f:
        f.write(bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2, 3, 4, 5]))
    files["mnist_pkl"] = os.path.join(_DIR, "mnist.pkl.gz")
    split = (np.zeros((2, 784), np.float32), np.arange(2, dtype=np.int64))
    with gzip.open(files["mnist_pkl"], "wb") as f:
        pickle.dump((split, split, split), f, protocol=2)
    return files


VALID = _valid_files()
_RAW = {k: open(v, "rb").read() for k, v in VALID.items()}


def _load_mlp(path):
    NumpyMLP.from_npz(path)


def _load_mlp_torch(path):
    TorchMLP.from_npz(path)


def _load_ckpt(path):
    from fm_torch.train import load_model

    load_checkpoint(path)
    load_model(path)


def _load_idx(path):
    np_data.read_idx(path, 0x00000801)


def _load_mnist_pickle(path):
    cache = tempfile.mkdtemp(prefix="cache-", dir=_DIR)
    saved = np_data._mnist_package_file
    np_data._mnist_package_file = lambda: (path, "fuzz")
    try:
        np_data.load_mnist("train", cache_dir=cache)
    finally:
        np_data._mnist_package_file = saved
        shutil.rmtree(cache, ignore_errors=True)


LOADERS = {
    "mlp": [_load_mlp, _load_mlp_torch],
    "samples": [load_npz],
    "ckpt": [_load_ckpt],
    "idx": [_load_idx],
    "mnist_pkl": [_load_mnist_pickle],
}


def _corrupt(kind, data):
    """Random bytes, a truncation, or bit flips of the valid file of this kind."""
    raw = _RAW[kind]
    mode = data.draw(st.sampled_from(["random", "truncate", "flip"]))
    if mode == "random":
        return data.draw(st.binary(max_size=2048))
    if mode == "truncate":
        return raw[: data.draw(st.integers(0, len(raw) - 1))]
    blob = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] ^= 1 << data.draw(st.integers(0, 7))
    return bytes(blob)


@pytest.mark.parametrize("kind", sorted(LOADERS))
@given(data=st.data())
def test_loaders_load_or_raise_one_line_value_error(kind, data):
    blob = _corrupt(kind, data)
    suffix = {"mlp": ".npz", "samples": ".npz", "ckpt": ".pt", "idx": "", "mnist_pkl": ".gz"}
    fd, path = tempfile.mkstemp(suffix=suffix[kind], dir=_DIR)
    with os.fdopen(fd, "wb") as f:
        f.write(blob)
    try:
        for load in LOADERS[kind]:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    load(path)
            except ValueError as e:
                assert "\n" not in str(e).strip(), str(e)
    finally:
        os.remove(path)


def test_the_valid_files_load():
    """The fuzz seeds themselves are valid, so a loader that always raises would fail."""
    for kind, loaders in LOADERS.items():
        for load in loaders:
            load(VALID[kind])


# ---------------------------------------------------------------------------- CLIs
JUNK = ["", "-1", "0", "nan", "inf", "1e999", "x", "--", "3.5", "\x00", "💥"]
_MODEL = VALID["mlp"].replace("model.npz", "model2d.npz")
NumpyMLP(2, 8, 1, 4).save_npz(_MODEL)
_JUNK_FILE = os.path.join(_DIR, "junk.npz")
with open(_JUNK_FILE, "wb") as f:
    f.write(b"PK\x03\x04 not a zip")

COMMON_TRAIN = {
    "--data": ["8gaussians", "moons", "nope"],
    "--steps": ["1", "2"], "--batch": ["2", "4"], "--lr": ["1e-3", "0.1"],
    "--hidden": ["4", "8"], "--depth": ["1"], "--time-features": ["2", "4", "3"],
    "--scheduler": ["condot", "cosine", "vp", "bogus"], "--seed": ["0", "7"],
    "--ckpt-every": ["1", "5"], "--label-dropout": ["0", "0.5", "1"],
    "--weight-decay": ["0", "0.1"], "--max-grad-norm": ["1", "0.5"],
}
NUMPY_TRAIN = dict(COMMON_TRAIN, **{"--dtype": ["float32", "float64", "int8"],
                                    "--n-train": ["1", "10"]})
TORCH_TRAIN = dict(COMMON_TRAIN, **{"--base": ["4", "8"], "--mults": ["1", "1,2", "a,b"],
                                    "--res-blocks": ["1"], "--sample-every": ["1", "100"],
                                    "--ema-decay": ["0.9", "0"], "--device": ["cpu", "tpu"],
                                    "--threads": ["1"], "--data-dir": [_DIR]})
TRAIN_SAFE = ["--steps", "2", "--batch", "4", "--hidden", "4", "--depth", "1",
              "--time-features", "2", "--ckpt-every", "1", "--no-progress"]
NUMPY_SAMPLE = {
    "--model": [_MODEL, VALID["mlp"], _JUNK_FILE, os.path.join(_DIR, "missing.npz")],
    "--method": ["euler", "rk4", "RK45", "bogus"], "--steps": ["1", "2"], "-n": ["3", "5"],
    "--seed": ["0", "1"], "--guidance": ["1", "2", "0"],
}
TORCH_SAMPLE = {
    "--model": [VALID["ckpt"], VALID["mlp"], _JUNK_FILE, os.path.join(_DIR, "missing.pt")],
    "--method": ["euler", "midpoint", "dopri5", "bogus"], "--steps": ["1", "2"],
    "-n": ["3", "5"], "--seed": ["0", "1"], "--guidance": ["1", "2"], "--per-class": ["1"],
    "--device": ["cpu", "tpu"], "--npz": [os.path.join(_DIR, "s.npz")],
}


@st.composite
def _argv(draw, flags, prefix):
    pairs = draw(st.lists(st.sampled_from(sorted(flags)), max_size=6))
    argv = list(prefix)
    for flag in pairs:
        argv += [flag, draw(st.sampled_from(flags[flag] + JUNK))]
    if draw(st.booleans()):
        argv.insert(draw(st.integers(0, len(argv))), draw(st.sampled_from(
            ["--bogus", "-z", "--resume", "--no-ema", "--help-me"] + JUNK)))
    return argv


def _run_cli(main, argv):
    """(exit status, stderr) of main(argv); any other exception fails the test."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
    return code, err.getvalue()


def _check(code, err, prog):
    assert code in (0, 2), (code, err)
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), err
        assert "Traceback" not in err


def _fresh_out(suffix=""):
    return tempfile.mkdtemp(prefix="out-", dir=_DIR) + suffix


@pytest.mark.parametrize("package", ["fm_numpy", "fm_torch"])
@given(data=st.data())
def test_cli_train_random_argv(package, data):
    from importlib import import_module

    main = import_module(f"{package}.cli").main
    flags = NUMPY_TRAIN if package == "fm_numpy" else TORCH_TRAIN
    out = _fresh_out()
    argv = data.draw(_argv(flags, ["train", *TRAIN_SAFE, "--out", out]))
    try:
        _check(*_run_cli(main, argv), package.replace("_", "-"))
    finally:
        shutil.rmtree(out, ignore_errors=True)


@pytest.mark.parametrize("package", ["fm_numpy", "fm_torch"])
@given(data=st.data())
def test_cli_sample_random_argv(package, data):
    from importlib import import_module

    main = import_module(f"{package}.cli").main
    flags = NUMPY_SAMPLE if package == "fm_numpy" else TORCH_SAMPLE
    out = _fresh_out("/s" + (".npz" if package == "fm_numpy" else ".png"))
    argv = data.draw(_argv(flags, ["sample", "--out", out, "-n", "4", "--steps", "2"]))
    try:
        _check(*_run_cli(main, argv), package.replace("_", "-"))
    finally:
        shutil.rmtree(os.path.dirname(out), ignore_errors=True)


@pytest.mark.parametrize("package", ["fm_numpy", "fm_torch"])
@given(argv=st.lists(st.sampled_from(["train", "sample", "likelihood", "--out", "--model",
                                      "--steps", "-n"] + JUNK), max_size=5))
def test_cli_junk_argv(package, argv):
    from importlib import import_module

    main = import_module(f"{package}.cli").main
    if argv[:1] == ["train"]:
        argv = argv + [*TRAIN_SAFE, "--out", _fresh_out()]
    code, err = _run_cli(main, argv)
    _check(code, err, package.replace("_", "-"))


def test_cli_valid_runs_exit_0(tmp_path):
    """The fuzz's safe prefix really trains and samples, so exit 0 is reachable."""
    from fm_numpy.cli import main

    assert _run_cli(main, ["train", *TRAIN_SAFE, "--out", str(tmp_path / "r")])[0] == 0
    code, err = _run_cli(main, ["sample", "--model", str(tmp_path / "r" / "model.npz"),
                                "-n", "4", "--steps", "2", "--out", str(tmp_path / "s.npz")])
    assert code == 0, err
    assert load_npz(tmp_path / "s.npz")["samples"].shape == (4, 2)


def teardown_module():
    shutil.rmtree(_DIR, ignore_errors=True)
    torch.set_num_threads(_TORCH_THREADS)


# ---------------------------------------------------------------------------- the user's data
# (issue 21) Each reader of the user's files gets random bytes, truncations and bit flips of
# a valid file: it loads or raises one line. Every bad-data case of tests/datafile_cases.py
# goes through both CLIs' train: exit 2, one line naming the file, no run folder left.
from datafile_cases import BAD_NAMES, bad_cases  # noqa: E402

from fm_numpy.datafiles import read_data  # noqa: E402
from fm_numpy.png import encode_png  # noqa: E402


def _user_files():
    d = os.path.join(_DIR, "user")
    os.makedirs(d)
    files = {"user_npy": os.path.join(d, "x.npy"), "user_npz": os.path.join(d, "d.npz"),
             "user_csv": os.path.join(d, "t.csv"), "user_png": os.path.join(d, "a.png")}
    np.save(files["user_npy"], np.arange(18, dtype=np.float32).reshape(6, 3))
    np.savez(files["user_npz"], x=np.zeros((6, 4, 4), np.uint8), y=np.arange(6) % 2)
    with open(files["user_csv"], "w") as f:
        f.write("a,b,y\n1,2.5,0\n-3,4e1,1\n5,6,0\n")
    with open(files["user_png"], "wb") as f:
        f.write(encode_png(np.arange(48, dtype=np.uint8).reshape(4, 4, 3), filter_type=4))
    return files


USER_FILES = _user_files()
_RAW.update({k: open(v, "rb").read() for k, v in USER_FILES.items()})


@pytest.mark.parametrize("kind", sorted(USER_FILES))
@given(data=st.data())
def test_user_data_readers_load_or_raise_one_line(kind, data):
    blob = _corrupt(kind, data)
    folder = tempfile.mkdtemp(dir=_DIR)
    name = os.path.basename(USER_FILES[kind])
    with open(os.path.join(folder, name), "wb") as f:
        f.write(blob)
    target = folder if kind == "user_png" else os.path.join(folder, name)  # an image folder
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            read_data(target, label_column="y" if kind == "user_csv" else None,
                      cache_dir=False)
    except ValueError as e:
        assert "\n" not in str(e).strip(), str(e)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_the_valid_user_files_load():
    for kind, path in USER_FILES.items():
        target = os.path.dirname(path) if kind == "user_png" else path
        if kind != "user_png":
            read_data(target, label_column="y" if kind == "user_csv" else None)
    folder = tempfile.mkdtemp(dir=_DIR)
    shutil.copy(USER_FILES["user_png"], folder)
    assert read_data(folder, cache_dir=False).x.shape == (1, 4, 4, 3)


@pytest.mark.parametrize("package", ["fm_numpy", "fm_torch"])
@pytest.mark.parametrize("name", BAD_NAMES)
def test_cli_train_bad_data_exit_2_no_run_folder(package, name, tmp_path):
    from importlib import import_module

    path, kw, words = bad_cases(str(tmp_path))[name]
    out = str(tmp_path / "run")
    argv = ["train", "--data", path, *TRAIN_SAFE, "--out", out]
    if kw.get("label_column"):
        argv += ["--label-column", kw["label_column"]]
    code, err = _run_cli(import_module(f"{package}.cli").main, argv)
    _check(code, err, package.replace("_", "-"))
    assert code == 2 and words in err and not os.path.exists(out), err


# ------------------------------------------------- counts beyond memory or disk (issue 23)
# Every command that takes a count refuses one whose samples cannot fit the free disk (the
# streamed .npz outputs) or the available memory (what is held at once), or that would be
# computed only to be thrown away (fm-torch sample's PNG without --npz): one line, exit 2,
# before any work (no output written). Counts of 1e13 and more exceed any disk or memory
# this suite runs on (8 bytes each is 80 TB).
from hypothesis import settings  # noqa: E402


def _mnist_ckpt():
    from fm_torch.train_config import build_model, resolve_config

    path = os.path.join(_DIR, "mnist_ckpt.pt")
    config = resolve_config(data="mnist", base=4, mults=[1], res_blocks=1, time_features=4)
    state = build_model(config).state_dict()
    save_checkpoint(path, {"config": config, "model": state, "ema": {"model": state},
                           "step": 0})
    return path


_MNIST_CKPT = _mnist_ckpt()
COUNT_COMMANDS = {
    "numpy sample -n": ("fm_numpy", ["sample", "--model", _MODEL, "--out", "{out}/s.npz",
                                     "-n", "{n}"]),
    "numpy sample --per-class": ("fm_numpy", ["sample", "--model", VALID["mlp"], "--out",
                                              "{out}/s.npz", "--per-class", "{n}"]),
    "numpy likelihood -n": ("fm_numpy", ["likelihood", "--model", _MODEL, "-n", "{n}",
                                         "--out", "{out}/l.json"]),
    "numpy reflow --pairs": ("fm_numpy", ["reflow", "--teacher", _MODEL, "--out", "{out}/r",
                                          "--pairs", "{n}"]),
    "torch sample -n": ("fm_torch", ["sample", "--model", VALID["ckpt"], "--out", "{out}/s.png",
                                     "-n", "{n}"]),
    "torch sample -n --npz": ("fm_torch", ["sample", "--model", VALID["ckpt"], "--out",
                                           "{out}/s.png", "--npz", "{out}/s.npz", "-n", "{n}"]),
    "torch sample --per-class": ("fm_torch", ["sample", "--model", _MNIST_CKPT, "--out",
                                              "{out}/g.png", "--per-class", "{n}"]),
    "torch sample --per-class --npz": ("fm_torch", ["sample", "--model", _MNIST_CKPT, "--out",
                                                    "{out}/g.png", "--npz", "{out}/g.npz",
                                                    "--per-class", "{n}"]),
    "torch evaluate --n": ("fm_torch", ["evaluate", "--model", _MNIST_CKPT, "--out",
                                        "{out}/e.json", "--n", "{n}"]),
    "torch likelihood -n": ("fm_torch", ["likelihood", "--model", VALID["ckpt"], "-n", "{n}",
                                         "--out", "{out}/l.json"]),
    "torch reflow --pairs": ("fm_torch", ["reflow", "--teacher", VALID["ckpt"], "--out",
                                          "{out}/r", "--pairs", "{n}"]),
}


@pytest.mark.parametrize("command", sorted(COUNT_COMMANDS))
@settings(max_examples=5, deadline=None)
@given(n=st.integers(10**13, 10**18))
def test_cli_counts_beyond_memory_or_disk_are_refused(command, n):
    from importlib import import_module

    package, argv = COUNT_COMMANDS[command]
    out = _fresh_out()
    try:
        argv = [a.format(out=out, n=n) for a in argv]
        code, err = _run_cli(import_module(f"{package}.cli").main, argv)
        _check(code, err, package.replace("_", "-"))
        assert code == 2, err
        assert any(w in err for w in ("of memory but only", "are free in", "thrown away")), err
        assert os.listdir(out) == [], os.listdir(out)  # refused before any work
    finally:
        shutil.rmtree(out, ignore_errors=True)


def test_cli_counts_that_fit_still_run(tmp_path):
    """The same commands with a small count pass the checks (the refusal is not a blanket
    one): fm-torch sample writes its PNG and .npz."""
    from fm_torch.cli import main

    code, err = _run_cli(main, ["sample", "--model", _MNIST_CKPT, "--per-class", "2",
                                "--steps", "1", "--out", str(tmp_path / "g.png"),
                                "--npz", str(tmp_path / "g.npz")])
    assert code == 0, err
    assert load_npz(tmp_path / "g.npz")["images"].shape == (20, 28, 28)
