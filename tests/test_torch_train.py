"""fm_torch's training loop: learning, exact resume, divergence, checkpoints, sampling."""

import csv
import math
import os
import signal

import pytest
import torch

from fm_torch.io import load_checkpoint, save_checkpoint
from fm_torch.train import TrainingDiverged, load_model, resolve_config, sample, train

TOY = dict(data="8gaussians", hidden=32, depth=2, batch=128, lr=1e-2, toy_pool=4096)
# constant lr: the resume tests go to more steps, which MNIST's default cosine decay refuses
TINY_UNET = dict(data="mnist", base=8, mults=[1, 2], batch=8, n_train=64, lr=2e-3,
                 lr_schedule="constant")


def _losses(out):
    with open(out / "loss.csv") as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]


def test_toy_training_reduces_the_loss(tmp_path):
    _, losses = train(tmp_path, progress=False, steps=150, ckpt_every=150, sample_every=75,
                      **TOY)
    first = sum(v for _, v, _ in losses[:10]) / 10
    last = sum(v for _, v, _ in losses[-10:]) / 10
    assert last < 0.8 * first
    assert [s for s, _ in _losses(tmp_path)] == list(range(1, 151))
    assert (tmp_path / "samples_0000075.png").stat().st_size > 0


def test_unet_training_reduces_the_loss(tmp_path):
    _, losses = train(tmp_path, progress=False, steps=30, ckpt_every=30, sample_every=1000,
                      **TINY_UNET)
    first = sum(v for _, v, _ in losses[:5]) / 5
    last = sum(v for _, v, _ in losses[-5:]) / 5
    assert last < 0.6 * first, (first, last)  # seeds 0-2 measured: last/first 0.36-0.41
    model, ckpt = load_model(tmp_path / "ckpt.pt")
    assert ckpt["step"] == 30 and not model.training


@pytest.mark.parametrize("settings", [TOY, TINY_UNET], ids=["mlp", "unet"])
def test_resume_matches_uninterrupted_run(tmp_path, settings):
    whole, split = tmp_path / "whole", tmp_path / "split"
    common = dict(progress=False, ckpt_every=3, sample_every=1000, **settings)
    model_a, losses_a = train(whole, steps=6, **common)
    train(split, steps=3, **common)
    model_b, losses_b = train(split, steps=6, resume=True, **common)
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name
    ckpt_a, ckpt_b = load_checkpoint(whole / "ckpt.pt"), load_checkpoint(split / "ckpt.pt")
    ema_a, ema_b = ckpt_a["ema"]["model"], ckpt_b["ema"]["model"]
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    # AdamW's state (step count, both moments of every parameter) and the generator too
    opt_a, opt_b = ckpt_a["optimizer"], ckpt_b["optimizer"]
    assert opt_a["param_groups"] == opt_b["param_groups"]
    assert sorted(opt_a["state"]) == sorted(opt_b["state"]) == list(range(len(ema_a)))
    for i, state in opt_a["state"].items():
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(state[key], opt_b["state"][i][key]), (i, key)
    assert torch.equal(ckpt_a["rng"][0], ckpt_b["rng"][0])
    assert [v for _, v in _losses(whole)] == [v for _, v in _losses(split)]


def test_resume_takes_the_runs_own_settings_where_none_are_given(tmp_path):
    # as fm_numpy.train: a run with non-default settings resumes from its checkpoint alone;
    # a setting given explicitly is still checked against it
    settings = dict(TOY, ema_decay=0.5, sample_every=1000, ckpt_every=3)
    train(tmp_path / "r", progress=False, steps=3, **settings)
    model_b, _ = train(tmp_path / "r", resume=True, progress=False, data="8gaussians", steps=6)
    model_a, _ = train(tmp_path / "whole", progress=False, steps=6, **settings)
    assert all(torch.equal(a, b) for a, b in zip(model_a.state_dict().values(),
                                                 model_b.state_dict().values(), strict=True))
    with pytest.raises(ValueError, match="ema_decay"):
        train(tmp_path / "r", resume=True, progress=False, data="8gaussians", ema_decay=0.9)


