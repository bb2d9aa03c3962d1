"""Chunked sampling (fm_numpy/sampling.py, fm_torch/sampling.py): chunked == unchunked,
streamed .npz files, and the CLIs' one-line refusal of an -n that cannot be written."""

import numpy as np
import pytest
import torch

from fm_numpy.mlp import MLP
from fm_numpy.sampling import NpzStreamWriter, check_output_fits, sample_in_chunks
from fm_numpy.solvers import ClassifierFreeGuidance, odeint


def _model(num_classes=None, dtype=np.float64):
    return MLP(2, 16, 2, time_features=8, num_classes=num_classes, seed=3, dtype=dtype)


@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4"])
def test_numpy_chunked_equals_unchunked(method):
    model = _model()
    x0 = np.random.default_rng(0).standard_normal((103, 2))
    grid = np.linspace(0, 1, 6)
    whole = odeint(model, x0, grid, method=method)[-1]  # one batch, whole trajectory kept
    chunked = sample_in_chunks(model, x0, grid, method, chunk=10)
    # rows are independent: the same numbers up to the GEMM's batch-size rounding
    np.testing.assert_allclose(chunked, whole, rtol=1e-12, atol=1e-12)
    last = odeint(model, x0, grid, method=method, only_last=True)
    assert last.shape == x0.shape and np.array_equal(last, odeint(model, x0, grid, method)[-1])


def test_numpy_chunked_guided_and_drawn_chunk_by_chunk():
    model = _model(num_classes=3)
    n, grid = 50, np.linspace(0, 1, 4)
    y = np.arange(n) % 3
    x0 = np.random.default_rng(5).standard_normal((n, 2))
    whole = odeint(ClassifierFreeGuidance(model, y, 2.0), x0, grid, "midpoint")[-1]
    rng = np.random.default_rng(5)
    got = []
    sample_in_chunks(lambda x, t, yc: ClassifierFreeGuidance(model, yc, 2.0)(x, t),
                     lambda k: rng.standard_normal((k, 2)), grid, "midpoint", chunk=7, y=y, n=n,
                     sink=got.append)
    assert [len(c) for c in got] == [7] * 7 + [1]
    np.testing.assert_allclose(np.concatenate(got), whole, rtol=1e-12, atol=1e-12)


def test_sample_in_chunks_refuses_bad_arguments():
    with pytest.raises(ValueError, match="chunk must be a positive integer"):
        sample_in_chunks(_model(), np.zeros((3, 2)), [0, 1], chunk=0)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        sample_in_chunks(_model(), lambda k: np.zeros((k, 2)), [0, 1])
    with pytest.raises(ValueError, match="y must have 3 labels"):
        sample_in_chunks(_model(3), np.zeros((3, 2)), [0, 1], y=np.zeros(2, int))


def test_npz_stream_writer_round_trip_and_atomicity(tmp_path):
    path = tmp_path / "s.npz"
    a = np.arange(30, dtype=np.float32).reshape(10, 3)
    with NpzStreamWriter(path) as w:
        w.begin("samples", a.shape, a.dtype)
        for lo in range(0, 10, 4):
            w.write(a[lo:lo + 4])
        w.begin("labels", (10,), np.int64)
        w.write(np.arange(10))
    with np.load(path, allow_pickle=False) as f:
        assert np.array_equal(f["samples"], a) and np.array_equal(f["labels"], np.arange(10))
    before = path.read_bytes()
    with pytest.raises(ValueError, match="2 rows were never written"):
        with NpzStreamWriter(path) as w:
            w.begin("samples", (3, 3), np.float32)
            w.write(a[:1])
    with pytest.raises(ValueError, match="do not fit"):
        with NpzStreamWriter(path) as w:
            w.begin("samples", (3, 3), np.float32)
            w.write(a[:4])
    assert path.read_bytes() == before  # a failed write leaves the old file
    assert [p.name for p in tmp_path.iterdir()] == ["s.npz"]  # and no temporary file


def test_check_output_fits(tmp_path):
    check_output_fits(tmp_path / "new" / "x.npz", 1000)
    with pytest.raises(ValueError, match=r"^-n 5 needs 1e\+18 GB but only .* GB are free in "):
        check_output_fits(tmp_path / "x.npz", 10**27, "-n 5")


def test_torch_chunked_equals_unchunked():
    from fm_torch.models.mlp import MLP as TorchMLP
    from fm_torch.sampling import sample_in_chunks as torch_chunks
    from fm_torch.solvers import odeint as torch_odeint

    model = TorchMLP(2, 16, 2, time_features=8, seed=3, dtype=torch.float64)
    x0 = torch.randn((103, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grid = torch.linspace(0, 1, 6, dtype=torch.float64)
    with torch.no_grad():
        whole = torch_odeint(model, x0, grid, "midpoint")[-1]
    chunked = torch_chunks(model, x0, grid, "midpoint", chunk=10)
    torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=1e-12)
    last = torch_odeint(model, x0, grid, "midpoint", only_last=True)
    assert torch.equal(last, whole)


def test_numpy_cli_chunked_equals_one_pass_and_refuses_huge_n(tmp_path, capsys):
    from fm_numpy.cli import main

    model = tmp_path / "m.npz"
    _model(dtype=np.float32).save_npz(model)
    outs = {}
    for chunk in ("7", "1000"):
        outs[chunk] = tmp_path / f"s{chunk}.npz"
        assert main(["sample", "--model", str(model), "--steps", "3", "-n", "40", "--chunk",
                     chunk, "--out", str(outs[chunk])]) == 0
    with np.load(outs["7"]) as a, np.load(outs["1000"]) as b:
        assert a["samples"].shape == (40, 2)
        np.testing.assert_allclose(a["samples"], b["samples"], rtol=1e-6, atol=1e-6)
    capsys.readouterr()
    huge = tmp_path / "huge.npz"
    assert main(["sample", "--model", str(model), "-n", "100000000000", "--out",
                 str(huge)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fm-numpy: error: -n 100000000000") and "GB are free" in err
    assert len(err.strip().splitlines()) == 1 and not huge.exists()


def test_torch_cli_refuses_huge_n(tmp_path, capsys):
    from fm_torch.cli import main

    run = tmp_path / "run"
    assert main(["train", "--data", "moons", "--steps", "2", "--hidden", "8", "--batch", "16",
                 "--out", str(run), "--no-progress"]) == 0
    capsys.readouterr()
    npz = tmp_path / "huge.npz"
    assert main(["sample", "--model", str(run / "ckpt.pt"), "-n", "100000000000", "--steps",
                 "2", "--out", str(tmp_path / "s.png"), "--npz", str(npz)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fm-torch: error: 100000000000 samples") and "GB are free" in err
    assert len(err.strip().splitlines()) == 1 and not npz.exists()
    small = tmp_path / "small.npz"
    assert main(["sample", "--model", str(run / "ckpt.pt"), "-n", "30", "--steps", "2",
                 "--chunk", "8", "--out", str(tmp_path / "s.png"), "--npz", str(small)]) == 0
    with np.load(small) as f:
        assert f["samples"].shape == (30, 2) and np.all(np.isfinite(f["samples"]))
