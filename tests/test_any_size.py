"""Networks sized from the data (issue 21, section 2): images of any H, W and channel count,
old square-dim ConvUNet files, and `network_for` in both packages.

Padding is checked against an independent construction: the network of an odd size equals
a network built for the padded size, run on an image padded by hand (offsets written out
here, not computed by fm_numpy.models.sizing) and cropped by hand.
"""

import json

import numpy as np
import pytest
import torch

from fm_numpy.models import load_model
from fm_numpy.models import network_for as numpy_network_for
from fm_numpy.models.convnet import ConvUNet as NumpyConvUNet
from fm_numpy.models.mlp import MLP as NumpyMLP
from fm_numpy.models.sizing import default_sizes, image_defaults, levels_for
from fm_torch.models import network_for as torch_network_for
from fm_torch.models.convnet import ConvUNet as TorchConvUNet
from fm_torch.models.unet import UNet

FIXTURE = "tests/data/convnet_v1.npz"  # written by the ConvUNet of commit 936d229


def _perturb(params, seed):
    rng = np.random.default_rng(seed)
    for p in params.values():
        p += rng.normal(0, 0.3, p.shape).astype(p.dtype)


def test_old_square_dim_file_loads_and_gives_identical_outputs():
    """The fixture's config has only dim = 36 (one channel); its outputs and a gradient were
    saved by the old code: the new code reproduces them, in both packages, to 1e-12 of their
    scale (bit for bit on the machine that wrote them; another CPU's BLAS kernels, e.g.
    AVX-512 ones, round the last bits differently; a changed computation moves far more)."""
    with np.load(FIXTURE, allow_pickle=False) as f:
        ref = {k: f[k] for k in f.files}
    assert "dim" in json.loads(str(ref["config"])) and "height" not in str(ref["config"])
    model = load_model(FIXTURE)
    assert isinstance(model, NumpyConvUNet) and model.shape == (1, 6, 6)
    v = model.forward(ref["ref_x"], ref["ref_t"], ref["ref_y"])
    np.testing.assert_allclose(v, ref["ref_v"], rtol=0,
                               atol=1e-12 * np.abs(ref["ref_v"]).max())
    dW = ref["ref_dconv_in_W"]
    np.testing.assert_allclose(model.backward(ref["ref_dv"])["conv_in_W"], dW, rtol=0,
                               atol=1e-12 * np.abs(dW).max())
    NumpyConvUNet(36, hidden=4, depth=2, time_features=4, num_classes=3).load_npz(FIXTURE)
    th = TorchConvUNet.from_npz(FIXTURE)
    with torch.no_grad():
        v_th = th(torch.from_numpy(ref["ref_x"]), torch.from_numpy(ref["ref_t"]),
                  torch.from_numpy(ref["ref_y"]))
    np.testing.assert_allclose(v_th.numpy(), ref["ref_v"], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="holds a ConvUNet with"):  # the size is checked
        NumpyConvUNet(64, hidden=4, depth=2, time_features=4, num_classes=3).load_npz(FIXTURE)


def test_new_files_round_trip_with_channels_height_width(tmp_path):
    model = NumpyConvUNet(channels=3, height=7, width=9, hidden=4, depth=3, time_features=4,
                          num_classes=2, seed=1, dtype=np.float64)
    _perturb(model.params, 2)
    model.save_npz(tmp_path / "m.npz")
    back = load_model(tmp_path / "m.npz")
    assert back.config == model.config and back.dim == 189
    x = np.random.default_rng(3).standard_normal((2, 189))
    np.testing.assert_array_equal(back.forward(x, 0.4, np.array([0, 2])),
                                  model.forward(x, 0.4, np.array([0, 2])))


