"""Public command-line features checked by what they do, not only by their exit code:
the fm-numpy recipe and architecture flags, `reflow` in both CLIs (--guidance,
--solver-steps, --method, --distill), and diffusers' sigmas as our times.

Each expected value is computed here from its equation or by the library called directly
with the option the flag names, so a flag that is dropped or mis-mapped fails.
"""

import json

import numpy as np
import pytest
import torch

from fm_numpy.data import load_pairs
from fm_numpy.models import load_model
from fm_numpy.models.mlp import MLP
from fm_numpy.solvers import odeint


def _perturbed_mlp(path, num_classes=None, seed=0):
    """A 2-D MLP file with random weights everywhere (its output layer starts at zero)."""
    model = MLP(2, hidden=16, depth=1, time_features=8, num_classes=num_classes, seed=seed)
    rng = np.random.default_rng(seed + 50)
    for p in model.params.values():
        p[...] = 0.5 * rng.standard_normal(p.shape)
    model.save_npz(path)
    return model


# ---------------------------------------------------------------- fm-numpy train flags
RECIPE_FLAGS = {  # flag -> (config key, value)
    "--arch": ("arch", "resmlp"), "--lr-schedule": ("lr_schedule", "cosine"),
    "--warmup": ("warmup", 2), "--time-sampling": ("time_sampling", "logit-normal"),
    "--time-mean": ("time_mean", 0.3), "--time-std": ("time_std", 0.7),
    "--weight-decay": ("weight_decay", 0.01),
    "--max-grad-norm": ("max_grad_norm", 0.5), "--dtype": ("dtype", "float64"),
    "--ema-decay": ("ema_decay", 0.5), "--label-dropout": ("label_dropout", 0.2),
    "--scheduler": ("scheduler", "cosine"), "--lr": ("lr", 0.003),
}


def test_numpy_train_flags_reach_the_run(tmp_path, capsys):
    """Every recipe/architecture flag lands in config.json, and the CLI run's weights are
    those of train() called with the same settings by name: bit for bit."""
    from fm_numpy.cli import main
    from fm_numpy.train import train

    common = dict(data="8gaussians", steps=6, batch=32, hidden=8, depth=1, time_features=4,
                  ckpt_every=3, seed=2)
    argv = ["train", "--no-progress", "--out", str(tmp_path / "cli")]
    for key, value in common.items():
        argv += ["--" + key.replace("_", "-"), str(value)]
    for flag, (_, value) in RECIPE_FLAGS.items():
        argv += [flag, str(value)]
    assert main(argv) == 0, capsys.readouterr().err
    config = json.loads((tmp_path / "cli" / "config.json").read_text())
    for flag, (key, value) in RECIPE_FLAGS.items():
        assert config[key] == value, (flag, config[key])
    model_cli = load_model(tmp_path / "cli" / "model.npz")
    assert type(model_cli).__name__ == "ResMLP" and model_cli.dtype == np.float64
    settings = {key: value for key, value in RECIPE_FLAGS.values()}
    train(tmp_path / "api", progress=False, **common, **settings)
    model_api = load_model(tmp_path / "api" / "model.npz")
    for name, p in model_api.params.items():
        np.testing.assert_array_equal(model_cli.params[name], p, err_msg=name)
    # and the flags changed the run: the defaults give other weights
    train(tmp_path / "plain", progress=False, **dict(common, arch="resmlp", dtype="float64"))
    plain = load_model(tmp_path / "plain" / "model.npz")
    assert any(not np.array_equal(plain.params[k], p) for k, p in model_api.params.items())
    # --time-scale reaches the MLP's time features; the ResMLP (a fixed 1000) refuses it
    assert main(["train", "--no-progress", "--out", str(tmp_path / "mlp"), "--steps", "1",
                 "--hidden", "8", "--depth", "1", "--time-scale", "7"]) == 0
    assert load_model(tmp_path / "mlp" / "model.npz").config["time_scale"] == 7.0
    assert main(["train", "--no-progress", "--out", str(tmp_path / "res"), "--steps", "1",
                 "--arch", "resmlp", "--time-scale", "7"]) == 2
    assert "time_scale applies to the mlp only" in capsys.readouterr().err
    assert not (tmp_path / "res" / "checkpoint.npz").exists()


