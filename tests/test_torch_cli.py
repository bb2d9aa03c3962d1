"""`fm-torch` end to end on tiny models, and its one-line errors."""

import numpy as np
import pytest

from fm_numpy.io import load_npz
from fm_torch.cli import main

# constant lr: these runs resume to more steps, which a decaying schedule (MNIST's default)
# refuses
TINY = ["--base", "8", "--mults", "1,2", "--batch", "8", "--n-train", "64", "--no-progress",
        "--sample-every", "4", "--threads", "1", "--lr-schedule", "constant"]


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "mnist"
    rc = main(["train", "--data", "mnist", "--steps", "4", "--out", str(out), *TINY])
    assert rc == 0
    return out


def test_train_writes_run_folder(mnist_run):
    for name in ("ckpt.pt", "config.json", "loss.csv", "samples_0000004.png"):
        assert (mnist_run / name).stat().st_size > 0
    assert len((mnist_run / "loss.csv").read_text().splitlines()) == 5


def test_sample_writes_grid_strip_and_npz(mnist_run, tmp_path, capsys):
    grid, npz = tmp_path / "grid.png", tmp_path / "samples.npz"
    rc = main(["sample", "--model", str(mnist_run / "ckpt.pt"), "--guidance", "2.0",
               "--method", "midpoint", "--steps", "10", "--per-class", "2", "--out", str(grid),
               "--npz", str(npz)])
    assert rc == 0
    # midpoint: 2 evaluations a step; guidance 2 runs the model twice per evaluation
    assert "NFE 20, 40 model evaluations" in capsys.readouterr().out
    assert grid.stat().st_size > 0 and (tmp_path / "grid_trajectory.png").stat().st_size > 0
    arrays = load_npz(npz)
    assert arrays["images"].shape == (20, 28, 28) and arrays["images"].dtype == np.float32
    assert arrays["images"].min() >= 0 and arrays["images"].max() <= 1
    np.testing.assert_array_equal(arrays["labels"], np.repeat(np.arange(10), 2))


def test_resume_through_cli(mnist_run, capsys):
    rc = main(["train", "--data", "mnist", "--steps", "6", "--out", str(mnist_run), "--resume",
               *TINY, "--sample-every", "1000"])
    assert rc == 0
    assert "trained to step 6" in capsys.readouterr().out


def test_toy_train_and_sample(tmp_path):
    out = tmp_path / "toy"
    assert main(["train", "--data", "moons", "--steps", "5", "--hidden", "16", "--batch", "32",
                 "--out", str(out), "--no-progress"]) == 0
    png, npz = tmp_path / "moons.png", tmp_path / "moons.npz"
    assert main(["sample", "--model", str(out / "ckpt.pt"), "-n", "50", "--steps", "4",
                 "--method", "euler", "--out", str(png), "--npz", str(npz)]) == 0
    assert load_npz(npz)["samples"].shape == (50, 2)
    assert (tmp_path / "moons_trajectory.png").stat().st_size > 0


@pytest.mark.parametrize("argv,message", [
    (["train", "--data", "cifar"], "unknown data set 'cifar'"),
    (["train", "--data", "mnist", "--mults", "1,x"], "comma-separated integers"),
    (["train", "--data", "moons", "--batch", "0"], "batch must be a positive integer"),
    (["train", "--data", "mnist", "--data-dir", "/nonexistent"], "not found"),
    (["sample", "--model", "/nonexistent/ckpt.pt", "--out", "x.png"], "no such checkpoint"),
    (["frobnicate"], "invalid choice"),
    (["sample"], "required"),
])
def test_bad_input_exits_2_with_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(main(argv))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("fm-torch: error: ") and err.count("\n") == 1, err
    assert message in err


def test_bad_sample_inputs(mnist_run, tmp_path, capsys):
    ckpt = str(mnist_run / "ckpt.pt")
    assert main(["sample", "--model", ckpt, "--method", "leapfrog", "--out",
                 str(tmp_path / "a.png")]) == 2
    assert "unknown solver method" in capsys.readouterr().err
    assert main(["sample", "--model", ckpt, "--out", str(tmp_path / "a.jpg")]) == 2
    assert ".png" in capsys.readouterr().err
    torn = tmp_path / "torn.pt"
    torn.write_bytes(b"not a checkpoint")
    assert main(["sample", "--model", str(torn), "--out", str(tmp_path / "a.png")]) == 2
    assert "not a readable torch checkpoint" in capsys.readouterr().err
