"""The conformance kit passes our own implementations, in both packages, on every check;
its reference .npz files regenerate bit for bit; `fm-numpy check` exit codes.

The broken implementations it must diagnose are in tests/test_conformance_broken.py.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from fm_numpy import conformance as C
from fm_numpy.analytic import eight_gaussians_mixture
from fm_numpy.conformance.make_reference import build_all
from fm_numpy.conformance.report import load_reference
from fm_numpy.diffusion import DiffusionToFlow
from fm_numpy.likelihood import log_likelihood
from fm_numpy.paths import SCHEDULERS, AffinePath, make_scheduler
from fm_numpy.solvers import ClassifierFreeGuidance, odeint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def assert_passed(report):
    assert report.passed, report.table()
    assert report.findings == [] and report.rows


# ------------------------------------------------------------------ fm_numpy passes
@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_numpy_paths_pass(name):
    assert_passed(C.check_path(AffinePath(make_scheduler(name)).sample, name))


def test_numpy_path_with_scheduler_args_passes():
    path = AffinePath(make_scheduler("polynomial", n=3.0))
    assert_passed(C.check_path(path.sample, "polynomial", n=3.0))


@pytest.mark.parametrize("method", ["euler", "midpoint", "heun", "rk4", "RK45", "DOP853"])
def test_numpy_solvers_pass(method):
    assert_passed(C.check_solver(lambda v, x0, grid: odeint(v, x0, grid, method), method))


@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_numpy_likelihood_passes(divergence):
    def ll(v, x1):
        return log_likelihood(v, x1, method="rk4", steps=50, divergence=divergence)

    assert_passed(C.check_likelihood(ll, divergence))


def test_numpy_guidance_passes():
    assert_passed(C.check_guidance(lambda model, x, t, y, w: ClassifierFreeGuidance(
        model, y, w)(x, t)))


@pytest.mark.parametrize("prediction", ["epsilon", "v", "x0"])
def test_numpy_diffusion_to_flow_passes(prediction):
    assert_passed(C.check_diffusion_to_flow(DiffusionToFlow, prediction))


def test_oracle_velocity_passes():
    report = C.check_velocity(eight_gaussians_mixture())
    assert_passed(report)
    assert all(float(r[1]) < 1e-20 for r in report.rows)  # the oracle is the truth


# ------------------------------------------------------------------ fm_torch passes
torch = pytest.importorskip("torch")


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_torch_paths_pass(name):
    from fm_torch import conformance as T
    from fm_torch.paths import AffinePath as TorchPath
    from fm_torch.paths import make_scheduler as torch_scheduler

    assert_passed(T.check_path(TorchPath(torch_scheduler(name)).sample, name))


@pytest.mark.parametrize("method", ["euler", "midpoint", "heun", "rk4", "dopri5"])
def test_torch_solvers_pass(method):
    from fm_torch import conformance as T
    from fm_torch.solvers import odeint as torch_odeint

    assert_passed(T.check_solver(lambda v, x0, grid: torch_odeint(v, x0, grid, method), method))


@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_torch_likelihood_passes(divergence):
    from fm_torch import conformance as T
    from fm_torch.likelihood import log_likelihood as torch_ll

    def ll(v, x1):
        return torch_ll(v, x1, method="rk4", steps=50, divergence=divergence)

    assert_passed(T.check_likelihood(ll, divergence))


def test_torch_guidance_and_diffusion_pass():
    from fm_torch import conformance as T
    from fm_torch.diffusion import DiffusionToFlow as TorchD2F
    from fm_torch.solvers import ClassifierFreeGuidance as TorchCFG

    assert_passed(T.check_guidance(lambda model, x, t, y, w: TorchCFG(model, y, w)(x, t)))
    for prediction in ("epsilon", "v", "x0"):
        assert_passed(T.check_diffusion_to_flow(TorchD2F, prediction))


def test_torch_oracle_velocity_passes():
    from fm_torch import conformance as T
    from fm_torch.analytic import eight_gaussians_mixture as torch_eight

    assert_passed(T.check_velocity(torch_eight()))


# ------------------------------------------------------------------ reference files
def test_reference_files_regenerate_bit_for_bit():
    for kind, arrays in build_all().items():
        stored = load_reference(kind)
        assert sorted(stored) == sorted(arrays), kind
        for name, value in arrays.items():
            assert stored[name].dtype == np.asarray(value).dtype, (kind, name)
            assert np.array_equal(stored[name], value), (kind, name)
            if np.issubdtype(stored[name].dtype, np.floating):
                assert stored[name].dtype == np.float64


def test_reference_path_values_are_the_closed_forms():
    ref = load_reference("path")
    for name in SCHEDULERS:
        xt, ut = AffinePath(make_scheduler(name)).sample(ref["x0"], ref["x1"], ref["t"])
        assert np.max(np.abs(xt - ref[f"{name}_xt"])) < 1e-14
        assert np.max(np.abs(ut - ref[f"{name}_ut"])) < 1e-12 * np.max(np.abs(ut))


def test_reference_files_are_package_data():
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        text = f.read()
    assert "[tool.setuptools.package-data]" in text and "reference/*.npz" in text


# ------------------------------------------------------------------ command line
USER_CODE = '''
import numpy as np
def good(x0, x1, t):
    t = np.reshape(t, (-1, 1)) if np.ndim(t) else t
    return t * x1 + (1 - t) * x0, x1 - x0
def flipped(x0, x1, t):
    xt, ut = good(x0, x1, t)
    return xt, -ut
'''


def _cli(tmp_path, *args):
    (tmp_path / "usercode.py").write_text(USER_CODE)
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "fm_numpy.cli", "check", *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_cli_check_exit_codes(tmp_path):
    ok = _cli(tmp_path, "path", "usercode:good")
    assert ok.returncode == 0 and "PASSED" in ok.stdout, ok.stderr
    bad = _cli(tmp_path, "path", "usercode:flipped")
    assert bad.returncode == 1 and "sign-flipped:" in bad.stdout
    for args in (("path", "usercode:missing"), ("nope", "usercode:good"),
                 ("path", "usercode:good", "--method", "rk4")):
        r = _cli(tmp_path, *args)
        assert r.returncode == 2, args
        assert r.stderr.startswith("fm-numpy: error: ") and r.stderr.count("\n") == 1, r.stderr


def test_cli_check_torch_function(tmp_path, monkeypatch, capsys):
    from fm_numpy.cli import main

    (tmp_path / "torch_usercode.py").write_text(
        "from fm_torch.paths import AffinePath, Cosine\n"
        "sample = AffinePath(Cosine()).sample\n")
    monkeypatch.chdir(tmp_path)
    assert main(["check", "path", "torch_usercode:sample", "--torch", "--scheduler",
                 "cosine"]) == 0
    assert "PASSED" in capsys.readouterr().out
    assert main(["check", "path", "torch_usercode:sample", "--torch"]) == 1
    assert "wrong-scheduler: your path is Cosine()" in capsys.readouterr().out
