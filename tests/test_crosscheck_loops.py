"""The two packages' real training loops take the same steps from the same draws.

fm_numpy's train() (fm_numpy/loop.py) runs with Recorder(RngDraws(default_rng(seed))), which
logs every draw (name, shape, array); fm_torch's train() (fm_torch/loop.py) then runs with
Replay(log, "cpu", float64), which hands it those very numbers and fails at the first draw
whose (name, shape) differs. Both nets start from the same weights (one .npz), float64.
After a few steps we compare the weights, the EMA, the logged losses AND Adam's moments:
Adam's update is nearly blind to an overall gradient scale (m / sqrt(s) cancels it), its
moments are not, so a gradient twice too large would pass a weights-only check but fails
here (test_a_wrong_gradient_scale_shows_in_the_moments_only).

Tolerance: float64 with the same arithmetic up to operation order (numpy's handwritten
backward vs autograd, matmul blocking), over a few steps: 1e-9 of each array's scale.
"""

import numpy as np
import pytest
import torch

import fm_numpy.sources as np_sources
import fm_torch.data as th_data
from fm_numpy.draws import Recorder, RngDraws
from fm_numpy.io import load_npz
from fm_numpy.models.convnet import ConvUNet as NumpyConvUNet
from fm_numpy.models.mlp import MLP as NumpyMLP
from fm_numpy.train import train as np_train
from fm_torch.draws import Replay
from fm_torch.models.convnet import ConvUNet as TorchConvUNet
from fm_torch.models.mlp import MLP as TorchMLP
from fm_torch.objectives import FlowMatching
from fm_torch.train import train as th_train

RTOL = 1e-9
COMMON = dict(steps=6, batch=16, lr=1e-2, ema_decay=0.9, weight_decay=0.01,
              max_grad_norm=0.5, ckpt_every=1000)

CASES = {
    "mlp-labels-dropout": dict(net="mlp", classes=3, label_dropout=0.5),
    "ot": dict(net="mlp", classes=3, label_dropout=0.5, coupling="ot"),
    "ot-class": dict(net="mlp", classes=3, label_dropout=0.5, coupling="ot-class"),
    "sinkhorn": dict(net="mlp", classes=3, label_dropout=0.5, coupling="sinkhorn"),
    "independent-unlabelled": dict(net="mlp", classes=None, label_dropout=0.1),
    "meanflow": dict(net="mlp", classes=3, label_dropout=0.5, objective="meanflow",
                     meanflow_ratio=0.5),
    "logit-normal-cosine": dict(net="mlp", classes=3, label_dropout=0.5,
                                time_sampling="logit-normal", time_mean=0.3, time_std=1.2,
                                lr_schedule="cosine", warmup=2),
    "convunet": dict(net="convnet", classes=2, label_dropout=0.5),
}


def _data(classes, dim, n, seed=0):
    """n samples: many, for the couplings, so that a batch (drawn with replacement) almost
    never holds one sample twice; a repeated x1 makes two assignments equally optimal, and
    the packages' cost matrices (numpy's and torch's matmul) may break that tie differently."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim))  # (N, D) float64
    y = None if classes is None else rng.integers(0, classes, n)  # (N,)
    return x, y


def _nets(case, tmp_path):
    """(numpy net, torch net) with the same weights: numpy's, through one .npz file."""
    if case["net"] == "mlp":
        net_np = NumpyMLP(2, 16, 2, 8, case["classes"], seed=3, dtype=np.float64,
                          time_scale=1.0, mean_flow=case.get("objective") == "meanflow")
        cls = TorchMLP
    else:
        net_np = NumpyConvUNet(64, 4, 2, 4, case["classes"], seed=3, dtype=np.float64)
        cls = TorchConvUNet
    rng = np.random.default_rng(5)  # random everywhere: zero-initialised layers hide errors
    for p in net_np.params.values():
        p += rng.normal(0, 0.1, p.shape)
    net_np.save_npz(tmp_path / "init.npz")
    net_th = cls.from_npz(tmp_path / "init.npz", dtype=torch.float64)
    return net_np, net_th