# ---------------------------------------------------------------- reflow, both CLIs
def test_numpy_reflow_cli_with_guidance_solver_steps_and_method(tmp_path, capsys):
    """Pairs of a class-conditional teacher: x0 from --seed, labels in turn, x1 = the
    guided ODE with --method and --solver-steps; guidance written out here:
    v = v(x, t, null) + w (v(x, t, y) - v(x, t, null)), null = num_classes."""
    from fm_numpy.cli import main

    teacher = _perturbed_mlp(tmp_path / "teacher.npz", num_classes=3)
    out = tmp_path / "student"
    argv = ["reflow", "--teacher", str(tmp_path / "teacher.npz"), "--pairs", "30", "--out",
            str(out), "--seed", "4", "--method", "midpoint", "--solver-steps", "3",
            "--guidance", "2.5", "--steps", "4", "--batch", "8", "--no-progress"]
    assert main(argv) == 0, capsys.readouterr().err
    x0, x1, y, meta = load_pairs(out / "pairs.npz")
    assert meta["steps"] == 3 and meta["method"] == "midpoint" and meta["guidance"] == 2.5
    np.testing.assert_array_equal(x0, np.random.default_rng(4).standard_normal((30, 2))
                                  .astype(np.float32))
    np.testing.assert_array_equal(y, np.arange(30) % 3)
    null = np.full(30, 3)

    def guided(x, t):
        v_null = teacher.forward(x, t, null).copy()  # (B, 2)
        return v_null + 2.5 * (teacher.forward(x, t, y) - v_null)

    expected = odeint(guided, x0, np.linspace(0, 1, 4), "midpoint")[-1]  # (30, 2)
    np.testing.assert_allclose(x1, expected, rtol=1e-5, atol=1e-6)
    unguided = odeint(lambda x, t: teacher.forward(x, t, y), x0, np.linspace(0, 1, 4),
                      "midpoint")[-1]
    assert np.abs(unguided - expected).max() > 1e-2  # guidance 2.5 really moved the pairs
    config = json.loads((out / "config.json").read_text())
    assert config["steps"] == 4 and config["distill"] is False
    assert load_model(out / "model.npz").num_classes == 3  # the student keeps the classes


def test_numpy_reflow_cli_distill(tmp_path, capsys):
    from fm_numpy.cli import main

    _perturbed_mlp(tmp_path / "teacher.npz")
    out = tmp_path / "d"
    argv = ["reflow", "--teacher", str(tmp_path / "teacher.npz"), "--pairs", "20", "--out",
            str(out), "--solver-steps", "2", "--distill", "--steps", "3", "--batch", "8",
            "--no-progress"]
    assert main(argv) == 0, capsys.readouterr().err
    assert json.loads((out / "config.json").read_text())["distill"] is True
    assert "student trained to step 3" in capsys.readouterr().out


def test_torch_reflow_cli_solver_steps_method_and_distill(tmp_path, capsys):
    """fm-torch reflow from a toy ckpt.pt: x0 from torch.Generator(seed), x1 = the EMA
    teacher's ODE with --method and --solver-steps (fm_torch.solvers.odeint by hand)."""
    from fm_torch.cli import main
    from fm_torch.solvers import odeint as torch_odeint
    from fm_torch.train import load_model as torch_load_model
    from fm_torch.train import train as torch_train

    torch_train(tmp_path / "t", progress=False, device="cpu", data="8gaussians", steps=3,
                batch=16, hidden=8, depth=1, time_features=4, ckpt_every=3, sample_every=1000,
                toy_pool=2048)
    for distill in (False, True):
        out = tmp_path / f"s{int(distill)}"
        argv = ["reflow", "--teacher", str(tmp_path / "t" / "ckpt.pt"), "--pairs", "12",
                "--out", str(out), "--seed", "3", "--method", "heun", "--solver-steps", "2",
                "--steps", "2", "--batch", "4", "--device", "cpu", "--no-progress"]
        assert main(argv + (["--distill"] if distill else [])) == 0, capsys.readouterr().err
        x0, x1, y, meta = load_pairs(out / "pairs.npz")
        assert meta["steps"] == 2 and meta["method"] == "heun" and y is None
        x0_expected = torch.randn((12, 2), generator=torch.Generator().manual_seed(3))
        np.testing.assert_array_equal(x0, x0_expected.numpy())
        teacher, _ = torch_load_model(tmp_path / "t" / "ckpt.pt", ema=True)
        with torch.no_grad():
            end = torch_odeint(lambda x, t, net=teacher: net(x, t), x0_expected,
                               torch.linspace(0, 1, 3), "heun")[-1]
        np.testing.assert_allclose(x1, end.numpy(), rtol=1e-5, atol=1e-6)
        config = json.loads((out / "config.json").read_text())
        assert config["distill"] is distill and config["steps"] == 2


