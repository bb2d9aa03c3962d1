"""The user's own data end to end through both command lines: a tiny CSV table and a tiny
image folder train (exit 0), the run folder records scaling, split and class names, `sample`
gives the data's units back, `evaluate` judges against the held-out split, and bad data
exits 2 with one line and no run folder."""

import contextlib
import io
import json
import os

import numpy as np
import pytest

from fm_numpy.datafiles import split_indices
from fm_numpy.png import read_png, write_png

PACKAGES = ["fm_numpy", "fm_torch"]


def _main(package):
    from importlib import import_module

    return import_module(f"{package}.cli").main


def _run(package, argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = _main(package)(argv)
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()


def _table(path, n=240, seed=0):
    """Two features on very different scales and an integer label column (values 3 and 7)."""
    rng = np.random.default_rng(seed)
    label = np.where(rng.random(n) < 0.5, 3, 7)
    a = rng.standard_normal(n) + (label == 7) * 2.0
    b = 100 * rng.standard_normal(n) - 500
    with open(path, "w") as f:
        f.write("a,kind,b\n")
        for row in zip(a, label, b, strict=True):
            f.write(f"{float(row[0])!r},{row[1]},{float(row[2])!r}\n")
    return np.stack([a, b], axis=1), label


def _folder(root, n=12, shape=(8, 6, 3), seed=0):
    rng = np.random.default_rng(seed)
    for c, level in (("dark", 40), ("light", 200)):
        os.makedirs(os.path.join(root, c))
        for i in range(n):
            image = np.clip(level + 20 * rng.standard_normal(shape), 0, 255).astype(np.uint8)
            write_png(os.path.join(root, c, f"{i:02d}.png"), image)


def _train_args(package, steps):
    common = ["--steps", str(steps), "--batch", "16", "--ckpt-every", str(steps),
              "--no-progress"]
    return common + (["--hidden", "32", "--depth", "2"] if package == "fm_numpy" else [])


@pytest.mark.parametrize("package", PACKAGES)
def test_csv_end_to_end(tmp_path, package):
    x, label = _table(tmp_path / "t.csv")
    run = tmp_path / "run"
    code, _, err = _run(package, ["train", "--data", str(tmp_path / "t.csv"), "--label-column",
                                  "kind", "--val-fraction", "0.25", "--out", str(run),
                                  *_train_args(package, 300)])
    assert code == 0, err
    info = json.loads((run / "data.json").read_text())
    assert info["class_names"] == ["3", "7"] and info["split"]["n_val"] == 60
    train_idx, _ = split_indices(240, 0.25, seed=0)  # the run's seed 0
    np.testing.assert_allclose(info["scaling"]["mean"], x[train_idx].mean(0), rtol=1e-9)
    np.testing.assert_allclose(info["scaling"]["std"], x[train_idx].std(0), rtol=1e-9)
    model = run / ("model.npz" if package == "fm_numpy" else "ckpt.pt")
    out = ["--out", str(tmp_path / "s.npz")] if package == "fm_numpy" else [
        "--out", str(tmp_path / "s.png"), "--npz", str(tmp_path / "s.npz")]  # + a scatter
    code, _, err = _run(package, ["sample", "--model", str(model), "--per-class", "200",
                                  "--steps", "10", "--guidance", "1", *out])
    assert code == 0, err
    with np.load(tmp_path / "s.npz") as f:
        samples, labels = f["samples"], f["labels"]
        assert f["class_names"].tolist() == ["3", "7"]
    assert samples.shape == (400, 2) and labels.tolist() == [3] * 200 + [7] * 200
    # the data's own units: feature b around -500 with spread 100, not standardised
    assert abs(samples[:, 1].mean() + 500) < 40 and 50 < samples[:, 1].std() < 150
    # the label conditions: class 7's feature a sits about 2 above class 3's
    gap = samples[labels == 7, 0].mean() - samples[labels == 3, 0].mean()
    assert 1.0 < gap < 3.0, gap
    code, out, err = _run(package, ["evaluate", "--model", str(model), "--n", "200",
                                    "--steps", "10", "--out", str(tmp_path / "m.json")])
    assert code == 0, err
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["n_heldout"] == 60 and "Gaussian" in out
    assert report["energy_distance_samples"] < 1.0  # a trained model, not noise


@pytest.mark.parametrize("package", PACKAGES)
def test_image_folder_end_to_end(tmp_path, package, monkeypatch):
    monkeypatch.setenv("FM_DUAL_CACHE", str(tmp_path / "cache"))
    _folder(str(tmp_path / "imgs"))
    run = tmp_path / "run"
    code, _, err = _run(package, ["train", "--data", str(tmp_path / "imgs"), "--out", str(run),
                                  "--val-fraction", "0.2", *_train_args(package, 4)])
    assert code == 0, err
    info = json.loads((run / "data.json").read_text())
    assert info["class_names"] == ["dark", "light"]
    assert info["scaling"]["kind"] == "minmax" and info["scaling"]["eight_bit"]
    model = run / ("model.npz" if package == "fm_numpy" else "ckpt.pt")
    grid = tmp_path / "s.png"
    argv = ["sample", "--model", str(model), "--per-class", "3", "--steps", "2"]
    argv += (["--out", str(tmp_path / "s.npz")] if package == "fm_numpy"
             else ["--out", str(grid), "--npz", str(tmp_path / "s.npz")])
    code, _, err = _run(package, argv)
    assert code == 0, err
    with np.load(tmp_path / "s.npz") as f:
        images, labels = f["images"], f["labels"]
    assert images.shape == (6, 8, 6, 3) and images.dtype == np.uint8
    assert labels.tolist() == [0, 0, 0, 1, 1, 1]
    grid = tmp_path / "s_grid.png" if package == "fm_numpy" else grid
    canvas = read_png(grid)  # 2 class rows of 3 images, each enlarged to >= 32 pixels
    assert canvas.ndim == 3 and canvas.shape[2] == 3 and canvas.shape[0] < canvas.shape[1]
    code, out, err = _run(package, ["evaluate", "--model", str(model), "--n", "8",
                                    "--steps", "2"])
    assert code == 0, err
    assert "nearest training image" in out
    code, _, err = _run(package, ["likelihood", "--model", str(model), "-n", "2"])
    assert code == 2 and len(err.strip().splitlines()) == 1 and "holds images" in err, err


@pytest.mark.parametrize("package", PACKAGES)
def test_likelihood_of_held_out_rows_in_the_data_units(tmp_path, package):
    """likelihood of a run on the user's vectors scores its held-out rows: in model space
    (standardised) and in the data's units, log p_x = log p_z - sum_d log std_d. Checked by
    the change of variables itself: the same table scaled by c standardises to the same
    rows, so the same training gives the same log p_z, and log p_x moves by -D log c.
    --data beside such a run is one line, exit 2."""
    x, label = _table(tmp_path / "t.csv")
    c = 10.0
    with open(tmp_path / "t10.csv", "w") as f:
        f.write("a,kind,b\n")
        for row in zip(c * x[:, 0], label, c * x[:, 1], strict=True):
            f.write(f"{float(row[0])!r},{row[1]},{float(row[2])!r}\n")
    results = {}
    for name in ("t", "t10"):
        run = tmp_path / name
        code, _, err = _run(package, ["train", "--data", str(tmp_path / f"{name}.csv"),
                                      "--label-column", "kind", "--val-fraction", "0.25",
                                      "--out", str(run), *_train_args(package, 40)])
        assert code == 0, err
        model = run / ("model.npz" if package == "fm_numpy" else "ckpt.pt")
        code, out, err = _run(package, ["likelihood", "--model", str(model), "--steps", "8",
                                        "--no-progress", "--out", str(tmp_path / f"{name}.json")])
        assert code == 0, err
        results[name] = json.loads((tmp_path / f"{name}.json").read_text())
    r, r10 = results["t"], results["t10"]
    assert r["n"] == 60 and r["space"] == "standardised features"  # every held-out row
    train_idx, _ = split_indices(240, 0.25, seed=0)
    assert r["log_abs_det"] == pytest.approx(-np.log(x[train_idx].std(0)).sum(), rel=1e-9)
    assert r["mean_log_likelihood_data_units"] == pytest.approx(
        r["mean_log_likelihood"] + r["log_abs_det"], rel=1e-12)
    assert r10["mean_log_likelihood"] == pytest.approx(r["mean_log_likelihood"], abs=1e-4)
    assert (r10["mean_log_likelihood_data_units"] - r["mean_log_likelihood_data_units"]
            == pytest.approx(-2 * np.log(c), abs=1e-4))
    model = tmp_path / "t" / ("model.npz" if package == "fm_numpy" else "ckpt.pt")
    code, _, err = _run(package, ["likelihood", "--model", str(model), "--data", "moons"])
    assert code == 2 and len(err.strip().splitlines()) == 1 and "leave out --data" in err, err


BAD = [("t.csv", "a,b\n1,2\n3,x\n", "'x' is not a number"),
       ("t.csv", "a,b\n1,2\n3\n", "a ragged row"),
       ("x.npy", np.array([[1.0, np.nan]] * 5), "NaN or Inf"),
       ("x.npy", b"\x89PNG\r\n\x1a\n not numpy", "is not a .npy file"),
       ("t.csv", "a,y\n" + "1,0\n" * 4 + "2,0.5\n", "not an integer"),
       ("t.csv", "a,b\n" + "1,2\n" * 5, "too few for --val-fraction")]


@pytest.mark.parametrize("package", PACKAGES)
@pytest.mark.parametrize("case", range(len(BAD)))
def test_bad_data_exit_2_one_line_no_run_folder(tmp_path, package, case):
    name, content, words = BAD[case]
    path = tmp_path / name
    if isinstance(content, np.ndarray):
        np.save(path, content)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    out = tmp_path / "run"
    extra = ["--label-column", "y"] if "a,y" in str(content) else []
    code, _, err = _run(package, ["train", "--data", str(path), "--out", str(out), *extra,
                                  *_train_args(package, 2)])
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and words in lines[0] and str(path) in lines[0], err
    assert not out.exists()  # nothing written before the data were checked