def test_numpy_padding_equals_the_padded_network_by_hand():
    """7 x 9 at depth 3 is padded to 8 x 12: rows (0 above, 1 below), columns (1, 2)."""
    sizes = dict(hidden=4, depth=3, time_features=4, num_classes=2, seed=5, dtype=np.float64)
    odd = NumpyConvUNet(channels=3, height=7, width=9, **sizes)
    big = NumpyConvUNet(channels=3, height=8, width=12, **sizes)
    _perturb(odd.params, 6)
    for name, p in odd.params.items():
        big.params[name][...] = p
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 3, 7, 9))  # (B, C, H, W)
    t, y = rng.uniform(size=3), np.array([0, 1, 2])
    x_big = np.zeros((3, 3, 8, 12))
    x_big[:, :, 0:7, 1:10] = x
    v_big = big.forward(x_big.reshape(3, -1), t, y).reshape(3, 3, 8, 12)[:, :, 0:7, 1:10]
    v = odd.forward(x.reshape(3, -1), t, y).reshape(3, 3, 7, 9)
    np.testing.assert_allclose(v, v_big, rtol=0, atol=1e-13)
    # backward: dv on the cropped pixels only, so the gradients are the big network's for
    # a dv that is zero on its padding
    dv = rng.standard_normal((3, 3, 7, 9))
    dv_big = np.zeros((3, 3, 8, 12))
    dv_big[:, :, 0:7, 1:10] = dv
    g = {k: a.copy() for k, a in odd.backward(dv.reshape(3, -1)).items()}
    big.forward(x_big.reshape(3, -1), t, y)
    g_big = big.backward(dv_big.reshape(3, -1))
    for name in g:
        np.testing.assert_allclose(g[name], g_big[name], rtol=1e-12, atol=1e-12, err_msg=name)


def test_numpy_channels_are_channel_major_and_agree_with_torch_on_images():
    """x flat is (C, H, W) per sample: the torch twin on (B, C, H, W) gives the same v."""
    model = NumpyConvUNet(channels=3, height=5, width=6, hidden=4, depth=2, time_features=4,
                          num_classes=None, seed=8, dtype=np.float64)
    _perturb(model.params, 9)
    th = TorchConvUNet(channels=3, height=5, width=6, hidden=4, depth=2, time_features=4,
                       num_classes=None, seed=8, dtype=torch.float64)
    th._set_arrays(model.params)
    x = np.random.default_rng(10).standard_normal((2, 3, 5, 6))
    v = model.forward(x.reshape(2, -1), np.array([0.2, 0.9]))
    with torch.no_grad():
        v_img = th(torch.from_numpy(x), torch.tensor([0.2, 0.9], dtype=torch.float64))
        v_flat = th(torch.from_numpy(x.reshape(2, -1)), torch.tensor([0.2, 0.9],
                                                                     dtype=torch.float64))
    assert v_img.shape == (2, 3, 5, 6) and v_flat.shape == (2, 90)
    np.testing.assert_allclose(v_img.numpy().reshape(2, -1), v, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(v_flat.numpy(), v_img.numpy().reshape(2, -1))
    with pytest.raises(ValueError, match=r"x must have shape \(B, 90\) or \(B, 3, 5, 6\)"):
        th(torch.zeros(2, 1, 5, 6), 0.5)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 90\)"):
        model.forward(np.zeros((2, 30)), 0.5)


def _randomised_unet(**kwargs):
    torch.manual_seed(0)
    model = UNet(**{"base": 8, "res_blocks": 1, "heads": 2, "time_features": 8, **kwargs})
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("conv_out") or ".conv2." in name:
                p.normal_(0, 0.1)
    return model.double().eval()


@pytest.mark.parametrize("mults", [(1, 2), (1, 2, 2)])
def test_torch_unet_padding_equals_the_padded_input_by_hand(mults):
    """3 channels, 7 x 9: padded to 8 x 10 at 2 levels (rows (0, 1), columns (0, 1)), to
    8 x 12 at 3 levels (rows (0, 1), columns (1, 2)); the network has no size of its own."""
    model = _randomised_unet(channels=3, mults=mults, num_classes=4)
    rows, cols = {2: ((0, 1), (0, 1)), 3: ((0, 1), (1, 2))}[len(mults)]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 7, 9, generator=g, dtype=torch.float64)
    t, y = torch.tensor([0.1, 0.8], dtype=torch.float64), torch.tensor([0, 3])
    x_big = torch.nn.functional.pad(x, (*cols, *rows))  # zeros, F.pad's last axis first
    with torch.no_grad():
        v = model(x, t, y)
        v_big = model(x_big, t, y)[:, :, rows[0]:rows[0] + 7, cols[0]:cols[0] + 9]
    assert v.shape == x.shape
    torch.testing.assert_close(v, v_big, rtol=0, atol=1e-12)
    v_grad = model.train()(x, t, y)
    v_grad.square().sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert missing == []
    with pytest.raises(ValueError, match=r"x must have shape \(B, 3, H, W\)"):
        model(x[:, :1], t, y)