def test_resume_refuses_changed_settings_and_missing_run(tmp_path):
    train(tmp_path, progress=False, steps=2, ckpt_every=2, sample_every=1000, **TOY)
    with pytest.raises(ValueError, match="lr"):
        train(tmp_path, progress=False, steps=4, resume=True, **{**TOY, "lr": 0.5})
    with pytest.raises(ValueError, match="already holds a run"):
        train(tmp_path, progress=False, steps=4, **TOY)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(tmp_path / "none", progress=False, steps=4, resume=True, **TOY)


def test_divergence_stops_and_keeps_last_good_checkpoint(tmp_path):
    # an enormous learning rate blows the weights up after the first update
    settings = {**TOY, "lr": 1e30, "max_grad_norm": None}
    with pytest.raises(TrainingDiverged, match=r"at step (\d+).*last good checkpoint \(step 1\)"):
        train(tmp_path, progress=False, steps=50, ckpt_every=1, sample_every=1000, **settings)
    ckpt = load_checkpoint(tmp_path / "ckpt.pt")
    assert ckpt["step"] == 1


def test_checkpoint_loads_weights_only(tmp_path):
    path = tmp_path / "evil.pt"

    marker = tmp_path / "code-ran"

    class Evil:  # unpickling it would create `marker`: the proof that code ran
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    torch.save({"x": Evil()}, path)
    assert not marker.exists()
    with pytest.raises(ValueError, match="not a readable torch checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()  # weights_only refused the payload before running it
    torch.load(path, weights_only=False)  # the control: the payload does run when allowed
    assert marker.exists()
    path.write_bytes(b"PK\x03\x04 torn")
    with pytest.raises(ValueError, match="not a readable torch checkpoint"):
        load_checkpoint(path)
    save_checkpoint(path, {"a": torch.arange(3)})
    assert torch.equal(load_checkpoint(path)["a"], torch.arange(3))
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


@pytest.mark.parametrize("method,nfe_per_step", [("euler", 1), ("midpoint", 2), ("rk4", 4)])
def test_sample_shapes_and_nfe(method, nfe_per_step):
    from fm_torch.models.unet import UNet

    torch.manual_seed(0)
    model = UNet(base=8, mults=(1, 2), heads=2).eval()
    x0 = torch.randn(4, 1, 28, 28)
    y = torch.tensor([0, 1, 2, 3])
    xs, nfe = sample(model, x0, y, guidance=2.0, method=method, steps=3, return_nfe=True)
    assert xs.shape == (4, 4, 1, 28, 28) and torch.equal(xs[0], x0)
    assert nfe == 3 * nfe_per_step  # evaluations of the guided field
    calls = []

    def counted(x, t, y=None):
        calls.append(y)
        return model(x, t, y)

    sample(counted, x0, y, guidance=2.0, method=method, steps=3)
    assert len(calls) == 2 * nfe  # guidance runs the model twice: conditional and null class
    assert sum(c is None for c in calls) == nfe


def test_resolve_config_errors():
    with pytest.raises(ValueError, match="unknown data set"):
        resolve_config(data="cifar")
    with pytest.raises(ValueError, match="unknown training settings"):
        resolve_config(data="moons", lerning_rate=1)
    with pytest.raises(ValueError, match="batch must be a positive"):
        resolve_config(data="moons", batch=0)
    assert resolve_config(data="mnist")["batch"] == 128


def test_mnist_defaults_to_warmup_and_cosine_decay():
    """MNIST's recipe (docs/benchmarks.md: it beat the constant rate at the demo budget):
    cosine decay after a warm-up of 1/16 of the steps unless one is given; toys stay constant."""
    from fm_torch.train_config import resolve_config

    config = resolve_config(data="mnist")
    assert (config["lr_schedule"], config["warmup"]) == ("cosine", 3000 // 16)
    assert resolve_config(data="mnist", steps=800)["warmup"] == 50  # make demo's 50 of 800
    assert resolve_config(data="mnist", steps=800, warmup=0)["warmup"] == 0
    toy = resolve_config(data="moons")
    assert (toy["lr_schedule"], toy["warmup"]) == ("constant", 0)


class _LabelRecorder(torch.nn.Module):
    """v = x W + b; remembers every label batch the loop hands it."""

    def __init__(self):
        super().__init__()
        self.W = torch.nn.Parameter(torch.zeros(2, 2))
        self.b = torch.nn.Parameter(torch.zeros(2))
        self.seen = []

    def forward(self, x, t, y=None):
        self.seen.append(y.clone())
        return x @ self.W + self.b


@pytest.mark.parametrize("p", [0.0, 0.3, 0.5])
def test_label_dropout_hands_the_net_the_null_class_with_probability_p(tmp_path, p):
    """Any nn.Module trains (net=, data=); the loop replaces a label by the null class
    num_classes = 4 with probability p, and nothing else: a binomial count, 5 sigma."""
    from fm_torch.data import ArraySource

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(500, 2, generator=g), torch.randint(0, 4, (500,), generator=g)
    net = _LabelRecorder()
    train(tmp_path, progress=False, device="cpu", net=net, data=ArraySource(x, y),
          steps=25, batch=64, ckpt_every=25, label_dropout=p)
    seen = torch.cat(net.seen)  # (25 * 64,)
    n = len(seen)
    assert n == 25 * 64 and int(seen.min()) >= 0 and int(seen.max()) <= 4
    nulls = int((seen == 4).sum())
    assert abs(nulls - p * n) <= 5 * math.sqrt(n * p * (1 - p)), (nulls, p * n)
    if p == 0:
        assert nulls == 0
    else:
        assert nulls > 0
    assert set(seen[seen < 4].tolist()) == {0, 1, 2, 3}  # the kept labels are the data's


class _SignalAt(torch.nn.Module):
    """An MLP that sends its own process `signals` in forward call number `at` (a
    deterministic stand-in for a cluster's SIGTERM arriving mid-step)."""

    def __init__(self, at, signals):
        super().__init__()
        from fm_torch.models.mlp import MLP

        self.mlp, self.at, self.signals, self.calls = MLP(2, 16, 2, 8, seed=1), at, signals, 0

    def forward(self, x, t, y=None):
        self.calls += 1
        if self.calls == self.at:
            for signum in self.signals:
                os.kill(os.getpid(), signum)
        return self.mlp(x, t, y)


def test_sigterm_saves_at_a_whole_step_and_the_run_resumes_exactly(tmp_path):
    from fm_torch.interrupt import TrainingInterrupted

    run = dict(progress=False, device="cpu", data="moons", toy_pool=512, batch=32, steps=12,
               ckpt_every=100, sample_every=10**6)
    whole, _ = train(tmp_path / "whole", net=_SignalAt(0, ()), **run)
    with pytest.raises(TrainingInterrupted, match="interrupted at step 5 \\(SIGTERM\\)"):
        train(tmp_path / "cut", net=_SignalAt(5, (signal.SIGTERM,)), **run)
    assert load_checkpoint(tmp_path / "cut" / "ckpt.pt")["step"] == 5  # that step finished
    resumed, _ = train(tmp_path / "cut", resume=True, net=_SignalAt(0, ()), **run)
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name
    assert _losses(tmp_path / "whole") == _losses(tmp_path / "cut")


def test_a_second_signal_aborts_at_once_without_a_checkpoint(tmp_path):
    with pytest.raises(KeyboardInterrupt, match="second SIGTERM") as info:
        train(tmp_path, progress=False, device="cpu", data="moons", toy_pool=512, batch=32,
              steps=12, ckpt_every=100, net=_SignalAt(5, (signal.SIGINT, signal.SIGTERM)))
    assert info.type is KeyboardInterrupt  # not TrainingInterrupted: no save-then-stop
    assert not (tmp_path / "ckpt.pt").exists()
