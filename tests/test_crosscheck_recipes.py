"""Training recipes (fm_numpy/fm_torch schedules.py and ema.py): closed forms, the two
packages' rates and EMA step for step, moments of the time samplers, and bit-identical resume
with every recipe on. (Whole training steps of both real loops: test_crosscheck_loops.py.)"""

import math

import numpy as np
import pytest
import torch

from fm_numpy import schedules as np_sched
from fm_numpy.ema import EMA as NumpyEMA
from fm_numpy.io import load_npz
from fm_numpy.models.mlp import MLP as NumpyMLP
from fm_torch import schedules as th_sched
from fm_torch.ema import EMA as TorchEMA
from fm_torch.models.mlp import MLP as TorchMLP

RECIPE = dict(lr_schedule="cosine", warmup=10, time_sampling="logit-normal", time_mean=-0.3,
              time_std=0.8, ema_decay=0.9)


# ---------------------------------------------------------------- learning-rate schedules
@pytest.mark.parametrize("n, expected", [
    (0, 1e-3 / 10), (4, 5e-3 / 10), (9, 1e-3),  # warm-up (n + 1) / W
    (10, 1e-3), (60, 0.5e-3), (109, 1e-3 * (1 + np.cos(np.pi * 0.99)) / 2)])
def test_cosine_schedule_closed_form(n, expected):
    lr = np_sched.LRSchedule("cosine", 1e-3, 110, warmup=10)
    assert lr(n) == pytest.approx(expected, rel=1e-14)


@pytest.mark.parametrize("name, n, expected", [
    ("linear", 0, 2e-3 / 4), ("linear", 4, 2e-3), ("linear", 29, 2e-3 * (1 - 25 / 50)),
    ("linear", 53, 2e-3 * (1 - 49 / 50)), ("constant", 2, 3 * 2e-3 / 4),
    ("constant", 53, 2e-3), ("linear", 10_000, 0.0), ("cosine", 10_000, 0.0)])
def test_linear_and_constant_schedule_closed_form(name, n, expected):
    lr = np_sched.LRSchedule(name, 2e-3, 54, warmup=4)
    assert lr(n) == pytest.approx(expected, rel=1e-14, abs=1e-20)


def test_no_warmup_starts_at_the_base_rate_and_bad_settings_are_refused():
    assert np_sched.LRSchedule("cosine", 1e-3, 100)(0) == 1e-3
    for kwargs in (dict(name="step"), dict(warmup=100), dict(warmup=-1), dict(lr=0.0),
                   dict(steps=0)):
        with pytest.raises(ValueError):
            np_sched.LRSchedule(**{"name": "cosine", "lr": 1e-3, "steps": 100, **kwargs})
    with pytest.raises(ValueError, match="time sampling"):
        np_sched.TimeSampler("beta")
    with pytest.raises(ValueError, match="std"):
        np_sched.TimeSampler("logit-normal", 0.0, 0.0)


def test_torch_applies_the_same_rates_through_param_groups():
    w = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = torch.optim.SGD([w], lr=123.0)
    lr_at = th_sched.LRSchedule("linear", 0.1, 20, warmup=5)
    w_np = np.zeros(3)
    for n in range(20):
        w.grad = torch.ones(3, dtype=torch.float64)
        th_sched.set_lr(opt, lr_at(n))
        opt.step()
        w_np -= np_sched.LRSchedule("linear", 0.1, 20, warmup=5)(n) * np.ones(3)
        assert opt.param_groups[0]["lr"] == lr_at(n)
    np.testing.assert_allclose(w.detach().numpy(), w_np, rtol=0, atol=1e-15)


# ------------------------------------------------------------------------------ EMA
def test_ema_matches_the_recursion_and_fm_torch_step_for_step():
    rng = np.random.default_rng(0)
    layer = torch.nn.Linear(4, 3, dtype=torch.float64)
    params = {k: v.detach().numpy().copy() for k, v in layer.state_dict().items()}
    ema_np, ema_th = NumpyEMA(params, 0.5), TorchEMA(layer, 0.5)
    scalar = params["bias"][0]  # an independent recursion for one coordinate
    for n in range(25):
        params = {k: rng.standard_normal(p.shape) for k, p in params.items()}
        layer.load_state_dict({k: torch.from_numpy(p) for k, p in params.items()})
        ema_np.update(params)
        ema_th.update(layer)
        d = min(0.5, (1 + n) / (10 + n))  # warm-up for n < 8, then the decay
        scalar = d * scalar + (1 - d) * params["bias"][0]
        for k, p in ema_th.model.state_dict().items():
            np.testing.assert_allclose(ema_np.params[k], p.numpy(), rtol=0, atol=1e-12)
    assert ema_np.params["bias"][0] == pytest.approx(scalar, abs=1e-14)
    assert ema_np.updates == ema_th.updates == 25
    with pytest.raises(ValueError, match="decay"):
        NumpyEMA(params, 1.0)


