"""The training-step kinds of the conformance kit: check_training_step, check_time_sampling,
check_seeded, check_prediction, and check_solver's stage times.

Our own training steps (fm_numpy.objectives / fm_torch.objectives: FlowMatching, MeanFlow;
uniform and logit-normal times; label dropout to the null class num_classes; the couplings)
pass; each deliberately broken step triggers its finding code (the 9 bug kinds of issue 22).
"""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fm_numpy import coupling as np_coupling
from fm_numpy import objectives as np_obj
from fm_numpy import schedules as np_sched
from fm_numpy.conformance import (
    check_prediction,
    check_seeded,
    check_solver,
    check_time_sampling,
    check_training_step,
)
from fm_numpy.draws import RngDraws
from fm_numpy.paths import AffinePath, make_scheduler
from fm_torch import conformance as tc
from fm_torch import objectives as t_obj
from fm_torch import schedules as t_sched
from fm_torch.draws import GeneratorDraws
from fm_torch.paths import AffinePath as TorchPath
from fm_torch.paths import make_scheduler as torch_scheduler

K = 10  # classes of the label probes


def numpy_step(objective, times, p=0.1, coupling=None, seed=0):
    """Our fm_numpy step as the loop runs it: times, x0, coupling, label dropout, prepare, loss."""
    draws = RngDraws(np.random.default_rng(seed))

    def loss(model, x1, y):
        B = len(x1)
        batch = {"x1": x1, "y": y, "t": times.sample(draws, B, np.float64)}
        x0 = draws.normal("x0", x1.shape, np.float64)
        if coupling is not None:
            x0 = x0[coupling(x0, x1, y, draws)]
        batch["x0"] = x0
        if y is not None:
            batch["y"] = np.where(draws.uniform("drop", (B,), np.float64) < p, K, y)
        objective.prepare(batch, draws)
        return objective.loss_and_dv(model, batch)
    return loss


def torch_step(objective, times, p=0.1, coupling=None, seed=0):
    """Our fm_torch step, the same order of draws."""
    draws = GeneratorDraws(torch.Generator().manual_seed(seed))

    def loss(model, x1, y):
        B = len(x1)
        batch = {"x1": x1, "y": y, "t": times.sample(draws, B, torch.float64)}
        batch["x0"] = draws.normal("x0", tuple(x1.shape), torch.float64)
        if coupling is not None:
            batch["x0"] = batch["x0"][coupling(batch["x0"], x1, y, draws)]
        if y is not None:
            drop = draws.uniform("drop", (B,), torch.float64) < p
            batch["y"] = torch.where(drop, torch.full_like(y, K), y)
        objective.prepare(batch, draws)
        return objective.loss(model, batch)
    return loss


@pytest.mark.parametrize("scheduler", ["condot", "cosine", "linear_vp"])
@pytest.mark.parametrize("times", [np_sched.Uniform(), np_sched.LogitNormal(0.0, 1.0)])
def test_ours_numpy_fm_passes(scheduler, times):
    step = numpy_step(np_obj.FlowMatching(AffinePath(make_scheduler(scheduler))), times)
    report = check_training_step(step, scheduler, num_classes=K, label_dropout=0.1)
    assert report.passed, report.table()


@settings(max_examples=6, deadline=None)
@given(scheduler=st.sampled_from(["condot", "sigma_min_ot", "cosine", "linear_vp", "vp",
                                  "polynomial"]), seed=st.integers(0, 10**6))
def test_ours_numpy_fm_passes_every_scheduler(scheduler, seed):
    step = numpy_step(np_obj.FlowMatching(AffinePath(make_scheduler(scheduler))),
                      np_sched.Uniform(), seed=seed)
    report = check_training_step(step, scheduler, seed=seed % 1000)
    assert report.passed, report.table()


