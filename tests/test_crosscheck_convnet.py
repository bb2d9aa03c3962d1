"""The NumPy U-Net (fm_numpy/models/convnet.py, layers in fm_numpy/models/conv.py) and its
torch twin (fm_torch/models/convnet.py, built from torch.nn.functional's conv2d,
group_norm, avg_pool2d, interpolate: an independent implementation).

- numpy's manual backward against central finite differences, every parameter (float64);
- each layer's backward (conv3x3, group_norm, pool, upsample) against torch autograd;
- weights cross one .npz both ways bit for bit, and the seeded initial weights agree;
- forward, loss and every gradient agree with torch's autograd in float64 to 1e-10
  (relative to the largest entry of each compared array), with and without labels;
- one Adam step (numpy's fm_numpy.optim.Adam, torch.optim.Adam) gives the same weights;
- a file of another architecture (the MLP, the ResMLP, a ConvUNet of another width) is
  refused; `train(arch="convnet")` lowers the loss and resumes; `fm-numpy sample` loads it.
"""

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from fm_numpy.models import conv as L
from fm_numpy.models import load_model
from fm_numpy.models.convnet import ConvUNet as NumpyConvUNet
from fm_numpy.models.mlp import MLP as NumpyMLP
from fm_numpy.models.resmlp import ResMLP as NumpyResMLP
from fm_numpy.models.sizing import image_shape
from fm_numpy.optim import Adam
from fm_torch.models.convnet import ConvUNet as TorchConvUNet
from fm_torch.models.convnet import conv3x3 as torch_conv3x3

ARCHS = [
    {"dim": 36, "hidden": 4, "depth": 2, "time_features": 4, "num_classes": 3},
    {"dim": 64, "hidden": 2, "depth": 3, "time_features": 2, "num_classes": None},
    {"dim": 64, "hidden": 16, "depth": 3, "time_features": 8, "num_classes": 10},
    # 3 channels of an odd size: padded to 8 x 12 inside, cropped back (both packages)
    {"channels": 3, "height": 7, "width": 9, "hidden": 4, "depth": 3, "time_features": 4,
     "num_classes": 2},
]
RTOL64 = 1e-10


def _perturbed(arch, seed, dtype=np.float64):
    """A numpy ConvUNet with random weights everywhere (zero-initialised convs hide errors)."""
    model = NumpyConvUNet(**arch, seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed + 100)
    for p in model.params.values():
        p += rng.normal(0, 0.3, p.shape).astype(dtype)
    return model


def _dim(arch):
    C, H, W = image_shape(arch.get("dim"), arch.get("channels", 1), arch.get("height"),
                          arch.get("width"))
    return C * H * W


def _batch(arch, seed, B=3, labels=True):
    rng = np.random.default_rng(seed)
    dim = _dim(arch)
    x = rng.standard_normal((B, dim))
    t = rng.uniform(0, 1, B)
    t[0] = 0.0
    t[-1] = 1.0
    target = rng.standard_normal((B, dim))
    y = None
    if arch["num_classes"] and labels:
        y = rng.integers(0, arch["num_classes"] + 1, B)  # num_classes = the null class
    return x, t, y, target


