"""`fm-numpy check KIND FILE:FUNCTION` through the command line, for the six original kinds:
a right function exits 0, a wrong one exits 1, and every kind's flag reaches the check
(the same function passes under the flag that describes it and fails under one that does
not)."""

import textwrap

import pytest

from fm_numpy.cli import main

USER_CODE = textwrap.dedent('''
    import numpy as np

    from fm_numpy.analytic import eight_gaussians_mixture
    from fm_numpy.diffusion import DiffusionToFlow
    from fm_numpy.likelihood import log_likelihood
    from fm_numpy.paths import AffinePath, Polynomial
    from fm_numpy.solvers import ClassifierFreeGuidance, odeint


    def cube_path(x0, x1, t):  # alpha_t = t^3
        return AffinePath(Polynomial(3.0)).sample(x0, x1, t)


    def flipped_path(x0, x1, t):  # the target with the wrong sign
        xt, ut = AffinePath().sample(x0, x1, t)
        return xt, -ut


    def heun(v, x0, grid):  # a method the kit knows only by --order / --nfe-per-step
        return odeint(v, x0, grid, "heun")


    def ll_exact(v, x1):
        return log_likelihood(v, x1, method="rk4", steps=50, divergence="exact")


    def ll_hutchinson(v, x1):
        return log_likelihood(v, x1, method="rk4", steps=50, divergence="hutchinson")


    def guidance(model, x, t, y, w):
        return ClassifierFreeGuidance(model, y, w)(x, t)


    def guidance_reversed(model, x, t, y, w):  # w weights the unconditional side
        return ClassifierFreeGuidance(model, y, 1 - w)(x, t)


    _oracle = eight_gaussians_mixture()


    def velocity(x, t):
        return _oracle(x, t)


    def velocity_5_percent_off(x, t):
        return 1.05 * _oracle(x, t)


    def d2f_v(model, alphas_cumprod, prediction):  # knows only v-prediction
        return DiffusionToFlow(model, alphas_cumprod, "v")
''')


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    path = tmp_path_factory.mktemp("user") / "usercode.py"
    path.write_text(USER_CODE)
    return str(path)


def _check(capsys, *argv):
    capsys.readouterr()
    code = main(["check", *argv])
    return code, capsys.readouterr()


@pytest.mark.parametrize("argv,code", [
    # path: --scheduler and --scheduler-arg decide the truth the function is held to
    (["path", "cube_path", "--scheduler", "polynomial", "--scheduler-arg", "n=3"], 0),
    (["path", "cube_path", "--scheduler", "polynomial"], 1),  # the default n = 2
    (["path", "cube_path"], 1),  # condot
    (["path", "flipped_path"], 1),
    # solver: --order and --nfe-per-step describe a method the kit does not know by name
    (["solver", "heun", "--method", "heun"], 0),
    (["solver", "heun", "--method", "mine", "--order", "2", "--nfe-per-step", "2"], 0),
    (["solver", "heun", "--method", "mine", "--order", "4", "--nfe-per-step", "2"], 1),
    (["solver", "heun", "--method", "euler"], 1),  # heun is not first order with 1 NFE
    # likelihood: --divergence selects the estimator the function is held to
    (["likelihood", "ll_exact"], 0),
    (["likelihood", "ll_hutchinson", "--divergence", "hutchinson"], 0),
    (["likelihood", "ll_hutchinson", "--divergence", "exact"], 1),
    # guidance
    (["guidance", "guidance"], 0),
    (["guidance", "guidance_reversed"], 1),
    # velocity: --tol bounds |v - u|^2 / |u|^2, here 0.05^2 = 0.0025
    (["velocity", "velocity"], 0),
    (["velocity", "velocity_5_percent_off", "--tol", "0.01"], 0),
    (["velocity", "velocity_5_percent_off", "--tol", "0.001"], 1),
    # diffusion_to_flow: --prediction selects the network output the wrapper must undo
    (["diffusion_to_flow", "d2f_v", "--prediction", "v"], 0),
    (["diffusion_to_flow", "d2f_v", "--prediction", "epsilon"], 1),
], ids=lambda v: "-".join(v) if isinstance(v, list) else str(v))
def test_check_kinds_and_their_flags(user, capsys, argv, code):
    kind, name, *flags = argv
    got, out = _check(capsys, kind, f"{user}:{name}", *flags)
    assert got == code, out.out[-2000:] + out.err
    assert out.err == ""  # a verdict, not a usage error
    assert out.out.strip()  # the report table is printed either way


def test_a_flag_of_another_kind_is_a_usage_error(user, capsys):
    got, out = _check(capsys, "guidance", f"{user}:guidance", "--tol", "0.1")
    assert got == 2
    assert out.err.strip() == "fm-numpy: error: --tol does not apply to `check guidance`"
