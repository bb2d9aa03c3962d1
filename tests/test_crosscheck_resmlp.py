"""The residual LayerNorm MLP (fm_numpy/models/resmlp.py, fm_torch/models/resmlp.py).

- numpy's manual backward against central finite differences, every parameter (float64);
- the LayerNorm backward on its own against finite differences;
- weights cross one .npz both ways bit for bit, and the seeded initial weights agree;
- forward, loss and every gradient agree with torch's autograd in float64 to 1e-10
  (relative to the largest entry of each compared array), with and without labels;
- one Adam step (numpy's fm_numpy.optim.Adam, torch.optim.Adam) gives the same weights;
- a file of another architecture (the MLP, or a ResMLP of another width) is refused;
- `train(arch="resmlp")` lowers the loss, and `fm-numpy sample` loads the ResMLP.
"""

import numpy as np
import pytest
import torch

from fm_numpy.models import load_model, model_class
from fm_numpy.models.mlp import MLP as NumpyMLP
from fm_numpy.models.resmlp import ResMLP as NumpyResMLP
from fm_numpy.models.resmlp import layer_norm, layer_norm_backward
from fm_numpy.optim import Adam
from fm_torch.models.mlp import MLP as TorchMLP
from fm_torch.models.resmlp import ResMLP as TorchResMLP

ARCHS = [
    {"dim": 5, "hidden": 7, "depth": 2, "time_features": 4, "num_classes": 3},
    {"dim": 3, "hidden": 6, "depth": 1, "time_features": 2, "num_classes": None},
    {"dim": 12, "hidden": 16, "depth": 3, "time_features": 8, "num_classes": 10},
]
RTOL64 = 1e-10


def _perturbed(arch, seed, dtype=np.float64):
    """A numpy ResMLP with random weights everywhere (W{k}_2 = 0 at init would hide errors)."""
    model = NumpyResMLP(**arch, seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed + 100)
    for p in model.params.values():
        p += rng.normal(0, 0.3, p.shape).astype(dtype)
    return model


def _batch(arch, seed, B=6, labels=True):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, arch["dim"]))
    t = rng.uniform(0, 1, B)
    t[0] = 0.0
    t[-1] = 1.0
    target = rng.standard_normal((B, arch["dim"]))
    y = None
    if arch["num_classes"] and labels:
        y = rng.integers(0, arch["num_classes"] + 1, B)  # num_classes = the null class
    return x, t, y, target


def test_layer_norm_backward_matches_finite_differences():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((4, 9))
    g, beta, w = rng.standard_normal(9), rng.standard_normal(9), rng.standard_normal((4, 9))
    n, zhat, rstd = layer_norm(z, g, beta)
    dz, dg, dbeta = layer_norm_backward(w, zhat, rstd, g)
    for value, grad in ((z, dz), (g, dg), (beta, dbeta)):
        num = np.zeros_like(value)
        for i in np.ndindex(value.shape):
            old = value[i]
            value[i] = old + 1e-6
            up = float((layer_norm(z, g, beta)[0] * w).sum())
            value[i] = old - 1e-6
            down = float((layer_norm(z, g, beta)[0] * w).sum())
            value[i] = old
            num[i] = (up - down) / 2e-6
        np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("arch", ARCHS[:2])
