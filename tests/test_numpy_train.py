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


def _images(n=64, seed=0):
    """8x8 images of a bright square, its column given by the class (2 classes)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)  # (n,)
    img = -np.ones((n, 8, 8), np.float32)  # (n, 8, 8)
    for i, c in enumerate(y):
        r = rng.integers(0, 5)
        img[i, r:r + 3, 4 * c:4 * c + 3] = 1.0
    return img, y


def _assert_same_run(a, b):
    """Every array of two run folders' checkpoint.npz and model.npz: weights, EMA, Adam's
    moments and step count, the generator's state."""
    for name in ("checkpoint.npz", "model.npz"):
        x, y = load_npz(a / name), load_npz(b / name)
        assert sorted(x) == sorted(y)
        for key in x:
            assert np.array_equal(x[key], y[key]), (name, key)
    ckpt = load_npz(a / "checkpoint.npz")
    assert any(k.startswith("adam.m.") for k in ckpt) and any(k.startswith("ema.") for k in ckpt)


@pytest.mark.parametrize("arch", ["mlp", "resmlp", "convnet"])
def test_resume_is_bit_identical_for_every_network(tmp_path, arch):
    """Stopped at step 6 and resumed to 10 == 10 steps at once, for all three networks, with
    labels, label dropout and an EMA (the MLP/ResMLP on labelled vectors, the ConvUNet on
    8x8 images)."""
    from fm_numpy.data import ArraySource

    img, y = _images()
    x = img if arch == "convnet" else img.reshape(len(img), 64)[:, ::8]  # (n, 8) vectors
    settings = dict(progress=False, threads=1, arch=arch, batch=16, hidden=4, depth=2,
                    time_features=4, lr=5e-3, ema_decay=0.9, label_dropout=0.3, ckpt_every=3)
    data = ArraySource(x, y)
    train(tmp_path / "full", data=data, steps=10, **settings)
    train(tmp_path / "part", data=data, steps=6, **settings)
    train(tmp_path / "part", resume=True, data=data, steps=10, **settings)
    _assert_same_run(tmp_path / "full", tmp_path / "part")


class _SignalAt:
    """Draws that send `signum` to this process `times` times at the x0 draw of step `at`
    (1-based), mid-step, as a preemption would arrive."""

    def __init__(self, inner, signum, at, times=1):
        self.inner, self.signum, self.at, self.times, self.count = inner, signum, at, times, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def normal(self, name, shape, dtype):
        import os

        if name == "x0":
            self.count += 1
            if self.count == self.at:
                for _ in range(self.times):
                    os.kill(os.getpid(), self.signum)
        return self.inner.normal(name, shape, dtype)


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_a_signal_stops_at_a_whole_step_with_a_checkpoint(tmp_path, signame):
    """SIGTERM (and SIGINT) mid-step 7: the step finishes, a checkpoint of step 7 is written,
    TrainingInterrupted is raised, the handlers are restored, and the resume reaches the
    uninterrupted run's weights bit for bit."""
    import signal

    from fm_numpy.draws import RngDraws
    from fm_numpy.train import TrainingInterrupted

    signum = getattr(signal, signame)
    before = signal.getsignal(signum)
    settings = dict(progress=False, steps=12, ckpt_every=5, **TINY)
    train(tmp_path / "full", **settings)
    draws = _SignalAt(RngDraws(np.random.default_rng(0)), signum, at=7)
    with pytest.raises(TrainingInterrupted, match="interrupted at step 7"):
        train(tmp_path / "part", draws=draws, **settings)
    assert signal.getsignal(signum) == before
    assert int(load_npz(tmp_path / "part" / "checkpoint.npz")["step"]) == 7
    train(tmp_path / "part", resume=True, **settings)
    _assert_same_run(tmp_path / "full", tmp_path / "part")


def test_a_second_signal_aborts_at_once(tmp_path):
    """Two SIGTERMs in step 7: KeyboardInterrupt at once (not the save-then-stop path); the
    checkpoint on disk is still step 5's."""
    import signal

    from fm_numpy.draws import RngDraws
    from fm_numpy.train import TrainingInterrupted

    before = signal.getsignal(signal.SIGTERM)
    draws = _SignalAt(RngDraws(np.random.default_rng(0)), signal.SIGTERM, at=7, times=2)
    with pytest.raises(KeyboardInterrupt) as info:
        train(tmp_path / "r", draws=draws, progress=False, steps=12, ckpt_every=5, **TINY)
    assert not isinstance(info.value, TrainingInterrupted)
    assert int(load_npz(tmp_path / "r" / "checkpoint.npz")["step"]) == 5
    assert signal.getsignal(signal.SIGTERM) == before


@pytest.mark.parametrize("arch", ["resmlp", "convnet"])
def test_time_scale_is_refused_where_the_network_would_ignore_it(arch):
    from fm_numpy.train_config import resolve_config

    with pytest.raises(ValueError, match="time_scale applies to the mlp only"):
        resolve_config(data="mnist", arch=arch, time_scale=7.0)
    assert resolve_config(data="mnist", arch=arch)["time_scale"] == 1000.0
    assert resolve_config(data="moons", arch="mlp", time_scale=7.0)["time_scale"] == 7.0
