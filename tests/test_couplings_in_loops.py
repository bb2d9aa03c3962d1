"""Couplings inside the real training loops of both packages (train() -> loop.fit): every
step's permutation is the optimal assignment of that step's batch, solved here by SciPy on
the squared distances (per class for ot-class), and the objective trains on the re-paired
noise x0[perm]; reflow distillation hands the objective t = 0 only.

The coupling and the objective are wrapped, not replaced: the wrappers record what the
loop hands them and return the package's own result.
"""

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

import fm_numpy.objectives as np_objectives
import fm_numpy.train as np_train
import fm_torch.objectives as th_objectives
import fm_torch.train as th_train


def _optimal_perm(x0, x1):
    """perm with x0[perm] paired to x1, minimising sum |x0[perm[j]] - x1[j]|^2."""
    x0, x1 = x0.reshape(len(x0), -1), x1.reshape(len(x1), -1)
    cost = ((x0[:, None, :] - x1[None, :, :]) ** 2).sum(-1)  # (B, B): x0 row i, x1 column j
    rows, cols = linear_sum_assignment(cost)
    return rows[np.argsort(cols)]


def _record(monkeypatch, module, objective_module, loss_name):
    """Wrap module.make_coupling's coupling and objective_module.FlowMatching's loss."""
    calls, seen = [], []
    real_make = module.make_coupling

    def make_coupling(name, block=None):
        inner = real_make(name, block)

        def coupling(x0, x1, y, draws):
            perm = inner(x0, x1, y, draws)
            calls.append([np.asarray(a.cpu() if torch.is_tensor(a) else a).copy()
                          for a in (x0, x1, y if y is not None else np.zeros(0), perm)])
            return perm

        return coupling

    real_loss = getattr(objective_module.FlowMatching, loss_name)

    def loss(self, net, batch):
        seen.append({k: np.asarray(v.cpu() if torch.is_tensor(v) else v).copy()
                     for k, v in batch.items() if k in ("x0", "x1", "t")})
        return real_loss(self, net, batch)

    monkeypatch.setattr(module, "make_coupling", make_coupling)
    monkeypatch.setattr(objective_module.FlowMatching, loss_name, loss)
    return calls, seen


def _check_steps(calls, seen, kind, steps):
    assert len(calls) == len(seen) == steps
    for (x0, x1, y, perm), batch in zip(calls, seen, strict=True):
        perm = perm.astype(np.int64)
        np.testing.assert_array_equal(batch["x0"], x0[perm])  # the loop used the pairing
        np.testing.assert_array_equal(batch["x1"], x1)
        if kind == "ot":
            np.testing.assert_array_equal(perm, _optimal_perm(x0, x1))
        elif kind == "ot-class":
            np.testing.assert_array_equal(y[perm], y)  # never across classes
            for c in np.unique(y):
                idx = np.flatnonzero(y == c)
                np.testing.assert_array_equal(perm[idx], idx[_optimal_perm(x0[idx], x1[idx])])
        else:  # sinkhorn: one x0 per x1 drawn from the entropic plan
            cost = ((x0[perm] - x1) ** 2).sum() / ((x0 - x1) ** 2).sum()
            assert cost < 0.9, cost  # far cheaper pairs than the independent draw
        assert not np.array_equal(perm, np.arange(len(perm)))


TOY = dict(data="8gaussians", batch=24, hidden=8, depth=1, time_features=4, ckpt_every=100)
MNIST_NP = dict(data="mnist", arch="mlp", batch=12, hidden=8, depth=1, time_features=4,
                n_train=64, ckpt_every=100)
MNIST_TH = dict(data="mnist", batch=12, base=8, mults=[1, 2], n_train=64, ckpt_every=100,
                sample_every=1000, lr_schedule="constant")


@pytest.mark.parametrize("kind", ["ot", "ot-class", "sinkhorn"])
def test_numpy_loop_couples_every_step(tmp_path, monkeypatch, kind):
    calls, seen = _record(monkeypatch, np_train, np_objectives, "loss_and_dv")
    settings = MNIST_NP if kind == "ot-class" else TOY
    np_train.train(tmp_path, progress=False, steps=3, coupling=kind, **settings)
    _check_steps(calls, seen, kind, 3)


@pytest.mark.parametrize("kind", ["ot", "ot-class", "sinkhorn"])
def test_torch_loop_couples_every_step(tmp_path, monkeypatch, kind):
    calls, seen = _record(monkeypatch, th_train, th_objectives, "loss")
    settings = MNIST_TH if kind == "ot-class" else dict(TOY, sample_every=1000, toy_pool=2048)
    th_train.train(tmp_path, progress=False, device="cpu", steps=3, coupling=kind, **settings)
    _check_steps(calls, seen, kind, 3)


def test_numpy_distillation_trains_at_t_zero_only(tmp_path, monkeypatch):
    """reflow(distill=True): every t the objective receives is 0, and a plain reflow's is
    not (the recorder would see it)."""
    from fm_numpy.reflow import reflow

    np_train.train(tmp_path / "teacher", progress=False, steps=5, **TOY)
    _, seen = _record(monkeypatch, np_train, np_objectives, "loss_and_dv")
    student = {k: v for k, v in TOY.items() if k != "data"}
    teacher = tmp_path / "teacher" / "model.npz"
    reflow(teacher, 64, tmp_path / "d", solver_steps=2, progress=False, steps=4, distill=True,
           **student)
    assert len(seen) == 4 and all(np.all(b["t"] == 0) for b in seen)
    seen.clear()
    reflow(teacher, 64, tmp_path / "r", solver_steps=2, progress=False, steps=4, **student)
    assert len(seen) == 4 and all(np.all(b["t"] > 0) for b in seen)


def test_torch_distillation_trains_at_t_zero_only(tmp_path, monkeypatch):
    from fm_torch.reflow import reflow

    th_train.train(tmp_path / "teacher", progress=False, device="cpu", steps=5,
                   **dict(TOY, sample_every=1000, toy_pool=2048))
    _, seen = _record(monkeypatch, th_train, th_objectives, "loss")
    student = {k: v for k, v in TOY.items() if k != "data"}
    teacher = tmp_path / "teacher" / "ckpt.pt"
    reflow(teacher, 64, tmp_path / "d", solver_steps=2, progress=False, device="cpu", steps=4,
           distill=True, sample_every=1000, **student)
    assert len(seen) == 4 and all(np.all(b["t"] == 0) for b in seen)