@pytest.mark.parametrize("labels", [True, False])
def test_backward_matches_finite_differences(arch, labels):
    model = _perturbed(arch, seed=1)
    x, t, y, w = _batch(arch, seed=2, labels=labels)

    def loss():
        return float((model.forward(x, t, y) * w).sum())

    loss()
    grads = {k: g.copy() for k, g in model.backward(w).items()}
    assert sorted(grads) == sorted(model.params)
    for name, p in model.params.items():
        num = np.zeros_like(p)
        for i in np.ndindex(p.shape):
            old = p[i]
            p[i] = old + 1e-6
            up = loss()
            p[i] = old - 1e-6
            down = loss()
            p[i] = old
            num[i] = (up - down) / 2e-6
        scale = np.abs(num).max() + 1.0
        assert np.abs(grads[name] - num).max() <= 1e-7 * scale, name


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_npz_round_trip_both_ways_and_same_init(dtype, tmp_path):
    arch = ARCHS[0]
    tdtype = {np.float64: torch.float64, np.float32: torch.float32}[dtype]
    fresh_np, fresh_th = NumpyResMLP(**arch, seed=4, dtype=dtype), TorchResMLP(**arch, seed=4,
                                                                              dtype=tdtype)
    for name, p in fresh_th.named_parameters():
        np.testing.assert_array_equal(p.detach().numpy(), fresh_np.params[name])
    src = _perturbed(arch, seed=5, dtype=dtype)
    src.save_npz(tmp_path / "a.npz")
    th = TorchResMLP.from_npz(tmp_path / "a.npz")
    assert th.dtype == tdtype
    with torch.no_grad():
        for p in th.parameters():
            p.mul_(2)
    th.save_npz(tmp_path / "b.npz")
    back = load_model(tmp_path / "b.npz")
    assert isinstance(back, NumpyResMLP) and back.dtype == dtype
    assert sorted(back.params) == sorted(src.params)
    for name, p in src.params.items():
        np.testing.assert_array_equal(back.params[name], 2 * p)


def _torch_pair(arch, seed, tmp_path):
    model_np = _perturbed(arch, seed)
    model_np.save_npz(tmp_path / "w.npz")
    return model_np, TorchResMLP.from_npz(tmp_path / "w.npz")


def _assert_close(a, b, what):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = max(np.abs(b).max(), 1e-300)
    assert np.abs(a - b).max() <= RTOL64 * scale, f"{what}: {np.abs(a - b).max()} vs {scale}"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("labels", [True, False])
@pytest.mark.parametrize("scalar_t", [False, True])
def test_forward_loss_and_every_gradient_agree_with_torch(arch, labels, scalar_t, tmp_path):
    model_np, model_th = _torch_pair(arch, seed=7, tmp_path=tmp_path)
    x, t, y, target = _batch(arch, seed=8, B=9, labels=labels)
    if scalar_t:
        t = 0.375
    v_np = model_np.forward(x, t, y)
    diff = v_np - target
    loss_np = float(np.mean(diff * diff))
    g_np = {k: g.copy() for k, g in model_np.backward(diff * (2.0 / diff.size)).items()}
    t_th = t if scalar_t else torch.from_numpy(t)
    v_th = model_th(torch.from_numpy(x), t_th, None if y is None else torch.from_numpy(y))
    loss_th = ((v_th - torch.from_numpy(target)) ** 2).mean()
    loss_th.backward()
    _assert_close(v_np, v_th.detach().numpy(), "forward v")
    _assert_close(loss_np, loss_th.item(), "loss")
    g_th = {k: p.grad.numpy() for k, p in model_th.named_parameters()}
    assert sorted(g_np) == sorted(g_th)
    for name in g_np:
        _assert_close(g_np[name], g_th[name], f"gradient {name}")


def test_one_adam_step_agrees_with_torch(tmp_path):
    arch = ARCHS[2]
    model_np, model_th = _torch_pair(arch, seed=9, tmp_path=tmp_path)
    x, t, y, target = _batch(arch, seed=10, B=16)
    opt_np = Adam(model_np.params, lr=1e-2)
    opt_th = torch.optim.Adam(model_th.parameters(), lr=1e-2)
    before = {k: p.copy() for k, p in model_np.params.items()}
    for _ in range(2):  # the second step uses nonzero moments
        diff = model_np.forward(x, t, y) - target
        opt_np.step(model_np.backward(diff * (2.0 / diff.size)))
        opt_th.zero_grad()
        v_th = model_th(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(y))
        ((v_th - torch.from_numpy(target)) ** 2).mean().backward()
        opt_th.step()
    # Adam's update m_hat / sqrt(s_hat) is blind to a common factor c on every gradient, so
    # the weights alone cannot see a wrong scale in dL/dv; the moments m (~ c g) and
    # s (~ c^2 g^2) can. The step is compared on its own scale (p - p_before), not on the
    # scale of the weights, which would hide a wrong step of size lr.
    for name, p in model_th.named_parameters():
        state = opt_th.state[p]
        _assert_close(opt_np.m[name], state["exp_avg"].numpy(), f"Adam m {name}")
        _assert_close(opt_np.s[name], state["exp_avg_sq"].numpy(), f"Adam s {name}")
        _assert_close(model_np.params[name] - before[name], p.detach().numpy() - before[name],
                      f"weight step {name}")


