"""The NumPy-only promise: with only numpy, scipy and the standard library importable,
fm_numpy trains, samples and writes its files; tqdm and matplotlib are optional (no
traceback without them). A meta-path finder in a fresh interpreter refuses every other
top-level package, and the test asserts none of them was imported."""

import json
import subprocess
import sys
import textwrap

BLOCKER = textwrap.dedent("""
    import importlib.abc, importlib.machinery, os, sys
    ALLOWED = set(sys.stdlib_module_names) | {"numpy", "scipy", "fm_numpy"}
    STDLIB = os.path.dirname(os.__file__)  # private stdlib files (_sysconfigdata_...) too
    before = {m.partition(".")[0] for m in sys.modules}
    blocked = set()

    def in_stdlib(name):
        spec = importlib.machinery.PathFinder.find_spec(name)
        origin = getattr(spec, "origin", None) or ""
        return origin.startswith(STDLIB + os.sep) and "site-packages" not in origin

    class OnlyNumpyScipy(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            top = name.partition(".")[0]
            if top not in ALLOWED and not (top == name and in_stdlib(name)):
                blocked.add(top)
                raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
            return None

    sys.meta_path.insert(0, OnlyNumpyScipy())
""")

REPORT = textwrap.dedent("""
    import json
    import fm_numpy, numpy, scipy
    homes = [STDLIB] + [os.path.dirname(p.__file__) for p in (fm_numpy, numpy, scipy)]
    loaded = {name for name, m in list(sys.modules.items())  # files from anywhere else
              if getattr(m, "__file__", None) and name.partition(".")[0] not in before
              and not any(os.path.realpath(m.__file__).startswith(os.path.realpath(h) + os.sep)
                          for h in homes)}
    print("REPORT " + json.dumps({"loaded": sorted(loaded), "blocked": sorted(blocked)}))
""")


def _python(body, tmp_path):
    return subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(body) + REPORT],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1",
                               "HF_HUB_OFFLINE": "1"})


def _run(body, tmp_path):
    out = _python(body, tmp_path)
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(s for s in out.stdout.splitlines() if s.startswith("REPORT "))
    report = json.loads(line[len("REPORT "):])
    assert report["loaded"] == [], report  # nothing outside numpy, scipy and the stdlib
    return out, report


def test_library_trains_and_samples_with_numpy_and_scipy_only(tmp_path):
    """train() with progress on (tqdm missing: no bar, no error), resume, and sampling."""
    out, report = _run("""
        import numpy as np
        from fm_numpy.train import train
        from fm_numpy.solvers import odeint
        model, losses = train("run", progress=True, data="moons", steps=2, batch=16,
                              hidden=8, depth=1, time_features=4, ckpt_every=1)
        model, losses = train("run", resume=True, progress=True, steps=3)
        assert [s for s, _ in losses] == [1, 2, 3], losses
        x = odeint(model, np.zeros((4, 2), np.float32), np.linspace(0, 1, 3), "rk4")[-1]
        assert np.all(np.isfinite(x))
    """, tmp_path)
    assert {"torch", "tqdm", "matplotlib"} & set(report["blocked"]) >= {"tqdm"}
    for name in ("checkpoint.npz", "model.npz", "loss.csv", "config.json"):
        assert (tmp_path / "run" / name).exists(), name


def test_cli_trains_and_samples_with_numpy_and_scipy_only(tmp_path):
    """`fm-numpy train` and `sample` through cli.main: exit 0, no traceback, the .npz files
    written (the PNG plots are skipped without matplotlib)."""
    out, report = _run("""
        from fm_numpy.cli import main
        rc = main(["train", "--data", "moons", "--steps", "2", "--batch", "16", "--hidden",
                   "8", "--depth", "1", "--time-features", "4", "--out", "run"])
        assert rc == 0, rc
        rc = main(["sample", "--model", "run/model.npz", "--steps", "2", "-n", "8",
                   "--out", "samples.npz"])
        assert rc == 0, rc
    """, tmp_path)
    assert "matplotlib" in report["blocked"]
    for path in ("run/model.npz", "run/checkpoint.npz", "samples.npz"):
        assert (tmp_path / path).exists(), path
    import numpy as np

    with np.load(tmp_path / "samples.npz", allow_pickle=False) as f:
        assert f["samples"].shape == (8, 2)


def test_the_blocker_refuses_other_packages(tmp_path):
    """The check can fail: tqdm and torch are installed here, and the blocker refuses them."""
    for name in ("tqdm", "torch"):
        out = _python(f"import {name}\n", tmp_path)
        assert out.returncode != 0 and f"No module named '{name}' (blocked)" in out.stderr
