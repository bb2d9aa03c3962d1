"""fm_numpy.train: the loss falls, resume is bit-identical, NaN stops, samples match the data."""

import json

import numpy as np
import pytest

from fm_numpy.io import load_npz
from fm_numpy.train import TrainingDiverged, train

TINY = dict(data="moons", batch=64, hidden=16, depth=2, time_features=8, lr=5e-3)


def test_loss_falls(tmp_path):
    _, losses = train(tmp_path / "run", progress=False, steps=300, ckpt_every=100, **TINY)
    values = np.array([v for _, v in losses])
    assert [s for s, _ in losses] == list(range(1, 301))
    assert values[-50:].mean() < 0.88 * values[:20].mean()  # the CFM loss floor is high
    rows = (tmp_path / "run" / "loss.csv").read_text().splitlines()
    assert rows[0] == "step,loss" and len(rows) == 301
    assert json.loads((tmp_path / "run" / "config.json").read_text())["steps"] == 300


def test_resume_is_bit_identical(tmp_path):
    full, _ = train(tmp_path / "full", progress=False, steps=120, ckpt_every=40, **TINY)
    train(tmp_path / "part", progress=False, steps=80, ckpt_every=40, **TINY)
    resumed, losses = train(tmp_path / "part", resume=True, progress=False, steps=120,
                            ckpt_every=40, **TINY)
    for name, p in full.params.items():
        np.testing.assert_array_equal(resumed.params[name], p)
    assert [s for s, _ in losses] == list(range(1, 121))
    a, b = load_npz(tmp_path / "full" / "checkpoint.npz"), load_npz(
        tmp_path / "part" / "checkpoint.npz")
    assert str(a["rng_state"]) == str(b["rng_state"])
    np.testing.assert_array_equal(a["adam.s.W1"], b["adam.s.W1"])


def test_refuses_to_overwrite_or_resume_with_other_settings(tmp_path):
    train(tmp_path / "r", progress=False, steps=10, ckpt_every=5, **TINY)
    with pytest.raises(ValueError, match="already holds a run"):
        train(tmp_path / "r", progress=False, steps=10, **TINY)
    with pytest.raises(ValueError, match="hidden"):
        train(tmp_path / "r", resume=True, progress=False, steps=20, **{**TINY, "hidden": 8})
    with pytest.raises(FileNotFoundError):
        train(tmp_path / "none", resume=True, progress=False, steps=10, **TINY)


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path):
    # a huge learning rate blows the weights up; the checkpoint before the blow-up survives
    with pytest.raises(TrainingDiverged, match=r"at step \d+"):
        train(tmp_path / "nan", progress=False, steps=3000, ckpt_every=1,
              **{**TINY, "lr": 1e30})
    ckpt = load_npz(tmp_path / "nan" / "checkpoint.npz")
    assert all(np.all(np.isfinite(v)) for k, v in ckpt.items() if k.startswith("model."))


@pytest.mark.slow
def test_default_8gaussians_samples_match_data(tmp_path):
    from fm_numpy.data import sample_toy
    from fm_numpy.metrics import energy_distance
    from fm_numpy.solvers import odeint

    model, _ = train(tmp_path / "8g", progress=False, data="8gaussians")  # default settings
    rng = np.random.default_rng(123)
    n = 1000
    x0 = rng.standard_normal((n, 2)).astype(np.float32)
    samples = odeint(model, x0, np.linspace(0, 1, 21), "rk4")[-1]
    fresh, fresh2 = sample_toy("8gaussians", n, rng), sample_toy("8gaussians", n, rng)
    ed_model, ed_data = energy_distance(samples, fresh), energy_distance(fresh2, fresh)
    assert ed_model < 3 * ed_data, (ed_model, ed_data)


@pytest.mark.slow
def test_mnist_short_run_loss_falls(tmp_path):
    pytest.importorskip("mnist")
    _, losses = train(tmp_path / "mnist", progress=False, data="mnist", arch="resmlp", steps=400,
                      batch=32, hidden=64, depth=2, n_train=2000, ckpt_every=400)
    values = np.array([v for _, v in losses])
    assert values[-20:].mean() < 0.7 * values[:5].mean()  # 1.90 -> 1.20 measured


def test_resume_takes_the_runs_own_settings_where_none_are_given(tmp_path):
    # a run trained with settings that differ from the defaults resumes from its checkpoint
    # alone; a setting given explicitly is still checked against it
    settings = dict(TINY, ema_decay=0.5, steps=20, ckpt_every=10)
    train(tmp_path / "r", progress=False, **dict(settings, steps=10))
    _, losses = train(tmp_path / "r", resume=True, progress=False, data="moons", steps=20)
    full, full_losses = train(tmp_path / "whole", progress=False, **settings)
    assert [v for _, v in losses] == [v for _, v in full_losses]
    with pytest.raises(ValueError, match="ema_decay"):
        train(tmp_path / "r", resume=True, progress=False, data="moons", ema_decay=0.9)
