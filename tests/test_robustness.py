"""Robustness of the surroundings (issue 23): BLAS threads, plots, files, exit codes, metrics.

- ThreadedModel holds the BLAS at one thread inside its slices (threadpoolctl), and says
  in one line how to avoid oversubscription when threadpoolctl is missing;
- library plots never switch matplotlib's backend nor import pyplot, write PNGs atomically,
  and fm-numpy train/sample run without matplotlib (plots skipped in one line, exit 0);
- atomic_path fsyncs the folder after the rename and reads the umask without setting it;
- a full disk (ENOSPC, EDQUOT) is exit 1 in both CLIs, a path that cannot be used exit 2;
- energy distance keeps its digits for close points far from the origin (cdist);
- the benchmarks' interleaved timing loop alternates its order.
"""

import contextlib
import errno
import io
import os
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from fm_numpy import io as fio

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_2D = ["train", "--data", "8gaussians", "--steps", "2", "--batch", "8", "--hidden", "4",
            "--depth", "1", "--time-features", "2", "--ckpt-every", "1", "--no-progress"]


def _env(**extra):
    env = {k: v for k, v in os.environ.items()}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", **extra)
    return env


# ------------------------------------------------------------------------- BLAS threads
class _Probe:
    """A network that records the BLAS thread counts it runs under."""

    def __init__(self, seen):
        self.params = {"w": np.ones(3)}
        self.grads = {"w": np.zeros(3)}
        self.seen = seen

    def _record(self):
        from threadpoolctl import threadpool_info

        self.seen.append({d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"})

    def forward(self, x, t, y=None):
        self._record()
        return x * 1.0

    def backward(self, dv):
        self._record()
        self.grads["w"][:] = dv.sum()
        return self.grads


def test_threaded_model_runs_its_slices_on_one_blas_thread():
    from threadpoolctl import threadpool_info, threadpool_limits

    from fm_numpy.models.threads import ThreadedModel

    seen = []
    net = ThreadedModel(_Probe(seen), 2)
    x = np.arange(8.0).reshape(4, 2)  # (B, D)
    with threadpool_limits(2, user_api="blas"):  # what OpenBLAS does on 2 cores unasked
        net.forward(x, np.zeros(4))
        net.backward(np.ones((4, 2)))
        outside = {d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"}
    assert len(seen) == 4 and all(s == {1} for s in seen), seen
    assert outside == {2}  # the limit is lifted between the slices' work


def test_threaded_model_without_threadpoolctl_prints_one_hint(monkeypatch, capsys):
    from fm_numpy.models import threads

    monkeypatch.setattr(threads, "_controller", [None])  # as if the import had failed
    for var in threads._BLAS_VARS:
        monkeypatch.delenv(var, raising=False)
    net = threads.ThreadedModel(_Probe([]), 2)
    assert net.forward(np.ones((2, 2)), 0.5).shape == (2, 2)  # today's behaviour: it runs
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "threadpoolctl" in err[0] and "OMP_NUM_THREADS=1" in err[0]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user chose: no hint
    threads.ThreadedModel(_Probe([]), 2)
    assert capsys.readouterr().err == ""


# ------------------------------------------------------------------------------- plots
def test_library_plots_leave_the_backend_alone(tmp_path):
    """In a fresh process with the svg backend chosen (as a notebook chooses its own), every
    plot of both packages writes a PNG and neither switches the backend nor loads pyplot."""
    script = textwrap.dedent(f"""
        import sys
        import matplotlib
        matplotlib.use("svg")
        import numpy as np
        from fm_numpy import cli
        from fm_torch import plots
        from fm_torch.cli import _plot_trajectories_2d
        out = {str(tmp_path)!r}
        rng = np.random.default_rng(0)
        cli.plot_loss([(i, 1.0 / i) for i in range(1, 150)], out + "/loss.png")
        cli.plot_samples_2d(rng.normal(size=(50, 2)), rng.normal(size=(50, 2)), out + "/s.png")
        cli.plot_trajectories_2d(rng.normal(size=(3, 20, 2)), out + "/t.png")
        cli.plot_field_2d(lambda x, t: -x, out + "/f.png", n=5)
        cli.plot_digit_grid(rng.random((100, 28, 28)), np.arange(100) % 10, out + "/d.png")
        plots.save_image_grid(out + "/g.png", rng.random((20, 28, 28)), rows=2)
        plots.save_scatter(out + "/sc.png", rng.normal(size=(50, 2)), "x")
        _plot_trajectories_2d(rng.normal(size=(3, 20, 2)), out + "/tt.png")
        print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules)
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=ROOT, env=_env(MPLBACKEND=""), timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["svg", "False"]
    names = sorted(os.listdir(tmp_path))
    assert names == sorted(["loss.png", "s.png", "t.png", "f.png", "d.png", "g.png", "sc.png",
                            "tt.png"])
    for name in names:
        with open(tmp_path / name, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", name


def _failing_write(path, *args, **kwargs):
    with open(path, "wb") as f:
        f.write(b"\x89PNG half")  # a torn file, then the disk is full
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("which", ["numpy_loss", "torch_scatter", "torch_grid", "torch_traj"])
def test_pngs_are_written_atomically(which, tmp_path, monkeypatch):
    import matplotlib.figure
    import matplotlib.image

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda self, path, **kw: _failing_write(path))
    monkeypatch.setattr(matplotlib.image, "imsave", _failing_write)
    target = tmp_path / "plot.png"
    target.write_bytes(b"old")
    with pytest.raises(OSError):
        if which == "numpy_loss":
            from fm_numpy.cli import plot_loss

            plot_loss([(1, 1.0), (2, 0.5)], target)
        elif which == "torch_scatter":
            from fm_torch.plots import save_scatter

            save_scatter(target, np.zeros((3, 2)))
        elif which == "torch_grid":
            from fm_torch.plots import save_image_grid

            save_image_grid(target, np.zeros((2, 28, 28)), rows=1)
        else:
            from fm_torch.cli import _plot_trajectories_2d

            _plot_trajectories_2d(np.zeros((2, 3, 2)), target)
    assert target.read_bytes() == b"old"  # the old file, whole
    assert os.listdir(tmp_path) == ["plot.png"]  # no temporary file left


def test_fm_numpy_train_and_sample_without_matplotlib(tmp_path):
    """matplotlib made unimportable: train and sample still exit 0, skip their plots in one
    line and write their model and samples."""
    blocker = tmp_path / "blocker" / "matplotlib"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('matplotlib hidden by the test')\n")
    env = _env(PYTHONPATH=os.pathsep.join([str(blocker.parent), ROOT]), MPLBACKEND="")
    run = tmp_path / "run"
    cmds = [[*TRAIN_2D, "--out", str(run)],
            ["sample", "--model", str(run / "model.npz"), "-n", "50", "--steps", "2",
             "--out", str(tmp_path / "s.npz")]]
    for cmd in cmds:
        res = subprocess.run([sys.executable, "-m", "fm_numpy.cli", *cmd], capture_output=True,
                             text=True, cwd=ROOT, env=env, timeout=300)
        assert res.returncode == 0, res.stderr
        skipped = [line for line in res.stderr.splitlines() if "plots skipped" in line]
        assert skipped == ["fm-numpy: matplotlib is not installed; plots skipped "
                           "(pip install 'fm-dual[plot]')"], res.stderr
    assert (run / "model.npz").exists() and not (run / "loss.png").exists()
    assert np.load(tmp_path / "s.npz")["samples"].shape == (50, 2)
    assert not list(tmp_path.glob("s_*.png"))


# ------------------------------------------------------------------------------- files
def test_atomic_path_fsyncs_the_folder_after_the_rename(tmp_path, monkeypatch):
    calls = []
    real_fsync = os.fsync

    def fsync(fd):
        is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
        calls.append((is_dir, (tmp_path / "a.json").exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    fio.save_json(tmp_path / "a.json", {"x": 1})
    assert calls == [(False, False), (True, True)]  # the file before, the folder after


def test_umask_is_read_without_setting_it(tmp_path, monkeypatch):
    old = os.umask(0o027)
    try:
        def refuse(mask):
            raise AssertionError("os.umask called: it races with other threads")

        monkeypatch.setattr(os, "umask", refuse)
        assert fio._umask() == 0o027
        fio.save_json(tmp_path / "m.json", {})
        assert stat.S_IMODE(os.stat(tmp_path / "m.json").st_mode) == 0o640
    finally:
        monkeypatch.undo()
        os.umask(old)


def _main(package):
    from importlib import import_module

    return import_module(f"{package}.cli").main


def _run(main, argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, err.getvalue()


@pytest.mark.parametrize("package", ["fm_numpy", "fm_torch"])
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EIO])
def test_a_full_disk_is_exit_1(package, code, tmp_path, monkeypatch):
    def full(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", full)  # every atomic write and log append fails
    status, err = _run(_main(package), [*TRAIN_2D, "--out", str(tmp_path / "r")])
    prog = package.replace("_", "-")
    assert status == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: I/O failure"), err
    assert os.strerror(code) in lines[0]


@pytest.mark.parametrize("package", ["fm_numpy", "fm_torch"])
@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS])
def test_a_path_that_cannot_be_written_is_exit_2(package, code, tmp_path, monkeypatch):
    def refused(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", refused)
    status, err = _run(_main(package), [*TRAIN_2D, "--out", str(tmp_path / "r")])
    assert status == 2, err
    assert len(err.strip().splitlines()) == 1


def test_check_memory_uses_the_available_memory(monkeypatch):
    avail = fio.available_memory()
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert 0 < avail <= total
    monkeypatch.setattr(fio, "available_memory", lambda: 10**9)
    fio.check_memory(10**9, "-n 1")
    with pytest.raises(ValueError, match=r"^-n 2 needs about 2 GB of memory but only 1 GB"):
        fio.check_memory(2 * 10**9, "-n 2")


# ----------------------------------------------------------------------------- metrics
def test_energy_distance_keeps_its_digits_far_from_the_origin():
    """Close points 1e6 from the origin: |a|^2 + |b|^2 - 2ab loses the 1e-3 distances in
    rounding (2e12 - 2e12 leaves ~1e-4 of noise on squares of ~1e-6), the direct
    |a_i - b_j| (cdist) keeps them."""
    from fm_numpy.metrics import energy_distance

    rng = np.random.default_rng(0)
    center = np.full(2, 1e6)
    a = center + 1e-3 * rng.standard_normal((60, 2))  # (N, 2)
    b = center + 1e-3 * (rng.standard_normal((50, 2)) + 0.5)  # (M, 2)

    def mean_dist(p, q):  # float64, one difference at a time: no expansion
        return np.mean([[np.sqrt(np.sum((pi - qj) ** 2)) for qj in q] for pi in p])

    direct = 2 * mean_dist(a, b) - mean_dist(a, a) - mean_dist(b, b)

    def expanded(p, q):  # the old formula, to show this case does cancel
        sq = np.sum(p * p, 1)[:, None] + np.sum(q * q, 1)[None] - 2 * p @ q.T
        return np.mean(np.sqrt(np.maximum(sq, 0)))

    old = 2 * expanded(a, b) - expanded(a, a) - expanded(b, b)
    assert abs(old - direct) > 0.1 * abs(direct)  # the expansion was wrong here
    np.testing.assert_allclose(energy_distance(a, b), direct, rtol=1e-6)


# -------------------------------------------------------------------------- benchmarks
def test_interleaved_alternates_the_order_and_warms_up():
    from benchmarks.common import interleaved

    calls = []
    times = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                        reps=3, warmup=1)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    assert all(s >= 0 for v in times.values() for s in v)