def _assert_close(a, b, what):
    """|a - b| <= 1e-10 max|b|; a gradient that is zero in exact arithmetic (a bias just before
    a GroupNorm whose groups hold one channel, as in the tiny ARCHS) is rounding noise of
    about 1e-16 in both, so the scale has a floor of 1e-5."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = max(np.abs(b).max(), 1e-5)
    assert np.abs(a - b).max() <= RTOL64 * scale, f"{what}: {np.abs(a - b).max()} vs {scale}"


def test_each_layer_and_its_backward_agree_with_torch():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 6, 4, 8))  # (B, H, W, C) channels-last
    dout_c = rng.standard_normal((2, 6, 4, 5))
    W, b = rng.standard_normal((72, 5)), rng.standard_normal(5)
    g, beta = rng.standard_normal(8), rng.standard_normal(8)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_()  # NCHW
    Wt, bt = torch.from_numpy(W).requires_grad_(), torch.from_numpy(b).requires_grad_()
    gt, betat = torch.from_numpy(g).requires_grad_(), torch.from_numpy(beta).requires_grad_()

    def nchw(a):
        return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))

    def nhwc(a):
        return a.detach().numpy().transpose(0, 2, 3, 1)

    out, P = L.conv3x3(x, W, b)
    out_t = torch_conv3x3(xt, Wt, bt)
    _assert_close(out, nhwc(out_t), "conv3x3")
    dx, dW, db = L.conv3x3_backward(dout_c, P, W)
    (out_t * nchw(dout_c)).sum().backward()
    for mine, theirs, what in ((dx, nhwc(xt.grad), "dx"), (dW, Wt.grad.numpy(), "dW"),
                               (db, bt.grad.numpy(), "db")):
        _assert_close(mine, theirs, f"conv3x3 {what}")
    for G in (1, 2, 8):
        xt.grad = gt.grad = betat.grad = None
        dout = rng.standard_normal(x.shape)
        n, xhat, rstd = L.group_norm(x, g, beta, G)
        n_t = F.group_norm(xt, G, gt, betat, L.GN_EPS)
        _assert_close(n, nhwc(n_t), f"group_norm G={G}")
        dx, dg, dbeta = L.group_norm_backward(dout, xhat, rstd, g, G)
        (n_t * nchw(dout)).sum().backward()
        for mine, theirs, what in ((dx, nhwc(xt.grad), "dx"), (dg, gt.grad.numpy(), "dg"),
                                   (dbeta, betat.grad.numpy(), "dbeta")):
            _assert_close(mine, theirs, f"group_norm G={G} {what}")
    for fwd, bwd, tfn in ((L.avg_pool2, L.avg_pool2_backward, lambda a: F.avg_pool2d(a, 2)),
                          (L.upsample2, L.upsample2_backward,
                           lambda a: F.interpolate(a, scale_factor=2, mode="nearest"))):
        xt.grad = None
        out_t = tfn(xt)
        out = fwd(x)
        _assert_close(out, nhwc(out_t), fwd.__name__)
        dout = rng.standard_normal(out.shape)
        (out_t * nchw(dout)).sum().backward()
        _assert_close(bwd(dout), nhwc(xt.grad), f"{fwd.__name__} backward")


@pytest.mark.parametrize("arch", [
    {"dim": 36, "hidden": 2, "depth": 2, "time_features": 2, "num_classes": 2},
    # 3 channels, 7 x 9 padded to 8 x 10: the pad, crop and channel transposes
    {"channels": 3, "height": 7, "width": 9, "hidden": 2, "depth": 2, "time_features": 2,
     "num_classes": 2},
])
def test_backward_matches_finite_differences(arch):
    # small enough for 2 x 1.2k forward passes; torch's autograd checks the larger ARCHS
    model = _perturbed(arch, seed=1)
    x, t, y, w = _batch(arch, seed=2, B=2)

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
    fresh_np = NumpyConvUNet(**arch, seed=4, dtype=dtype)
    fresh_th = TorchConvUNet(**arch, seed=4, dtype=tdtype)
    for name, p in fresh_th.named_parameters():
        np.testing.assert_array_equal(p.detach().numpy(), fresh_np.params[name])
    src = _perturbed(arch, seed=5, dtype=dtype)
    src.save_npz(tmp_path / "a.npz")
    th = TorchConvUNet.from_npz(tmp_path / "a.npz")
    assert th.dtype == tdtype
    with torch.no_grad():
        for p in th.parameters():
            p.mul_(2)
    th.save_npz(tmp_path / "b.npz")
    back = load_model(tmp_path / "b.npz")
    assert isinstance(back, NumpyConvUNet) and back.dtype == dtype
    assert sorted(back.params) == sorted(src.params)
    for name, p in src.params.items():
        np.testing.assert_array_equal(back.params[name], 2 * p)


def _torch_pair(arch, seed, tmp_path):
    model_np = _perturbed(arch, seed)
    model_np.save_npz(tmp_path / "w.npz")
    return model_np, TorchConvUNet.from_npz(tmp_path / "w.npz")


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("labels", [True, False])
def test_forward_loss_and_every_gradient_agree_with_torch(arch, labels, tmp_path):
    model_np, model_th = _torch_pair(arch, seed=7, tmp_path=tmp_path)
    x, t, y, target = _batch(arch, seed=8, B=5, labels=labels)
    v_np = model_np.forward(x, t, y)
    diff = v_np - target
    loss_np = float(np.mean(diff * diff))
    g_np = {k: g.copy() for k, g in model_np.backward(diff * (2.0 / diff.size)).items()}
    v_th = model_th(torch.from_numpy(x), torch.from_numpy(t),
                    None if y is None else torch.from_numpy(y))
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
    x, t, y, target = _batch(arch, seed=10, B=4)
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
    NumpyConvUNet(**arch).save_npz(tmp_path / "conv.npz")
    NumpyConvUNet(**dict(arch, hidden=8)).save_npz(tmp_path / "wide.npz")
    for cls in (NumpyConvUNet, TorchConvUNet):
        with pytest.raises(ValueError, match="'mlp' network, not a 'convnet'"):
            cls.from_npz(tmp_path / "mlp.npz")
        with pytest.raises(ValueError, match="'resmlp' network, not a 'convnet'"):
            cls(**arch).load_npz(tmp_path / "res.npz")
        with pytest.raises(ValueError, match="holds a ConvUNet with"):
            cls(**arch).load_npz(tmp_path / "wide.npz")
    with pytest.raises(ValueError, match="'convnet' network, not a 'resmlp'"):
        NumpyResMLP.from_npz(tmp_path / "conv.npz")
    with pytest.raises(ValueError, match="not an MLP configuration"):
        NumpyMLP.from_npz(tmp_path / "conv.npz")
    assert isinstance(load_model(tmp_path / "conv.npz"), NumpyConvUNet)
    with pytest.raises(ValueError, match=r"dim must be channels \* S\^2"):
        NumpyConvUNet(2)


def test_convnet_mnist_defaults_use_the_recipe_schedule():
    """MNIST's default network is the ConvUNet, trained with fm_numpy.schedules' warm-up +
    cosine schedule (the arithmetic the ConvUNet's reported runs used)."""
    from fm_numpy.schedules import make_recipe
    from fm_numpy.train import resolve_config

    assert resolve_config(data="mnist")["arch"] == "convnet"  # MNIST's default network
    config = resolve_config(data="mnist", arch="convnet", steps=150, warmup=50, lr=1.0)
    assert config["lr_schedule"] == "cosine" and config["hidden"] == 16
    lr_at, _ = make_recipe(config)
    lrs = [lr_at(n) for n in range(150)]
    np.testing.assert_allclose(lrs[:50], np.arange(1, 51) / 50)
    np.testing.assert_allclose(lrs[50:], 0.5 * (1 + np.cos(np.pi * np.arange(100) / 100)))
    assert make_recipe(dict(config, lr_schedule="constant"))[0](120) == 1.0
    with pytest.raises(ValueError, match="needs images"):
        resolve_config(data="moons", arch="convnet")


def test_short_training_run_lowers_the_loss(tmp_path):
    from fm_numpy.data import ArraySource
    from fm_numpy.train import train

    # 8x8 images of a bright square at a random row, its column given by the class (2)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 512)
    img = -np.ones((512, 8, 8), np.float32)
    for i, c in enumerate(y):
        r = rng.integers(0, 5)
        img[i, r:r + 3, 4 * c:4 * c + 3] = 1.0
    source = ArraySource(img, y)
    settings = dict(progress=False, arch="convnet", steps=150, batch=32,
                    hidden=4, depth=2, time_features=8, ckpt_every=50, lr=5e-3, warmup=10,
                    lr_schedule="constant")  # a decaying schedule refuses a longer resume
    model, losses = train(tmp_path / "run", data=source, **settings)
    assert isinstance(model, NumpyConvUNet) and model.shape == (1, 8, 8)
    first, last = np.mean([v for _, v in losses[:15]]), np.mean([v for _, v in losses[-15:]])
    assert last < 0.8 * first, (first, last)
    resumed, _ = train(tmp_path / "run", resume=True, data=source, **dict(settings, steps=155))
    assert isinstance(resumed, NumpyConvUNet)


def test_cli_samples_a_convnet_file(tmp_path):
    pytest.importorskip("matplotlib")
    from fm_numpy.cli import main
    from fm_numpy.solvers import ClassifierFreeGuidance, odeint

    model = NumpyConvUNet(784, hidden=2, depth=3, time_features=4, num_classes=10)
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