@pytest.mark.parametrize("coupling", ["ot", "ot-class", "sinkhorn"])
def test_ours_numpy_couplings_pass(coupling):
    step = numpy_step(np_obj.FlowMatching(AffinePath()), np_sched.Uniform(),
                      coupling=np_coupling.make_coupling(coupling, None))
    report = check_training_step(step, num_classes=K, label_dropout=0.1)
    assert report.passed, report.table()


def test_ours_numpy_meanflow_passes():
    step = numpy_step(np_obj.MeanFlow(AffinePath(), ratio=0.25), np_sched.Uniform())
    report = check_training_step(step, objective="meanflow", ratio=0.25, num_classes=K)
    assert report.passed, report.table()


@pytest.mark.parametrize("scheduler", ["condot", "cosine"])
def test_ours_torch_fm_passes(scheduler):
    step = torch_step(t_obj.FlowMatching(TorchPath(torch_scheduler(scheduler))),
                      t_sched.LogitNormal(0.0, 1.0))
    report = tc.check_training_step(step, scheduler, num_classes=K, label_dropout=0.1)
    assert report.passed, report.table()


@pytest.mark.parametrize("coupling", ["ot", "ot-class", "sinkhorn"])
def test_ours_torch_couplings_pass(coupling):
    from fm_torch.coupling import make_coupling

    step = torch_step(t_obj.FlowMatching(TorchPath()), t_sched.Uniform(),
                      coupling=make_coupling(coupling, None))
    report = tc.check_training_step(step, num_classes=K, label_dropout=0.1)
    assert report.passed, report.table()


def test_ours_torch_meanflow_passes():
    """Through torch.func.jvp: the probe's time slopes give the JVP term a known value."""
    step = torch_step(t_obj.MeanFlow(TorchPath(), ratio=0.25), t_sched.Uniform())
    report = tc.check_training_step(step, objective="meanflow", ratio=0.25, num_classes=K)
    assert report.passed, report.table()


def broken(kind, seed=0):
    """A numpy FM step with one bug of issue 22's list (kind), else right."""
    rng = np.random.default_rng(seed)
    path = AffinePath()

    def loss(model, x1, y):
        B, D = x1.shape
        t = rng.standard_normal(B) if kind == "randn" else rng.random(B)
        x0 = rng.standard_normal((B, D))
        if kind == "reversed":  # x_t = t noise + (1 - t) data, target data - noise
            xt, ut = (1 - t)[:, None] * x1 + t[:, None] * x0, x1 - x0
        elif kind == "axis":  # t (B,) broadcast along the features
            xt, ut = t * x1 + (1 - t) * x0, x1 - x0
        elif kind == "randn":
            xt, ut = t[:, None] * x1 + (1 - t[:, None]) * x0, x1 - x0
        else:
            xt, ut = path.sample(x0, x1, t)
        if kind == "sign":
            ut = -ut
        if kind == "x1-target":
            ut = x1
        yy = None if kind == "no-labels" else np.where(
            rng.random(B) < 0.1, 0 if kind == "null-0" else K, y)
        v = model(xt, t[0] if kind == "scalar-t" else t, yy)
        diff = v - ut
        if kind == "sum":
            return float(np.sum(diff**2) / B), 2 * diff / B
        if kind == "weighted":
            return float(np.mean(t[:, None] * diff**2)), 2 * t[:, None] * diff / diff.size
        if kind == "l1":
            return float(np.mean(np.abs(diff))), np.sign(diff) / diff.size
        return float(np.mean(diff**2)), 2 * diff / diff.size
    return loss


@pytest.mark.parametrize("kind, code", [
    ("randn", "time-range"), ("reversed", "reversed-time"), ("axis", "t-axis"),
    ("sign", "sign-flipped"), ("x1-target", "wrong-target"), ("no-labels", "labels-ignored"),
    ("null-0", "null-class"), ("scalar-t", "one-t-per-sample"), ("sum", "reduction"),
    ("weighted", "weighting"), ("l1", "not-mse")])
