"""The class-conditional U-Net: shapes, time and label handling, guidance limits."""

import pytest
import torch

from fm_torch.models.unet import UNet, time_features
from fm_torch.solvers import ClassifierFreeGuidance


def _unet(**kwargs):
    """A tiny U-Net with its zero-initialised output layers randomised, so v is not 0."""
    torch.manual_seed(0)
    model = UNet(**{"base": 8, "mults": (1, 2), "res_blocks": 1, "heads": 2, **kwargs})
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("conv_out") or ".conv2." in name:
                p.normal_(0, 0.1)
    return model.eval()


def test_shapes_and_parameter_count():
    model = _unet()
    x = torch.randn(3, 1, 28, 28)
    v = model(x, torch.rand(3), torch.tensor([0, 5, 9]))
    assert v.shape == x.shape and v.dtype == torch.float32
    assert model.num_parameters() == sum(p.numel() for p in model.parameters())
    wider = UNet(base=16, mults=(1, 2, 2))
    assert wider.num_parameters() > model.num_parameters()


def test_zero_initialised_output():
    model = UNet(base=8, mults=(1, 2), heads=2)
    v = model(torch.randn(2, 1, 28, 28), 0.3, None)
    assert torch.equal(v, torch.zeros_like(v))


def test_scalar_t_broadcasts_and_y_none_is_null_class():
    model = _unet()
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(model(x, 0.25, None), model(x, torch.full((4,), 0.25), None))
        null = torch.full((4,), 10)
        assert torch.equal(model(x, 0.25, None), model(x, 0.25, null))
        assert not torch.allclose(model(x, 0.25, None), model(x, 0.25, torch.zeros(4, dtype=int)))
        # the time embedding matters too
        assert not torch.allclose(model(x, 0.25, None), model(x, 0.75, None))


def test_batch_items_are_independent():
    """GroupNorm normalises per sample, so a sample's velocity ignores the rest of the batch."""
    model = _unet()
    x, t, y = torch.randn(5, 1, 28, 28), torch.rand(5), torch.randint(0, 10, (5,))
    with torch.no_grad():
        full = model(x, t, y)
        for i in range(5):
            one = model(x[i : i + 1], t[i : i + 1], y[i : i + 1])
            torch.testing.assert_close(one, full[i : i + 1], rtol=1e-5, atol=1e-5)


def test_float64_model_runs_in_float64_and_matches_float32():
    """Likelihoods run the U-Net in float64: every part, the time features too, follows."""
    model = _unet()
    x, t, y = torch.randn(2, 1, 28, 28), torch.rand(2), torch.tensor([1, 7])
    with torch.no_grad():
        v32 = model(x, t, y)
        v64 = model.double()(x.double(), t.double(), y)
    assert v64.dtype == torch.float64
    torch.testing.assert_close(v64.float(), v32, rtol=1e-4, atol=1e-4)


def test_time_features_match_formula():
    t = torch.tensor([0.0, 0.3, 1.0])
    phi = time_features(t, 8)
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(4) / 4)
    angle = 1000 * t[:, None] * freqs  # (3, 4)
    expected = torch.cat([torch.cos(angle), torch.sin(angle)], 1)
    torch.testing.assert_close(phi, expected)


@pytest.mark.parametrize("w", [0.0, 1.0, 2.5])
def test_guidance_limits(w):
    model = _unet()
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([1, 2, 3, 4])
    with torch.no_grad():
        v_cond, v_uncond = model(x, 0.4, y), model(x, 0.4, None)
        v = ClassifierFreeGuidance(model, y, w)(x, 0.4)
    torch.testing.assert_close(v, v_uncond + w * (v_cond - v_uncond), rtol=1e-5, atol=1e-6)
    if w == 1.0:
        assert torch.equal(v, v_cond)
    if w == 0.0:
        assert torch.equal(v, v_uncond)


def test_gradients_reach_every_parameter():
    model = _unet().train()
    x = torch.randn(2, 1, 28, 28)
    model(x, torch.rand(2), torch.tensor([3, 10])).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert missing == []


def test_bad_inputs():
    model = _unet()
    with pytest.raises(ValueError, match="t must be a scalar"):
        model(torch.randn(2, 1, 28, 28), torch.rand(3), None)
    with pytest.raises(ValueError, match="y must have shape"):
        model(torch.randn(2, 1, 28, 28), 0.5, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="x must have shape"):
        model(torch.randn(2, 784), 0.5, None)
    unconditional = UNet(base=8, mults=(1, 2), heads=2, num_classes=None)
    assert unconditional(torch.randn(1, 1, 28, 28), 0.5).shape == (1, 1, 28, 28)
    with pytest.raises(ValueError, match="unconditional"):
        unconditional(torch.randn(1, 1, 28, 28), 0.5, torch.tensor([1]))


@pytest.mark.parametrize("explicit", [True, False])
def test_self_attention_is_torchs_multihead_attention(monkeypatch, explicit):
    """SelfAttention's written-out softmax (CPU, short sequences) and its SDPA path both
    equal torch's own nn.MultiheadAttention on the same weights, values and gradients."""
    from fm_torch.models.unet import SelfAttention

    if not explicit:  # every sequence takes the F.scaled_dot_product_attention path
        monkeypatch.setattr(SelfAttention, "EXPLICIT_MAX_POSITIONS", 0)
    torch.manual_seed(0)
    block = SelfAttention(16, heads=4).double()
    with torch.no_grad():  # a non-trivial GroupNorm and bias, so every term is exercised
        for p in block.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(3, 16, 5, 6, dtype=torch.float64, requires_grad=True)

    def reference(x):  # torch's own module: in-projection, heads, softmax, out-projection
        b, c, h, w = x.shape
        q = block.norm(x).reshape(b, c, h * w).transpose(1, 2)
        out, _ = block.attn(q, q, q, need_weights=False)
        return x + out.transpose(1, 2).reshape(b, c, h, w)

    weights = torch.randn(3, 16, 5, 6, dtype=torch.float64)
    got, want = block(x), reference(x)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    g_got = torch.autograd.grad((got * weights).sum(), [x, *block.parameters()])
    g_want = torch.autograd.grad((want * weights).sum(), [x, *block.parameters()])
    for a, b in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