def test_ema_decay_zero_is_the_raw_weights():
    params = {"W": np.arange(6.0).reshape(2, 3)}
    ema = NumpyEMA(params, 0.0)
    ema.update({"W": params["W"] * 3})
    np.testing.assert_array_equal(ema.params["W"], params["W"] * 3)


# ------------------------------------------------------------------- time sampling
def _logit_normal_moments(m, s):
    """E[t], Var[t] of t = sigmoid(m + s z) by Gauss-Hermite quadrature (100 nodes)."""
    z, w = np.polynomial.hermite_e.hermegauss(100)
    w = w / w.sum()
    t = 1 / (1 + np.exp(-(m + s * z)))
    mean = float(np.sum(w * t))
    return mean, float(np.sum(w * (t - mean) ** 2))


def test_logit_normal_formula_is_the_same_in_both_packages():
    z = np.random.default_rng(1).standard_normal(1000) * 4
    a = np_sched.logit_normal(z, -0.3, 0.8)
    b = th_sched.logit_normal(torch.from_numpy(z), -0.3, 0.8).numpy()
    np.testing.assert_allclose(a, b, rtol=1e-13, atol=0)
    np.testing.assert_allclose(np.log(a / (1 - a)), -0.3 + 0.8 * z, atol=1e-9)  # logit inverts


@pytest.mark.parametrize("name, m, s", [("uniform", 0.0, 1.0), ("logit-normal", 0.0, 1.0),
                                        ("logit-normal", 0.5, 1.5)])
@pytest.mark.parametrize("package", ["numpy", "torch"])
def test_time_sampler_moments_match_the_closed_form(name, m, s, package):
    n = 200_000
    if package == "numpy":
        t = np_sched.TimeSampler(name, m, s).sample(n, np.random.default_rng(2), np.float64)
    else:
        t = th_sched.TimeSampler(name, m, s).sample(
            n, torch.Generator().manual_seed(2), torch.float64).numpy()
    mean, var = (0.5, 1 / 12) if name == "uniform" else _logit_normal_moments(m, s)
    assert t.min() >= 0 and t.max() <= 1
    se_mean = math.sqrt(var / n)
    assert abs(t.mean() - mean) < 4 * se_mean
    se_var = math.sqrt((np.mean((t - t.mean()) ** 4) - var ** 2) / n)
    assert abs(t.var() - var) < 4 * se_var
    if name == "logit-normal":  # logit(t) ~ N(m, s^2): its mean and std
        u = np.log(t / (1 - t))
        assert abs(u.mean() - m) < 4 * s / math.sqrt(n)
        assert abs(u.std() - s) < 4 * s / math.sqrt(2 * n)


# The whole recipe (warm-up + cosine rates, logit-normal t, Adam, EMA) in both packages'
# real loops from the same draws: tests/test_crosscheck_loops.py (case logit-normal-cosine).


# ------------------------------------------------------------------ resume, recipe on
def _crash_after(monkeypatch, module, updates):
    """Make the training loop of `module` die inside EMA update number `updates` + 1."""
    calls = {"n": 0}
    original = module.EMA.update

    def update(self, *args):
        calls["n"] += 1
        if calls["n"] > updates:
            raise RuntimeError("simulated crash")
        return original(self, *args)

    monkeypatch.setattr(module.EMA, "update", update)
    return lambda: monkeypatch.setattr(module.EMA, "update", original)