# ---------------------------------------------------------------- diffusers interop
def test_flow_times_from_sigmas_is_one_minus_sigma_in_diffusers_convention():
    """diffusers' flow matching noises as x = sigma x0 + (1 - sigma) x1 (scale_noise); our
    path at t = 1 - sigma gives the same point, and the grid runs from near 0 to 1."""
    diffusers = pytest.importorskip("diffusers")
    from fm_torch.diffusers_interop import flow_times_from_sigmas
    from fm_torch.paths import AffinePath

    sched = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    sched.set_timesteps(8)
    sigmas = sched.sigmas  # (9,), the last 0
    t = flow_times_from_sigmas(sigmas)
    assert t.dtype == torch.float64 and t.shape == sigmas.shape
    np.testing.assert_allclose(t.numpy(), 1 - sigmas.double().numpy(), rtol=0, atol=0)
    assert torch.all(t[1:] > t[:-1]) and t[-1] == 1
    g = torch.Generator().manual_seed(0)
    x1, x0 = torch.randn(3, 2, generator=g), torch.randn(3, 2, generator=g)
    for k, timestep in enumerate(sched.timesteps):
        theirs = sched.scale_noise(x1, timestep.reshape(1), x0)  # (3, 2)
        ours, _ = AffinePath().sample(x0, x1, t[k].float().expand(3))
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- fm-numpy likelihood flags
def _numpy_likelihood(capsys, tmp_path, name, argv):
    from fm_numpy.cli import main

    out = tmp_path / f"{name}.json"
    assert main(["likelihood", *argv, "--no-progress", "--out", str(out)]) == 0, \
        capsys.readouterr().err
    return json.loads(out.read_text())["mean_log_likelihood"]


def test_numpy_likelihood_flags_reach_the_estimator(tmp_path, capsys):
    """Each of --divergence, --probe, --n-probes, --method, --rtol/--atol gives exactly
    log_likelihood called with that option (seed = --seed + batch index), and changes the
    value against the run without it."""
    from fm_numpy.cli_likelihood import held_out_data
    from fm_numpy.likelihood import log_likelihood

    _perturbed_mlp(tmp_path / "m.npz", seed=3)
    model64 = MLP.from_npz(tmp_path / "m.npz", dtype=np.float64)
    base = ["--model", str(tmp_path / "m.npz"), "--data", "8gaussians", "-n", "12", "--batch",
            "12", "--seed", "5", "--steps", "8"]
    x1, _ = held_out_data("8gaussians", 12, 5)
    cases = {
        "exact": ([], dict(method="rk4", steps=8)),
        "hutch": (["--divergence", "hutchinson"],
                  dict(method="rk4", steps=8, divergence="hutchinson")),
        "gauss3": (["--divergence", "hutchinson", "--probe", "gaussian", "--n-probes", "3"],
                   dict(method="rk4", steps=8, divergence="hutchinson", probe="gaussian",
                        n_probes=3)),
        "loose": (["--method", "RK45", "--rtol", "1e-2", "--atol", "1e-2"],
                  dict(method="RK45", rtol=1e-2, atol=1e-2)),
        "tight": (["--method", "RK45", "--rtol", "1e-4", "--atol", "1e-4"],
                  dict(method="RK45", rtol=1e-4, atol=1e-4)),
    }
    got = {}
    for name, (flags, options) in cases.items():
        got[name] = _numpy_likelihood(capsys, tmp_path, name, [*base, *flags])
        want = log_likelihood(model64, x1, seed=5, **options).mean()
        np.testing.assert_allclose(got[name], want, rtol=1e-12, err_msg=name)
    for a, b in (("exact", "hutch"), ("hutch", "gauss3"), ("loose", "tight")):
        assert abs(got[a] - got[b]) > 1e-6, (a, b, got)


def test_numpy_likelihood_labels_on_mnist(tmp_path, capsys):
    """--labels scores log p(x | y) with the test labels; without it, the null class."""
    from fm_numpy.cli_likelihood import held_out_data
    from fm_numpy.likelihood import log_likelihood

    model = MLP(784, hidden=16, depth=1, time_features=8, num_classes=10, seed=1)
    rng = np.random.default_rng(7)
    for p in model.params.values():
        p[...] = 0.05 * rng.standard_normal(p.shape)
    model.save_npz(tmp_path / "m.npz")
    model64 = MLP.from_npz(tmp_path / "m.npz", dtype=np.float64)
    base = ["--model", str(tmp_path / "m.npz"), "--data", "mnist", "-n", "3", "--batch", "3",
            "--method", "euler", "--steps", "2", "--seed", "0"]
    x1, labels = held_out_data("mnist", 3, 0)
    with_labels = _numpy_likelihood(capsys, tmp_path, "labels", [*base, "--labels"])
    null = _numpy_likelihood(capsys, tmp_path, "null", base)
    options = dict(method="euler", steps=2, seed=0)
    np.testing.assert_allclose(with_labels, log_likelihood(model64, x1, y=labels, **options)
                               .mean(), rtol=1e-12)
    np.testing.assert_allclose(null, log_likelihood(model64, x1, **options).mean(), rtol=1e-12)
    np.testing.assert_allclose(null, log_likelihood(model64, x1, y=np.full(3, 10), **options)
                               .mean(), rtol=1e-12)  # no label = the null class 10
    assert abs(with_labels - null) > 1e-6
