"""Where the torch U-Net's ResBlock adds the time/label embedding: before the second
GroupNorm (the default, every checkpoint so far) or after it (emb_after_norm=True, as
fm_numpy's ConvUNet), checked against a GroupNorm written out by hand."""

import torch
from torch.nn import functional as F

from fm_torch.models.unet import ResBlock, UNet


def _group_norm(h, groups, weight, bias, eps=1e-5):
    """(h - mean) / sqrt(var + eps) over each group's channels and pixels, then w h + b."""
    B, C, H, W = h.shape
    g = h.reshape(B, groups, C // groups * H * W)
    mean = g.mean(dim=2, keepdim=True)
    var = ((g - mean) ** 2).mean(dim=2, keepdim=True)
    n = ((g - mean) / torch.sqrt(var + eps)).reshape(B, C, H, W)
    return n * weight[None, :, None, None] + bias[None, :, None, None]


def _block(after):
    torch.manual_seed(0)
    block = ResBlock(8, 16, 12, emb_after_norm=after).double()
    torch.nn.init.normal_(block.conv2.weight, std=0.2)  # not the zero start: out depends on h
    torch.nn.init.normal_(block.norm2.weight, mean=1.0, std=0.3)
    torch.nn.init.normal_(block.norm2.bias, std=0.3)
    return block


def test_resblock_adds_the_embedding_before_or_after_the_norm():
    g = torch.Generator().manual_seed(1)
    x = torch.randn((3, 8, 6, 5), generator=g, dtype=torch.float64)
    emb = torch.randn((3, 12), generator=g, dtype=torch.float64)
    for after in (False, True):
        block = _block(after)
        h1 = block.conv1(F.silu(block.norm1(x)))
        shift = block.emb(F.silu(emb))[:, :, None, None]
        n2 = block.norm2
        h2 = (_group_norm(h1, 8, n2.weight, n2.bias) + shift if after
              else _group_norm(h1 + shift, 8, n2.weight, n2.bias))
        expected = block.skip(x) + block.conv2(F.silu(h2))
        with torch.no_grad():
            torch.testing.assert_close(block(x, emb), expected, rtol=1e-12, atol=1e-12)


def test_a_shift_common_to_a_group_survives_only_after_the_norm():
    """The reason for the option: GroupNorm removes the part of a per-channel shift that is
    common to a group's channels. A bias of the embedding's projection constant within each
    group (16 channels in 8 groups of 2) changes nothing before the norm, everything after."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn((2, 8, 6, 5), generator=g, dtype=torch.float64)
    emb = torch.randn((2, 12), generator=g, dtype=torch.float64)
    common = torch.randn(8, generator=g, dtype=torch.float64).repeat_interleave(2)  # (16,)
    for after, changes in ((False, False), (True, True)):
        block = _block(after)
        with torch.no_grad():
            out = block(x, emb)
            block.emb.bias += common
            moved = (block(x, emb) - out).abs().max().item()
        assert (moved > 1e-3) == changes, (after, moved)


def test_unet_option_is_in_the_config_only_when_set():
    plain = UNet(1, 8, (1, 2), 1, 8, 10)
    assert "emb_after_norm" not in plain.config  # configs of old checkpoints stay equal
    after = UNet(1, 8, (1, 2), 1, 8, 10, emb_after_norm=True)
    assert after.config["emb_after_norm"] is True
    blocks = [m for m in after.modules() if isinstance(m, ResBlock)]
    assert blocks and all(b.emb_after_norm for b in blocks)
    after.load_state_dict(plain.state_dict())  # no new parameters: the same weights load