def test_files_of_another_architecture_are_refused(tmp_path):
    arch = ARCHS[0]
    NumpyMLP(**arch).save_npz(tmp_path / "mlp.npz")
    NumpyResMLP(**arch).save_npz(tmp_path / "res.npz")
    NumpyResMLP(**dict(arch, hidden=9)).save_npz(tmp_path / "wide.npz")
    for cls in (NumpyResMLP, TorchResMLP):
        with pytest.raises(ValueError, match="'mlp' network, not a 'resmlp'"):
            cls.from_npz(tmp_path / "mlp.npz")
        with pytest.raises(ValueError, match="'mlp' network"):
            cls(**arch).load_npz(tmp_path / "mlp.npz")
        with pytest.raises(ValueError, match="holds a ResMLP with"):
            cls(**arch).load_npz(tmp_path / "wide.npz")
    for cls in (NumpyMLP, TorchMLP):
        with pytest.raises(ValueError, match="not an MLP configuration"):
            cls.from_npz(tmp_path / "res.npz")
    assert isinstance(load_model(tmp_path / "mlp.npz"), NumpyMLP)
    with pytest.raises(ValueError, match="unknown architecture 'transformer'"):
        model_class("transformer")


def test_short_training_run_lowers_the_loss(tmp_path):
    from fm_numpy.train import resolve_config, train

    assert resolve_config(data="mnist", arch="resmlp")["hidden"] == 768
    assert resolve_config(data="mnist", arch="mlp")["hidden"] == 512  # the MLP keeps its own
    model, losses = train(tmp_path / "run", progress=False, data="moons", arch="resmlp",
                          steps=300, batch=128, hidden=32, depth=2, time_features=8,
                          ckpt_every=100, lr=3e-3)
    assert isinstance(model, NumpyResMLP)
    first, last = np.mean([v for _, v in losses[:30]]), np.mean([v for _, v in losses[-30:]])
    assert last < 0.8 * first, (first, last)
    resumed, _ = train(tmp_path / "run", resume=True, progress=False, data="moons",
                       arch="resmlp", steps=310, batch=128, hidden=32, depth=2,
                       time_features=8, ckpt_every=100, lr=3e-3)
    assert isinstance(resumed, NumpyResMLP)


def test_cli_samples_a_resmlp_file(tmp_path):
    pytest.importorskip("matplotlib")
    from fm_numpy.cli import main
    from fm_numpy.solvers import ClassifierFreeGuidance, odeint

    model = NumpyResMLP(784, hidden=8, depth=1, time_features=4, num_classes=10)
    rng = np.random.default_rng(11)
    for p in model.params.values():  # the zero-initialised output would hide ignored weights
        p[...] = 0.2 * rng.standard_normal(p.shape)
    model.save_npz(tmp_path / "m.npz")
    rc = main(["sample", "--model", str(tmp_path / "m.npz"), "--steps", "2", "-n", "20",
               "--method", "midpoint", "--seed", "5", "--chunk", "20", "--guidance", "2.0",
               "--out", str(tmp_path / "digits.npz")])
    assert rc == 0
    with np.load(tmp_path / "digits.npz", allow_pickle=False) as f:
        images = f["images"]  # (20, 28, 28)
    assert (tmp_path / "digits_grid.png").exists()
    # the same images from the file's weights, by hand: x0 from the seed, labels in turn,
    # guided midpoint steps, [-1, 1] -> [0, 1]
    loaded = load_model(tmp_path / "m.npz")
    x0 = np.random.default_rng(5).standard_normal((20, 784)).astype(loaded.dtype)  # (N, D)
    y = np.arange(20) % 10
    x1 = odeint(ClassifierFreeGuidance(loaded, y, 2.0), x0, np.linspace(0, 1, 3),
                "midpoint")[-1]  # (N, D)
    expected = np.clip((x1.reshape(-1, 28, 28) + 1) / 2, 0, 1)
    assert expected.std() > 0.01  # the weights move the pixels: a real comparison
    np.testing.assert_allclose(images, expected, rtol=0, atol=1e-6)