def test_broken_step_is_named(kind, code):
    report = check_training_step(broken(kind), num_classes=K)
    assert code in report.codes, report.table()
    if kind == "reversed":  # the path and the target disagree too
        assert "target-mismatch" in report.codes


def test_broken_torch_step_is_named():
    """The torch wrapper sees the same bugs: t broadcast along the data axis (torchcfm 1.0.4)."""
    def loss(model, x1, y):
        t = torch.rand(len(x1), dtype=torch.float64)
        x0 = torch.randn_like(x1)
        xt = t * x1 + (1 - t) * x0  # (B, D): t scales the columns
        return torch.mean((model(xt, t, y) - (x1 - x0)) ** 2)
    assert tc.check_training_step(loss).codes == ["t-axis"]


def meanflow_broken(kind, seed=0):
    rng = np.random.default_rng(seed)
    path = AffinePath()
    from fm_numpy import meanflow

    def loss(model, x1, y, x0):
        r, t = meanflow.sample_r_t(rng, len(x1), ratio=0.75 if kind == "ratio" else 0.25,
                                   dtype=np.float64)
        if kind == "swap":
            r, t = t, r
        if kind == "randn":
            r = np.minimum(rng.standard_normal(len(x1)), t)
        z, v = path.sample(x0, x1, np.clip(r, 0, 1))
        u, du = model.jvp(z, t, v, y, r=r, dr=1.0, dt=0.0)
        target = v + (-1 if kind == "jvp-sign" else 1) * (t - r)[:, None] * du
        delta = u - target
        return float(np.mean(delta**2)), 2 * delta / delta.size
    return loss


@pytest.mark.parametrize("kind, code", [("ratio", "pair-ratio"), ("swap", "r-after-t"),
                                        ("randn", "time-range"),
                                        ("jvp-sign", "meanflow-target")])
def test_broken_meanflow_is_named(kind, code):
    report = check_training_step(meanflow_broken(kind), objective="meanflow", ratio=0.25)
    assert code in report.codes, report.table()


def test_right_meanflow_with_x0_passes():
    report = check_training_step(meanflow_broken("none"), objective="meanflow", ratio=0.25)
    assert report.passed, report.table()


@settings(max_examples=8, deadline=None)
@given(mean=st.floats(-1.0, 1.0), std=st.floats(0.3, 2.0), seed=st.integers(0, 1000))
def test_time_sampling_logit_normal_passes(mean, std, seed):
    sampler = np_sched.LogitNormal(mean, std)
    report = check_time_sampling(
        lambda n, rng: sampler.sample(RngDraws(rng), n, np.float64), "logit-normal", seed=seed)
    assert report.passed, report.table()


def test_time_sampling_findings():
    assert check_time_sampling(lambda n, rng: rng.random(n)).passed
    assert check_time_sampling(lambda n, rng: rng.standard_normal(n)).codes == ["time-range"]
    assert check_time_sampling(lambda n, rng: rng.random(n) ** 2).codes == ["time-distribution"]
    assert check_time_sampling(lambda n, rng: np.full(n, rng.random())).codes[0] == \
        "one-t-per-sample"
    # torch: our MeanFlow pairs, and r = U t (rectified-flow-pytorch MeanFlow <= 0.4.3)
    obj = t_obj.MeanFlow(TorchPath(), ratio=0.25)

    def pairs(n, gen, broken=False):
        batch = {"x1": torch.zeros(n, 1, dtype=torch.float64)}
        obj.prepare(batch, GeneratorDraws(gen))
        if broken:
            t = torch.rand(n, generator=gen, dtype=torch.float64)
            return torch.rand(n, generator=gen, dtype=torch.float64) * t, t
        return batch["r"], batch["t"]
    assert tc.check_time_sampling(pairs, ratio=0.25).passed
    bad = tc.check_time_sampling(lambda n, g: pairs(n, g, True), ratio=0.25)
    assert bad.codes == ["pair-ratio", "time-distribution"], bad.table()


