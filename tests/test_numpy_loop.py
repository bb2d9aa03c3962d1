"""fm_numpy.loop.fit and train() with the user's pieces: label dropout as stated, draws that
can be recorded and replayed, a user network, and a user array as data."""

import numpy as np
import pytest

from fm_numpy.data import ArraySource
from fm_numpy.draws import Recorder, Replay, ReplayMismatch, RngDraws
from fm_numpy.loop import fit
from fm_numpy.models.mlp import MLP
from fm_numpy.objectives import FlowMatching, MeanFlow
from fm_numpy.paths import AffinePath
from fm_numpy.schedules import Recipe
from fm_numpy.train import train


class LinearNet:
    """Not one of ours: v = [x, t, onehot(y)] @ W + b, with its own backward (the protocol of
    fm_numpy/loop.py). `seen_y` records the labels of every forward."""

    def __init__(self, dim, num_classes=None, seed=0):
        rng = np.random.default_rng(seed)
        k = dim + 1 + (0 if num_classes is None else num_classes + 1)  # +1: the null class
        self.num_classes = num_classes
        self.params = {"W": 0.1 * rng.standard_normal((k, dim)), "b": np.zeros(dim)}
        self.seen_y = []

    def _features(self, x, t, y):
        parts = [x, np.broadcast_to(np.asarray(t, x.dtype), (len(x),))[:, None]]  # (B, D), (B, 1)
        if self.num_classes is not None:
            onehot = np.zeros((len(x), self.num_classes + 1))  # (B, C + 1)
            onehot[np.arange(len(x)), self.num_classes if y is None else y] = 1.0
            parts.append(onehot)
        return np.concatenate(parts, axis=1)  # (B, k)

    def forward(self, x, t, y=None):
        self.seen_y.append(None if y is None else np.array(y))
        self._h = self._features(x, t, y)  # (B, k), kept for backward
        return self._h @ self.params["W"] + self.params["b"]  # (B, D)

    __call__ = forward

    def backward(self, dv):
        return {"W": self._h.T @ dv, "b": dv.sum(axis=0)}


def _labelled(n=256, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)  # (n,)
    x = rng.standard_normal((n, 2)) * 0.1 + np.stack([y, -y], axis=1)  # (n, 2)
    return x, y


def test_linear_net_backward_matches_finite_differences():
    """The test's own network is right, so what follows tests the loop, not the net."""
    net = LinearNet(2, num_classes=3, seed=1)
    rng = np.random.default_rng(2)
    x, t, y, dv = rng.standard_normal((5, 2)), rng.random(5), rng.integers(0, 4, 5), \
        rng.standard_normal((5, 2))
    net.forward(x, t, y)
    g = net.backward(dv)["W"]
    W, eps = net.params["W"], 1e-6
    for idx in [(0, 0), (2, 1), (5, 0)]:
        old = W[idx]
        W[idx] = old + eps
        up = np.sum(net.forward(x, t, y) * dv)
        W[idx] = old - eps
        down = np.sum(net.forward(x, t, y) * dv)
        W[idx] = old
        assert abs((up - down) / (2 * eps) - g[idx]) < 1e-6


@pytest.mark.parametrize("p", [0.0, 0.5])
def test_label_dropout_is_what_the_net_sees(p):
    """y -> null class num_classes exactly where the "drop" uniform < p; p = 0.5 nulls about
    half (binomial, 5 sigma), p = 0 none and makes no "drop" draw at all."""
    x, y = _labelled()
    net = LinearNet(2, num_classes=3)
    draws = Recorder(RngDraws(np.random.default_rng(3)))
    steps, B = 40, 64
    fit(net, ArraySource(x, y, dtype=np.float64), FlowMatching(AffinePath()),
        Recipe(1e-2, label_dropout=p), steps=steps, batch=B, draws=draws)
    seen = np.concatenate(net.seen_y)  # (steps B,)
    idx = np.concatenate([a for name, _, a in draws.log if name == "idx"])  # (steps B,)
    drops = [a for name, _, a in draws.log if name == "drop"]
    if p == 0:
        assert drops == [] and np.array_equal(seen, y[idx])
        return
    u = np.concatenate(drops)  # (steps B,)
    np.testing.assert_array_equal(seen, np.where(u < p, 3, y[idx]))  # 3 = the null class
    n = steps * B
    null = np.mean(seen == 3)
    assert abs(null - p) < 5 * np.sqrt(p * (1 - p) / n), null


