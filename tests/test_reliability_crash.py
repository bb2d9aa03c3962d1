"""Crashes never lose work: SIGKILL at seeded random moments (one of them inside a
checkpoint write) leaves a loadable checkpoint and `--resume` ends bit-identical to an
uninterrupted run; SIGINT checkpoints the finished step and exits 130 with one line; a
diverging run stops naming the step and keeps its last good checkpoint.

Training runs in a subprocess through the real command lines (`python -m fm_numpy.cli`,
`python -m fm_torch.cli`) with tiny models. FM_DUAL_SLOW_WRITE (fm_numpy/io.py) holds
every atomic write open for a while so a kill can land inside one.
"""

import glob
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from fm_numpy.io import load_npz

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NUMPY_ARGS = ["--data", "8gaussians", "--steps", "40", "--batch", "16", "--hidden", "8",
              "--depth", "1", "--time-features", "4", "--ckpt-every", "1", "--seed", "3",
              "--no-progress"]
TORCH_ARGS = NUMPY_ARGS + ["--sample-every", "100000", "--device", "cpu", "--threads", "1"]


def _env(slow_write=None):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("FM_DUAL_SLOW_WRITE", None)
    if slow_write is not None:
        env["FM_DUAL_SLOW_WRITE"] = str(slow_write)
    return env


def _start(package, out, resume=False, slow_write=None):
    args = NUMPY_ARGS if package == "fm_numpy" else TORCH_ARGS
    argv = [sys.executable, "-m", f"{package}.cli", "train", *args, "--out", str(out)]
    if resume:
        argv.append("--resume")
    return subprocess.Popen(argv, cwd=ROOT, env=_env(slow_write), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _ckpt(package, out):
    return os.path.join(out, "checkpoint.npz" if package == "fm_numpy" else "ckpt.pt")


def _wait_for(predicate, proc, timeout=300.0):  # a bound on a hang, not a measure
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.002)
    raise AssertionError("timed out waiting for the training subprocess")


def _load(package, out):
    """The checkpoint's step and weights; raises if it is torn."""
    if package == "fm_numpy":
        arrays = load_npz(_ckpt(package, out))
        weights = {k: v for k, v in arrays.items() if k.startswith(("model.", "adam."))}
        return int(arrays["step"]), weights
    from fm_torch.io import load_checkpoint

    ckpt = load_checkpoint(_ckpt(package, out))
    weights = {f"model.{k}": v.numpy() for k, v in ckpt["model"].items()}
    weights.update({f"ema.{k}": v.numpy() for k, v in ckpt["ema"]["model"].items()})
    return int(ckpt["step"]), weights


def _reference(package, tmp_path):
    out = tmp_path / "reference"
    proc = _start(package, out)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    return _load(package, out)


def _assert_same(weights, reference):
    assert weights.keys() == reference.keys()
    for k in reference:
        np.testing.assert_array_equal(weights[k], reference[k], err_msg=k)


def _logged_step(out):
    """The last complete step in loss.csv (0 before the first row); rows are appended at
    every checkpoint (--ckpt-every 1), so this is the run's progress."""
    try:
        with open(os.path.join(out, "loss.csv")) as f:
            text = f.read()
    except FileNotFoundError:
        return 0
    rows = [r for r in text.split("\n")[1:-1] if r]  # header, complete lines only
    return int(rows[-1].split(",")[0]) if rows else 0


# A kill is sent once loss.csv shows step k, k <= 25 of 40: each remaining step holds its
# checkpoint write open for FM_DUAL_SLOW_WRITE (>= 0.01 s), so at least 15 steps
# (>= 0.15 s) lie between the gate and the run's end, 75x the 2 ms poll; no wall-clock
# sleep decides where the kill lands.
KILL_BY = 25


