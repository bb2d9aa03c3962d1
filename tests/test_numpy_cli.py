"""fm-numpy command line: a tiny train + sample run end to end, and one-line errors."""

import json

import numpy as np
import pytest

from fm_numpy.cli import main

pytest.importorskip("matplotlib")

TINY = ["--batch", "32", "--hidden", "8", "--depth", "1", "--time-features", "4",
        "--no-progress"]


def test_train_then_sample_writes_files_and_pngs(tmp_path, capsys):
    run = tmp_path / "run"
    rc = main(["train", "--data", "checkerboard", "--steps", "30", "--ckpt-every", "10",
               "--seed", "3", "--out", str(run)] + TINY)
    assert rc == 0
    for name in ("model.npz", "checkpoint.npz", "loss.csv", "config.json", "loss.png"):
        assert (run / name).stat().st_size > 0, name
    assert json.loads((run / "config.json").read_text())["data"] == "checkerboard"
    rc = main(["train", "--data", "checkerboard", "--steps", "40", "--ckpt-every", "10",
               "--seed", "3", "--resume", "--out", str(run)] + TINY)
    assert rc == 0
    assert len((run / "loss.csv").read_text().splitlines()) == 41
    out = tmp_path / "s.npz"
    rc = main(["sample", "--model", str(run / "model.npz"), "--method", "midpoint", "--steps",
               "4", "-n", "50", "--seed", "1", "--out", str(out)])
    assert rc == 0
    with np.load(out, allow_pickle=False) as f:
        assert f["samples"].shape == (50, 2) and np.all(np.isfinite(f["samples"]))
    for suffix in ("samples", "trajectories", "field"):
        assert (tmp_path / f"s_{suffix}.png").read_bytes()[:4] == b"\x89PNG"


def test_sample_class_conditional_model_writes_images_and_grid(tmp_path):
    from fm_numpy.models.mlp import MLP

    MLP(784, hidden=8, depth=1, time_features=4, num_classes=10).save_npz(tmp_path / "m.npz")
    out = tmp_path / "digits.npz"
    rc = main(["sample", "--model", str(tmp_path / "m.npz"), "--steps", "2", "-n", "100",
               "--guidance", "2.0", "--out", str(out)])
    assert rc == 0
    with np.load(out, allow_pickle=False) as f:
        assert f["images"].shape == (100, 28, 28)
        assert f["images"].min() >= 0 and f["images"].max() <= 1
        np.testing.assert_array_equal(f["labels"], np.arange(100) % 10)
    assert (tmp_path / "digits_grid.png").exists()


def test_sample_guidance_interval(tmp_path, capsys):
    """--guidance-interval 0,1 (every t) draws what no interval draws; 0.5,1 moves the
    samples, and equals a solve of ClassifierFreeGuidance with that interval computed here;
    a reversed interval is one line, exit 2."""
    from fm_numpy.models.mlp import MLP
    from fm_numpy.solvers import ClassifierFreeGuidance, odeint

    model = MLP(3, hidden=16, depth=2, time_features=4, num_classes=4, seed=3)
    model.save_npz(tmp_path / "m.npz")
    got = {}
    for name, extra in {"none": [], "every": ["--guidance-interval", "0,1"],
                        "late": ["--guidance-interval", "0.5,1"]}.items():
        rc = main(["sample", "--model", str(tmp_path / "m.npz"), "--steps", "4", "--method",
                   "euler", "-n", "8", "--guidance", "3", "--out", str(tmp_path / f"{name}.npz"),
                   *extra])
        assert rc == 0, capsys.readouterr().err
        with np.load(tmp_path / f"{name}.npz", allow_pickle=False) as f:
            got[name] = f["samples"]
    np.testing.assert_array_equal(got["every"], got["none"])
    x0 = np.random.default_rng(0).standard_normal((8, 3)).astype(model.dtype)  # --seed 0
    y = np.arange(8) % 4  # classes in turn
    want = odeint(ClassifierFreeGuidance(model, y, 3.0, (0.5, 1.0)), x0, np.linspace(0, 1, 5),
                  "euler")[-1]
    np.testing.assert_allclose(got["late"], want, rtol=1e-6, atol=1e-6)
    assert np.abs(got["late"] - got["none"]).max() > 1e-3
    capsys.readouterr()
    assert main(["sample", "--model", str(tmp_path / "m.npz"), "--guidance-interval", "0.9,0.1",
                 "--out", str(tmp_path / "bad.npz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "guidance interval" in err[0], err


@pytest.mark.parametrize("argv", [
    ["train", "--steps", "0"],
    ["train", "--data", "nosuchdata"],
    ["train", "--steps", "ten"],
    ["train", "--scheduler", "nope"],
    ["sample", "--model", "missing.npz", "--out", "s.npz"],
    ["sample", "--model", "{bad}", "--out", "s.npz"],
    ["frobnicate"],
])
def test_bad_arguments_exit_2_with_one_line(argv, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if "{bad}" in argv:
        (tmp_path / "bad.npz").write_bytes(b"garbage")
        argv = [a.replace("{bad}", "bad.npz") for a in argv]
    try:
        rc = main(argv + ["--out", str(tmp_path / "o")] if argv[0] == "train" else argv)
    except SystemExit as e:
        rc = e.code
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("fm-numpy: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