def test_numpy_resume_is_bit_identical_with_the_recipe_on(tmp_path, monkeypatch):
    import fm_numpy.train as module

    tiny = dict(data="moons", batch=32, hidden=8, depth=2, time_features=4, lr=5e-3,
                time_scale=1.0, steps=60, ckpt_every=20, **RECIPE)
    full, _ = module.train(tmp_path / "full", progress=False, **tiny)
    restore = _crash_after(monkeypatch, module, 45)  # dies in step 46; checkpoint at 40
    with pytest.raises(RuntimeError, match="simulated"):
        module.train(tmp_path / "part", progress=False, **tiny)
    restore()
    with pytest.raises(ValueError, match="lr_schedule"):  # the recipe is part of the run
        module.train(tmp_path / "part", resume=True, progress=False,
                     **{**tiny, "lr_schedule": "linear"})
    with pytest.raises(ValueError, match="steps"):  # so is a decaying schedule's horizon
        module.train(tmp_path / "part", resume=True, progress=False, **{**tiny, "steps": 80})
    resumed, _ = module.train(tmp_path / "part", resume=True, progress=False, **tiny)
    for name, p in full.params.items():
        np.testing.assert_array_equal(resumed.params[name], p)
    a, b = (load_npz(tmp_path / f / "checkpoint.npz") for f in ("full", "part"))
    model_a, model_b = (load_npz(tmp_path / f / "model.npz") for f in ("full", "part"))
    assert int(a["ema.updates"]) == int(b["ema.updates"]) == 60
    for name in full.params:
        np.testing.assert_array_equal(a[f"ema.param.{name}"], b[f"ema.param.{name}"])
        np.testing.assert_array_equal(model_a[name], model_b[name])
        np.testing.assert_array_equal(model_a[name], a[f"ema.param.{name}"])  # EMA is sampled
        np.testing.assert_array_equal(a[f"model.{name}"], full.params[name])  # raw is resumed
    assert not np.array_equal(model_a["W0"], a["model.W0"])


def test_torch_resume_is_bit_identical_with_the_recipe_on(tmp_path, monkeypatch):
    import fm_torch.train as module

    tiny = dict(data="moons", batch=32, hidden=8, depth=2, time_features=4, lr=5e-3,
                time_scale=1.0, toy_pool=512, sample_every=10**6, steps=60, ckpt_every=20,
                **RECIPE)
    full, _ = module.train(tmp_path / "full", progress=False, device="cpu", **tiny)
    restore = _crash_after(monkeypatch, module, 45)
    with pytest.raises(RuntimeError, match="simulated"):
        module.train(tmp_path / "part", progress=False, device="cpu", **tiny)
    restore()
    with pytest.raises(ValueError, match="steps"):
        module.train(tmp_path / "part", resume=True, progress=False, device="cpu",
                     **{**tiny, "steps": 80})
    resumed, _ = module.train(tmp_path / "part", resume=True, progress=False, device="cpu",
                              **tiny)
    for (name, p), q in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    a, b = (torch.load(tmp_path / f / "ckpt.pt", weights_only=True) for f in ("full", "part"))
    assert a["ema"]["updates"] == b["ema"]["updates"] == 60
    for name, p in a["ema"]["model"].items():
        assert torch.equal(p, b["ema"]["model"][name]), name
    assert a["optimizer"]["param_groups"][0]["lr"] == b["optimizer"]["param_groups"][0]["lr"]


def test_old_mlp_files_without_time_scale_load_as_1000(tmp_path):
    model = NumpyMLP(2, 8, 2, 4, seed=0)
    arrays = {k: p for k, p in model.params.items()}
    config = {k: v for k, v in model.config.items() if k != "time_scale"}
    import json

    np.savez(tmp_path / "old.npz", config=np.array(json.dumps(config)), **arrays)
    old = NumpyMLP.from_npz(tmp_path / "old.npz")
    assert old.time_scale == 1000.0
    assert TorchMLP.from_npz(tmp_path / "old.npz").time_scale == 1000.0
    x, t = np.ones((3, 2), np.float32), np.full(3, 0.3, np.float32)
    np.testing.assert_array_equal(old.forward(x, t), model.forward(x, t))
    with pytest.raises(ValueError, match="time_scale"):
        NumpyMLP(2, 8, 2, 4, time_scale=0.0)
    with pytest.raises(ValueError, match="time_scale"):  # another time scale: another model
        NumpyMLP(2, 8, 2, 4, time_scale=1.0).load_npz(tmp_path / "old.npz")


def test_time_scale_enters_forward_and_the_time_tangent():
    """v at time_scale 1 equals torch's; jvp along dt matches a central difference."""
    mlp = NumpyMLP(2, 16, 2, 8, seed=1, dtype=np.float64, time_scale=3.0)
    twin = TorchMLP(2, 16, 2, 8, seed=1, dtype=torch.float64, time_scale=3.0)
    rng = np.random.default_rng(5)
    x, t = rng.standard_normal((6, 2)), rng.uniform(0.1, 0.9, 6)
    np.testing.assert_allclose(mlp.forward(x, t), twin(torch.from_numpy(x),
                                                        torch.from_numpy(t)).detach().numpy(),
                               rtol=0, atol=1e-12)
    _, jv = mlp.jvp(x, t, np.zeros_like(x), dt=1.0)
    h = 1e-6
    fd = (mlp.forward(x, t + h) - mlp.forward(x, t - h)) / (2 * h)
    np.testing.assert_allclose(jv, fd, rtol=1e-6, atol=1e-8)