def test_sizing_rules():
    assert [levels_for(s, s) for s in (4, 5, 6, 7, 8, 11, 12, 16, 28, 32, 64)] == \
        [1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 3]
    assert levels_for(7, 40) == 2  # the shorter side decides
    assert default_sizes((2,), "mlp")["hidden"] == 256
    assert default_sizes((784,), "mlp")["hidden"] == 512
    assert default_sizes((1, 28, 28), "convnet") == {"hidden": 16, "depth": 3,
                                                     "time_features": 32}
    assert default_sizes((1, 8, 8), "convnet")["depth"] == 2
    assert default_sizes((3, 32, 32), "unet")["mults"] == [1, 2, 2]
    assert default_sizes((3, 32, 32), "unet")["base"] == 16
    assert default_sizes((1, 8, 8), "unet")["base"] == 32
    assert default_sizes((3, 7, 9), "convnet")["hidden"] == 32
    assert default_sizes((1, 8, 8), "unet")["mults"] == [1, 2]
    with pytest.raises(ValueError, match="needs images"):
        default_sizes((64,), "convnet")
    assert image_defaults((1, 8, 8))["batch"] == 64 and image_defaults((3, 7, 9))["batch"] == 64
    assert image_defaults((3, 32, 32))["batch"] == 32
    with pytest.raises(ValueError, match="takes an image shape"):
        image_defaults((64,))


@pytest.mark.parametrize("shape", [(2,), (64,), (1, 8, 8), (8, 8), (3, 7, 9), (3, 32, 32)])
def test_network_for_takes_the_shape_and_classes_from_the_data(shape):
    B = 2
    y = np.array([0, 4])
    net = numpy_network_for(shape, num_classes=5, seed=1)
    dim = int(np.prod(shape))
    assert isinstance(net, NumpyMLP if len(shape) == 1 else NumpyConvUNet)
    assert net.num_classes == 5 and net.dim == dim
    v = net.forward(np.random.default_rng(0).standard_normal((B, dim)).astype(np.float32), 0.3, y)
    assert v.shape == (B, dim) and v.dtype == np.float32
    th = torch_network_for(shape, num_classes=5)
    image_shape = shape if len(shape) != 2 else (1, *shape)
    x = torch.randn(B, *image_shape)
    assert isinstance(th, UNet if len(shape) > 1 else torch.nn.Module)
    assert th(x, torch.rand(B), torch.from_numpy(y)).shape == x.shape
    # the twin of the NumPy network: same weights from the same seed
    if len(shape) > 1:
        twin = torch_network_for(shape, num_classes=5, arch="convnet", seed=1)
        for name, p in twin.named_parameters():
            np.testing.assert_array_equal(p.detach().numpy(), net.params[name])


def test_network_for_overrides_and_refusals():
    net = numpy_network_for((1, 8, 8), None, hidden=8, depth=1)
    assert (net.hidden, net.depth, net.num_classes) == (8, 1, None)
    assert numpy_network_for((3, 4, 4), 2, arch="mlp").dim == 48  # an MLP on flat images
    assert torch_network_for((1, 8, 8), 3, base=16).config["base"] == 16
    assert numpy_network_for((64,), 3, arch="convnet").shape == (1, 8, 8)  # flat squares
    with pytest.raises(ValueError, match="dim must be channels"):
        numpy_network_for((63,), 3, arch="convnet")
    with pytest.raises(ValueError, match="takes vectors"):
        torch_network_for((1, 8, 8), 3, arch="mlp")
    with pytest.raises(ValueError, match="a sample's shape must be"):
        numpy_network_for((2, 3, 4, 5), 3)
    with pytest.raises(ValueError, match="unknown architecture"):
        torch_network_for((2,), None, arch="transformer")
    with pytest.raises(ValueError, match="dim=10 is not channels"):
        NumpyConvUNet(10, channels=1, height=3, width=4)
    with pytest.raises(ValueError, match="give both height and width"):
        NumpyConvUNet(channels=1, height=3)