@pytest.mark.slow
@pytest.mark.parametrize("package", ["fm_numpy", "fm_torch"])
def test_sigkill_at_random_moments_then_resume_is_bit_identical(tmp_path, package):
    rng = np.random.default_rng(20240608)
    out = tmp_path / "run"
    steps_seen, killed_mid_write = [], False
    # three kills: after a random step, inside a checkpoint write, after a random step
    for attempt, mode in enumerate(("random", "mid-write", "random")):
        proc = _start(package, out, resume=attempt > 0 and os.path.exists(_ckpt(package, out)),
                      slow_write=0.01 if mode == "random" else 0.3)
        done = steps_seen[-1] if steps_seen else 0
        # a seeded step past the last kill; + 2 because loss.csv may hold one row past the
        # checkpoint until the resumed run rewrites it
        # (mid-write: at most 3 steps on, since every write there is held 0.3 s)
        high = {"random": 12 if attempt == 0 else KILL_BY, "mid-write": done + 4}[mode]
        gate = int(rng.integers(done + 2, high + 1))  # done <= 16 here: the range is not empty
        try:
            assert _wait_for(lambda g=gate: _logged_step(out) >= g, proc), "the run ended early"
            if mode == "mid-write":  # then kill while the next checkpoint's temp file is open
                assert _wait_for(lambda: glob.glob(os.path.join(out, ".tmp-*")), proc)
            tmps_before = set(glob.glob(os.path.join(out, ".tmp-*")))
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL, "the run ended before the kill"
        if mode == "mid-write":
            killed_mid_write = bool(tmps_before)
        step, _ = _load(package, out)  # never torn: the rename is atomic
        # the kill landed where it was aimed (the checkpoint of step `gate` may still have
        # been in its write)
        assert gate - 1 <= step <= gate + 1, (gate, step)
        steps_seen.append(step)
    assert killed_mid_write
    assert steps_seen == sorted(steps_seen) and steps_seen[-1] < 40
    proc = _start(package, out, resume=True)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    step, weights = _load(package, out)
    assert step == 40
    _assert_same(weights, _reference(package, tmp_path)[1])


@pytest.mark.slow
@pytest.mark.parametrize("package", ["fm_numpy", "fm_torch"])
def test_sigint_checkpoints_exits_130_and_resume_is_bit_identical(tmp_path, package):
    out = tmp_path / "run"
    proc = _start(package, out, slow_write=0.01)
    try:
        assert _wait_for(lambda: _logged_step(out) >= 5, proc), "the run ended early"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(package.replace("_", "-") + ": interrupted"), err
    assert "Traceback" not in err
    step, _ = _load(package, out)
    assert 5 <= step < 40
    # the interrupted step itself was saved: loss.csv ends at the checkpoint's step
    assert _logged_step(out) == step
    proc = _start(package, out, resume=True)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    step, weights = _load(package, out)
    assert step == 40
    _assert_same(weights, _reference(package, tmp_path)[1])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_numpy_divergence_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    from fm_numpy.train import TrainingDiverged, train

    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"at step (\d+)") as info:
        train(out, progress=False, data="8gaussians", steps=500, batch=16, hidden=8, depth=1,
              time_features=4, ckpt_every=1, lr=1e30)
    step, weights = _load("fm_numpy", out)
    assert f"(step {step})" in str(info.value)
    assert all(np.all(np.isfinite(w)) for w in weights.values())


def test_torch_divergence_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    from fm_torch.train import TrainingDiverged, train

    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"at step (\d+)") as info:
        train(out, progress=False, device="cpu", data="8gaussians", steps=500, batch=16,
              hidden=8, depth=1, time_features=4, ckpt_every=1, sample_every=100000,
              lr=1e30, max_grad_norm=None, toy_pool=1000)
    step, weights = _load("fm_torch", out)
    assert f"(step {step})" in str(info.value)
    assert all(np.all(np.isfinite(w)) for w in weights.values())


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_cli_divergence_is_one_line_on_stderr(tmp_path, capsys):
    from fm_numpy.cli import main

    code = main(["train", *NUMPY_ARGS, "--lr", "1e30", "--steps", "500",
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("fm-numpy: error: ") and "at step" in err