def test_replay_gives_the_same_run_and_names_the_first_wrong_draw():
    x, y = _labelled()
    runs = []
    for draws in (Recorder(RngDraws(np.random.default_rng(4))), None):
        if draws is None:
            draws = Replay(runs[0][1].log)
        net = MLP(2, 16, 2, 8, num_classes=3, dtype=np.float64)
        state = fit(net, ArraySource(x, y, dtype=np.float64), FlowMatching(AffinePath()),
                    Recipe(1e-2, ema_decay=0.9, label_dropout=0.3), steps=12, batch=32,
                    draws=draws)
        runs.append((state, draws))
    (a, rec), (b, rep) = runs
    assert rep.position == len(rec.log) > 0
    for k in a.net.params:
        np.testing.assert_array_equal(a.net.params[k], b.net.params[k])
        np.testing.assert_array_equal(a.ema.params[k], b.ema.params[k])
    np.testing.assert_array_equal(a.optimizer.state_dict()["m.W1"],
                                  b.optimizer.state_dict()["m.W1"])
    # MeanFlow draws (r, t) after the dropout: replaying a flow-matching log fails there
    with pytest.raises(ReplayMismatch, match=r"draw \d+: asked for \('mf_z'"):
        fit(MLP(2, 16, 2, 8, num_classes=3, dtype=np.float64, mean_flow=True),
            ArraySource(x, y, dtype=np.float64), MeanFlow(AffinePath()),
            Recipe(1e-2, label_dropout=0.3), steps=2, batch=32, draws=Replay(rec.log))


def test_user_net_and_array_train_through_train(tmp_path):
    """A user's network and array: the loss falls, the run folder is written, a resume with
    the same objects continues bit-identically."""
    x, y = _labelled(512)
    settings = dict(progress=False, batch=64, lr=2e-2, ckpt_every=50, ema_decay=0.9)
    full_net = LinearNet(2, num_classes=3)
    _, losses = train(tmp_path / "full", net=full_net, data=ArraySource(x, y, dtype=np.float64),
                      steps=200, dtype="float64", **settings)
    values = np.array([v for _, v in losses])
    assert values[-30:].mean() < 0.8 * values[:10].mean()
    for name in ("config.json", "loss.csv", "checkpoint.npz", "model.npz"):
        assert (tmp_path / "full" / name).exists()
    part_net = LinearNet(2, num_classes=3)
    src = ArraySource(x, y, dtype=np.float64)
    train(tmp_path / "part", net=part_net, data=src, steps=100, dtype="float64", **settings)
    train(tmp_path / "part", resume=True, net=part_net, data=src, steps=200, **settings)
    for k in full_net.params:
        np.testing.assert_array_equal(part_net.params[k], full_net.params[k])
    with pytest.raises(ValueError, match="pass data=... / net=..."):  # the objects are needed
        train(tmp_path / "part", resume=True, progress=False, steps=250)


def test_objective_checks_the_net_before_step_one(tmp_path):
    class NoBackward:
        params = {"W": np.zeros(2)}

        def forward(self, x, t, y=None):
            return x

    with pytest.raises(ValueError, match=r"FlowMatching needs net\.backward"):
        train(tmp_path / "r", progress=False, net=NoBackward(), data=np.zeros((8, 2)),
              steps=2, batch=4)
    with pytest.raises(ValueError, match=r"MeanFlow needs net\.jvp"):
        MeanFlow(AffinePath()).check(LinearNet(2))


def test_rng_draws_make_the_older_loops_calls_in_its_order():
    """RngDraws through fit() asks the generator for exactly what the loop before the split
    drew, in its order (so old runs keep their stream): written out here with a raw
    Generator for labelled data, logit-normal t, sinkhorn, label dropout and MeanFlow."""
    from fm_numpy.coupling import Sinkhorn
    from fm_numpy.data import ToySource, sample_toy
    from fm_numpy.schedules import LogitNormal

    x, y = _labelled()
    B, steps, p = 16, 3, 0.4
    rec = Recorder(RngDraws(np.random.default_rng(7)))
    fit(MLP(2, 8, 1, 4, num_classes=3, mean_flow=True), ArraySource(x, y),
        MeanFlow(AffinePath()), Recipe(1e-3, LogitNormal(0.2, 0.9), label_dropout=p),
        steps=steps, batch=B, coupling=Sinkhorn(), draws=rec)
    rng = np.random.default_rng(7)
    expected = []
    for _ in range(steps):  # the older loop's calls, one step at a time
        expected += [rng.integers(0, len(x), B), rng.standard_normal(B, dtype=np.float32),
                     rng.standard_normal((B, 2), dtype=np.float32), rng.random(B),
                     rng.random(B), rng.standard_normal((2, B)), rng.random(B)]
    assert [n for n, _, _ in rec.log] == ["idx", "t_z", "x0", "couple_u", "drop", "mf_z",
                                          "mf_keep"] * steps
    for (_, _, got), want in zip(rec.log, expected, strict=True):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    # a toy set draws fresh samples: sample_toy's own calls on the same generator
    rec = Recorder(RngDraws(np.random.default_rng(8)))
    toy = ToySource("checkerboard", np.float64)
    x1, _, _ = toy.batch(rec, 50)
    np.testing.assert_array_equal(x1, sample_toy("checkerboard", 50, np.random.default_rng(8)))
