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
def test_reference_files_regenerate_to_the_last_bits():
    # Not bit for bit: NumPy's exp/expm1 take other SIMD paths on other CPUs (AVX2 vs
    # AVX-512) and differ there by an ulp (VP's coefficients: 2.2e-16 on an AMD EPYC); the
    # likelihood references integrate an ODE, which carries such ulps to ~2e-14. 1e-12 of
    # each array's scale stays far below any change of a reference (the checks' own
    # tolerances are 1e-6 and up), so a stale file still fails.
    for kind, arrays in build_all().items():
        stored = load_reference(kind)
        assert sorted(stored) == sorted(arrays), kind
        for name, value in arrays.items():
            assert stored[name].dtype == np.asarray(value).dtype, (kind, name)
            if np.issubdtype(stored[name].dtype, np.floating):
                scale = float(np.max(np.abs(stored[name]), initial=0.0))
                np.testing.assert_allclose(stored[name], value, rtol=1e-12,
                                           atol=1e-12 * scale, err_msg=f"{kind} {name}")
            else:
                assert np.array_equal(stored[name], value), (kind, name)
            if np.issubdtype(stored[name].dtype, np.floating):
                assert stored[name].dtype == np.float64


def _closed_form(name, t):
    """(alpha_t, sigma_t, d_alpha_t, d_sigma_t) written out here from the papers, not taken
    from fm_numpy.paths, so a wrong formula in SCHEDULERS cannot agree with itself."""
    pi = np.pi
    if name == "condot":
        return t, 1 - t, np.ones_like(t), -np.ones_like(t)
    if name == "sigma_min_ot":  # Lipman et al. (2022), default sigma_min = 1e-4
        return t, 1 - (1 - 1e-4) * t, np.ones_like(t), -(1 - 1e-4) * np.ones_like(t)
    if name == "cosine":
        return (np.sin(pi * t / 2), np.cos(pi * t / 2),
                pi / 2 * np.cos(pi * t / 2), -pi / 2 * np.sin(pi * t / 2))
    if name == "linear_vp":
        return t, np.sqrt(1 - t * t), np.ones_like(t), -t / np.sqrt(1 - t * t)
    if name == "vp":  # Song et al.: beta(tau) = b0 + tau (b1 - b0) in diffusion time tau = 1 - t
        b0, b1, tau = 0.1, 20.0, 1 - t
        log_alpha = -0.5 * (b0 * tau + 0.5 * (b1 - b0) * tau**2)  # -1/2 int_0^tau beta
        alpha = np.exp(log_alpha)
        d_alpha = 0.5 * (b0 + tau * (b1 - b0)) * alpha  # d/dt = -d/dtau
        sigma = np.sqrt(1 - alpha**2)
        return alpha, sigma, d_alpha, -alpha * d_alpha / sigma  # alpha^2 + sigma^2 = 1
    if name == "polynomial":  # default n = 2
        return t**2, 1 - t**2, 2 * t, -2 * t
    raise AssertionError(f"no closed form written for {name!r}")


def test_closed_forms_written_here_have_the_right_derivatives():
    """The derivatives above against central differences of the values above."""
    t, h = np.linspace(0.05, 0.95, 19), 1e-6
    for name in SCHEDULERS:
        up, down, here = _closed_form(name, t + h), _closed_form(name, t - h), _closed_form(name, t)
        for k in (0, 1):
            fd = (up[k] - down[k]) / (2 * h)
            np.testing.assert_allclose(here[k + 2], fd, rtol=1e-7, atol=1e-8, err_msg=name)


@pytest.mark.parametrize("name", ["condot", "sigma_min_ot", "cosine", "linear_vp", "vp",
                                  "polynomial"])
def test_reference_path_values_are_the_closed_forms(name):
    ref = load_reference("path")
    x0, x1, t = ref["x0"], ref["x1"], ref["t"]
    a, s, da, ds = (c[:, None] for c in _closed_form(name, t))  # each (B, 1)
    xt, ut = a * x1 + s * x0, da * x1 + ds * x0  # (B, D)
    coef = np.stack([c[:, 0] for c in (a, s, da, ds)], axis=1)  # (B, 4)
    np.testing.assert_allclose(ref[f"{name}_coefficients"], coef, rtol=1e-12, atol=0)
    np.testing.assert_allclose(ref[f"{name}_xt"], xt, rtol=0, atol=1e-13 * np.abs(xt).max())
    np.testing.assert_allclose(ref[f"{name}_ut"], ut, rtol=0, atol=1e-12 * np.abs(ut).max())
    xt_code, ut_code = AffinePath(make_scheduler(name)).sample(x0, x1, t)
    np.testing.assert_allclose(xt_code, xt, rtol=0, atol=1e-13 * np.abs(xt).max())
    np.testing.assert_allclose(ut_code, ut, rtol=0, atol=1e-12 * np.abs(ut).max())


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