def test_solver_stage_times_and_float32():
    def nano(v, x0, grid, fixed=False):  # rectified-flow-pytorch NanoFlow 0.2.12 vs 0.2.13
        n, x = len(grid) - 1, x0
        for t in np.linspace(0, 1 - 1 / n if fixed else 1, n):
            x = x + v(x, np.full(len(x), t)) / n
        return x
    assert check_solver(nano, "euler", states="last", backward=False).codes == ["stage-times"]
    assert check_solver(lambda v, x0, g: nano(v, x0, g, True), "euler", states="last",
                        backward=False).passed

    def euler32(v, x0, grid):
        x, xs = x0.astype(np.float32), [x0.astype(np.float32)]
        g = grid.astype(np.float32)
        for k in range(len(g) - 1):
            x = x + (g[k + 1] - g[k]) * v(x, g[k]).astype(np.float32)
            xs.append(x)
        return np.stack(xs)
    report = check_solver(euler32, "euler")
    assert report.passed and "float32" in report.notes[0], report.table()


def test_seeded_and_prediction():
    def step(v, x, rng):
        return x + 0.1 * v(x, 0.0) + 0.1 * rng.standard_normal(x.shape)
    assert check_seeded(step).passed
    assert check_seeded(lambda v, x, rng: x + np.random.standard_normal(x.shape)).codes == \
        ["ignores-generator"]

    def torch_step_global(v, x, gen):  # diffusers' FlowMatchEuler stochastic step before #13678
        return x + 0.1 * v(x, 0.0) + 0.1 * torch.randn_like(x)
    assert tc.check_seeded(torch_step_global).codes == ["ignores-generator"]
    assert tc.check_seeded(lambda v, x, g: x + torch.randn(x.shape, generator=g,
                                                           dtype=x.dtype)).passed
    path = AffinePath(make_scheduler("cosine"))
    assert check_prediction(path.x1_from_velocity, "x1", "cosine").passed
    assert check_prediction(path.x0_from_velocity, "x0", "cosine").passed
    assert check_prediction(lambda xt, v, t: xt + t[:, None] * v).codes == ["reversed-time"]
    assert tc.check_prediction(lambda xt, v, t: xt - (1 - t)[:, None] * v).codes == \
        ["sign-flipped"]


USER_CODE = '''
import numpy as np

from fm_numpy.paths import AffinePath

rng = np.random.default_rng(0)


def right(model, x1, y, x0):
    t = rng.random(len(x1))
    xt, ut = AffinePath().sample(x0, x1, t)
    d = model(xt, t, y) - ut
    return float(np.mean(d * d)), 2 * d / d.size


def summed(model, x1, y, x0):
    loss, dv = right(model, x1, y, x0)
    return loss * x1.shape[1], dv * x1.shape[1]


def uniform(n, rng):
    return rng.random(n)


def logit_normal(n, rng):
    return 1 / (1 + np.exp(-(0.5 + rng.standard_normal(n))))
'''


def test_cli_training_and_time_sampling(tmp_path, monkeypatch, capsys):
    from fm_numpy.cli import main

    (tmp_path / "mine.py").write_text(USER_CODE)
    monkeypatch.chdir(tmp_path)
    assert main(["check", "training", "mine:right", "--num-classes", "10"]) == 0
    assert main(["check", "training", "mine:summed"]) == 1
    assert "reduction:" in capsys.readouterr().out
    assert main(["check", "training", "mine:summed", "--reduction", "any"]) == 0
    assert main(["check", "time_sampling", "mine:uniform", "--times", "uniform"]) == 0
    assert main(["check", "time_sampling", "mine:logit_normal", "--times", "logit-normal"]) == 0
    assert main(["check", "time_sampling", "mine:logit_normal", "--times", "uniform"]) == 1
    capsys.readouterr()
    assert main(["check", "seeded", "mine:uniform", "--ratio", "0.2"]) == 2
    assert "--ratio does not apply to `check seeded`" in capsys.readouterr().err