def _close(a, b, what, floor=1e-300):
    """|a - b| <= RTOL max(max|b|, floor); floor: the scale of the same quantity over all
    parameters (a gradient zero in exact arithmetic, e.g. a bias just before a GroupNorm,
    leaves moments of rounding size ~1e-18 that only that scale can judge)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = max(float(np.max(np.abs(b))), floor)
    err = float(np.max(np.abs(a - b)))
    assert err <= RTOL * scale, f"{what}: max |diff| {err:.3g} > {RTOL} x {scale:.3g}"


def _run_both(name, tmp_path, torch_objective=None):
    case = dict(CASES[name])
    settings = {k: v for k, v in case.items() if k not in ("net", "classes")}
    settings = {**COMMON, **settings}
    dim = 2 if case["net"] == "mlp" else 64
    x, y = _data(case["classes"], dim, 100_000 if case["net"] == "mlp" else 64)
    net_np, net_th = _nets(case, tmp_path)

    rec = Recorder(RngDraws(np.random.default_rng(11)))
    source_np = np_sources.ArraySource(x, y, dtype=np.float64)
    _, losses_np = np_train(tmp_path / "np", progress=False, draws=rec, net=net_np,
                            data=source_np, dtype="float64", **settings)
    assert len(rec.log) >= 3 * settings["steps"]  # idx, t, x0 at least, every step

    replay = Replay(rec.log, "cpu", torch.float64)
    source_th = th_data.ArraySource(torch.from_numpy(x),
                                    None if y is None else torch.from_numpy(y))
    _, losses_th = th_train(tmp_path / "th", progress=False, device="cpu", draws=replay,
                            net=net_th, data=source_th, bf16=False, **settings)  # float64
    assert replay.position == len(rec.log)  # torch asked for every draw numpy made, no more
    return net_np, net_th, losses_np, losses_th, tmp_path


def _compare(net_np, net_th, losses_np, losses_th, tmp_path):
    ck_np = load_npz(tmp_path / "np" / "checkpoint.npz")
    ck_th = torch.load(tmp_path / "th" / "ckpt.pt", weights_only=True)
    names = [n for n, _ in net_th.named_parameters()]
    assert sorted(names) == sorted(net_np.params)
    m_floor, s_floor = (max(float(np.max(np.abs(ck_np[f"adam.{k}.{n}"]))) for n in names)
                        for k in "ms")
    for i, name in enumerate(names):
        _close(dict(net_th.named_parameters())[name].detach(), net_np.params[name], name)
        _close(ck_th["ema"]["model"][name], ck_np[f"ema.param.{name}"], f"EMA {name}")
        moments = ck_th["optimizer"]["state"][i]
        _close(moments["exp_avg"], ck_np[f"adam.m.{name}"], f"Adam m {name}", m_floor)
        _close(moments["exp_avg_sq"], ck_np[f"adam.s.{name}"], f"Adam s {name}", s_floor)
    assert [s for s, _ in losses_np] == [s for s, _, _ in losses_th]
    _close([v for _, v, _ in losses_th], [v for _, v in losses_np], "losses")


@pytest.mark.parametrize("name", list(CASES))
def test_real_loops_take_the_same_steps(name, tmp_path):
    _compare(*_run_both(name, tmp_path))


class _DoubledLoss(FlowMatching):
    """Flow matching with the loss (so every gradient) twice too large."""

    def loss(self, net, batch):
        return 2 * super().loss(net, batch)


def test_a_wrong_gradient_scale_shows_in_the_moments_only(tmp_path, monkeypatch):
    """The control: a torch loop whose gradient is 2x too large keeps nearly the weights
    (Adam normalises the scale away; clipping is off here) but not the moments."""
    import fm_torch.train as th_train_module

    monkeypatch.setitem(COMMON, "max_grad_norm", 1e9)  # never clips (None means "default")
    monkeypatch.setattr(th_train_module, "FlowMatching", _DoubledLoss)
    net_np, net_th, _, _, out = _run_both("mlp-labels-dropout", tmp_path)
    ck_np = load_npz(out / "np" / "checkpoint.npz")
    ck_th = torch.load(out / "th" / "ckpt.pt", weights_only=True)
    w_th = net_th.W0.detach().numpy()
    # the weights moved by up to 6 lr = 0.06; the doubled gradient shifts them < 1e-3 (Adam eps)
    np.testing.assert_allclose(w_th, net_np.params["W0"], rtol=0, atol=1e-3)
    names = [n for n, _ in net_th.named_parameters()]
    m_th = ck_th["optimizer"]["state"][names.index("W0")]["exp_avg"].numpy()
    np.testing.assert_allclose(m_th, 2 * ck_np["adam.m.W0"], rtol=1e-2, atol=1e-6)  # ~twice
    assert np.max(np.abs(m_th - ck_np["adam.m.W0"])) > 0.3 * np.max(np.abs(m_th))  # caught
