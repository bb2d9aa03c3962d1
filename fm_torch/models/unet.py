"""A compact class-conditional U-Net velocity field v_theta(x, t, y) for images of any size.

Layout (base width C, channel multipliers m_i, R residual blocks a level):
  conv_in -> [R ResBlocks (C m_i), downsample] per level -> ResBlock, self-attention,
  ResBlock at the lowest resolution -> [R ResBlocks on concat(h, skip), upsample] per
  level in reverse -> GroupNorm, SiLU, conv_out (zero-initialised, so v = 0 at start).
Conditioning: emb = MLP(phi(t)) + E[y], added inside every ResBlock, with
  phi(t) = [cos(1000 t freqs), sin(1000 t freqs)], freqs_k = exp(-log(10000) k / half)
  (the MLP's time features) and E a table of num_classes + 1 rows; row num_classes is
  the null class, used when y is None (classifier-free guidance).
Any H x W: the input is padded with zeros, about evenly on both sides, up to multiples of
  2^(levels - 1) and the output cropped back (as fm_numpy's ConvUNet; why in
  fm_numpy/models/sizing.py), so the network is the same for every size and sizes that
  halve evenly (28 x 28 at 3 levels, 32 x 32, 8 x 8) are not padded at all.
mean_flow=True (MeanFlow's average velocity u(x, r, t), x at time r): emb = MLP(phi(r))
  + MLP'(phi(t - r)) + E[y], with a second time MLP of the same shape, both features at
  100 t freqs (fm_numpy.models.mlp.MEAN_FLOW_TIME_RATE); r=None means r = t.
"""

import math

import torch
from torch import nn
from torch.nn import functional as F

from fm_numpy.models.mlp import MEAN_FLOW_TIME_RATE
from fm_numpy.models.sizing import padding

__all__ = ["UNet", "time_features"]


def time_features(t, dim):
    """phi(t) = [cos(1000 t freqs), sin(1000 t freqs)], freqs_k = exp(-log(10000) k / half)."""
    half = dim // 2
    k = torch.arange(half, dtype=t.dtype, device=t.device)
    freqs = torch.exp(-math.log(10000.0) * k / half)  # (half,)
    angle = 1000.0 * t[:, None] * freqs[None, :]  # (B, half)
    return torch.cat([torch.cos(angle), torch.sin(angle)], dim=1)  # (B, dim)


def _groups(channels):
    return math.gcd(channels, 8)


class ResBlock(nn.Module):
    """h = conv(silu(gn(x))) + proj(emb); out = skip(x) + conv(silu(gn(h))).

    emb_after_norm=True: h = conv(silu(gn(x))); out = skip(x) + conv(silu(gn(h) + proj(emb))),
    the shift after the second GroupNorm as fm_numpy's ConvUNet (before it, the norm removes
    the part of a per-channel shift that is common to a group's channels).
    """

    def __init__(self, c_in, c_out, emb_dim, dropout=0.0, emb_after_norm=False):
        super().__init__()
        self.emb_after_norm = bool(emb_after_norm)
        self.norm1 = nn.GroupNorm(_groups(c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = nn.GroupNorm(_groups(c_out), c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # the block starts as its skip path
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))  # (B, c_out, H, W)
        shift = self.emb(F.silu(emb))[:, :, None, None]  # (B, c_out, 1, 1)
        h = self.norm2(h) + shift if self.emb_after_norm else self.norm2(h + shift)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over the L = H*W positions, residual:

        [q, k, v] = GroupNorm(x) W_in + b_in, split into `heads` heads of d = C / heads
        o_h = softmax(q_h k_h^T / sqrt(d)) v_h,    out = x + [o_1 .. o_heads] W_out + b_out

    The weights live in an nn.MultiheadAttention (`attn`: in_proj_weight, in_proj_bias,
    out_proj), so checkpoints keep their keys. On a CPU, for up to EXPLICIT_MAX_POSITIONS
    positions, the softmax is written out: at the demo's 7x7 (49 positions, batch 128)
    torch's fused CPU kernel took 6-7x longer for forward and backward under bf16 autocast,
    1.8x on two fp32 threads, and was 10 % faster on one fp32 thread (docs/benchmarks.md,
    "The demo's time"). Elsewhere (CUDA, longer sequences, where the L x L weights would
    not fit) F.scaled_dot_product_attention.
    """

    EXPLICIT_MAX_POSITIONS = 1024

    def __init__(self, channels, heads=4):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)

    def forward(self, x):
        b, c, h, w = x.shape
        L, heads = h * w, self.attn.num_heads
        d = c // heads
        hn = self.norm(x).reshape(b, c, L).transpose(1, 2)  # (B, L, C)
        qkv = F.linear(hn, self.attn.in_proj_weight, self.attn.in_proj_bias)  # (B, L, 3C)
        q, k, v = qkv.reshape(b, L, 3, heads, d).permute(2, 0, 3, 1, 4)  # each (B, heads, L, d)
        if x.device.type == "cpu" and L <= self.EXPLICIT_MAX_POSITIONS:
            a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)  # (B, heads, L, L)
            o = a @ v  # (B, heads, L, d)
        else:
            o = F.scaled_dot_product_attention(q, k, v)  # (B, heads, L, d)
        o = o.transpose(1, 2).reshape(b, L, c)  # (B, L, C): heads side by side
        out = self.attn.out_proj(o)  # (B, L, C)
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class UNet(nn.Module):
    """Class-conditional U-Net v_theta(x, t, y) for (B, channels, H, W) images, any H, W.

    `base` is the width C, `mults` the channel multiplier per resolution (28, 14, 7, ...),
    `res_blocks` the residual blocks per level; `num_classes=None` builds an
    unconditional model. Self-attention runs at the lowest resolution.
    """

    def __init__(
        self,
        channels=1,
        base=32,
        mults=(1, 2, 2),
        res_blocks=1,
        time_features=32,
        num_classes=10,
        heads=4,
        dropout=0.0,
        mean_flow=False,
        emb_after_norm=False,
    ):
        super().__init__()
        if time_features % 2:
            raise ValueError(f"time_features must be even, got {time_features}")
        self.config = dict(
            channels=channels,
            base=base,
            mults=list(mults),
            res_blocks=res_blocks,
            time_features=time_features,
            num_classes=num_classes,
            heads=heads,
            dropout=dropout,
        )
        self.mean_flow = bool(mean_flow)
        if self.mean_flow:  # only then in the config, as the MLP does
            self.config["mean_flow"] = True
        if emb_after_norm:  # ResBlock's option; only then in the config (old ones load as before)
            self.config["emb_after_norm"] = True
        self.num_classes = num_classes
        self.n_time = time_features
        emb_dim = 4 * base
        self.time_mlp = nn.Sequential(
            nn.Linear(time_features, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.interval_mlp = nn.Sequential(  # phi(t - r) for mean-flow models only
            nn.Linear(time_features, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        ) if self.mean_flow else None
        self.label_emb = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None
        self.conv_in = nn.Conv2d(channels, base, 3, padding=1)

        widths = [base * m for m in mults]
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skips, c = [], base
        for i, width in enumerate(widths):
            blocks = nn.ModuleList()
            for _ in range(res_blocks):
                blocks.append(ResBlock(c, width, emb_dim, dropout))
                c = width
                skips.append(c)
            self.down.append(blocks)
            last = i == len(widths) - 1
            self.downsample.append(nn.Identity() if last else nn.Conv2d(c, c, 3, 2, 1))

        self.mid1 = ResBlock(c, c, emb_dim, dropout)
        self.mid_attn = SelfAttention(c, heads)
        self.mid2 = ResBlock(c, c, emb_dim, dropout)

        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, width in reversed(list(enumerate(widths))):
            blocks = nn.ModuleList()
            for _ in range(res_blocks):
                blocks.append(ResBlock(c + skips.pop(), width, emb_dim, dropout))
                c = width
            self.up.append(blocks)
            self.upsample.append(nn.Conv2d(c, c, 3, padding=1) if i > 0 else nn.Identity())

        self.norm_out = nn.GroupNorm(_groups(c), c)
        self.conv_out = nn.Conv2d(c, channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)
        for block in self.modules():  # where each ResBlock adds the embedding (no parameters)
            if isinstance(block, ResBlock):
                block.emb_after_norm = bool(emb_after_norm)

    def num_parameters(self):
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def embed(self, t, y, batch, device, r=None):
        """emb = MLP(phi(t)) + E[y]; y None means the null class (row num_classes).

        Mean-flow models: emb = MLP(phi(r)) + MLP'(phi(t - r)) + E[y] (r=None: r = t)."""
        # in the weights' dtype: float32 (also under bf16 autocast), float64 for likelihoods
        t = torch.as_tensor(t, dtype=self.conv_in.weight.dtype, device=device)
        if t.ndim == 0:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise ValueError(f"t must be a scalar or have shape ({batch},), got {tuple(t.shape)}")
        if r is not None and not self.mean_flow:
            raise ValueError("r is an input of mean-flow models only (mean_flow=False here)")
        if r is not None:
            r = torch.as_tensor(r, dtype=t.dtype, device=device)
            r = r.expand(batch) if r.ndim == 0 else r
        t_x = t if r is None else r  # the time of x
        if self.mean_flow:  # features at 100 t freqs, as fm_numpy.models.mlp.MEAN_FLOW_TIME_RATE
            emb = self.time_mlp(time_features(t_x * MEAN_FLOW_TIME_RATE, self.n_time))
            emb = emb + self.interval_mlp(
                time_features((t - t_x) * MEAN_FLOW_TIME_RATE, self.n_time))  # (B, 4C)
        else:
            emb = self.time_mlp(time_features(t, self.n_time))  # (B, 4C)
        if self.label_emb is not None:
            if y is None:
                y = torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
            y = torch.as_tensor(y, device=device).long()
            if y.shape != (batch,):
                raise ValueError(f"y must have shape ({batch},), got {tuple(y.shape)}")
            emb = emb + self.label_emb(y)  # (B, 4C)
        elif y is not None:
            raise ValueError("this U-Net is unconditional (num_classes=None); pass y=None")
        return emb

    def forward(self, x, t, y=None, r=None):
        """v_theta(x, t, y): x (B, channels, H, W), t scalar or (B,), y (B,) ints or None.

        Mean-flow models: u(x, r, t), the average velocity over [r, t] (r=None: r = t)."""
        if x.ndim != 4 or x.shape[1] != self.config["channels"]:
            raise ValueError(f"x must have shape (B, {self.config['channels']}, H, W), got "
                             f"{tuple(x.shape)}")
        emb = self.embed(t, y, x.shape[0], x.device, r).to(x.dtype)  # (B, 4C)
        H, W = x.shape[2], x.shape[3]
        levels = len(self.down)
        (top, bottom), (left, right) = padding(H, levels), padding(W, levels)
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))  # (B, channels, H', W') zeros around
        h = self.conv_in(x)  # (B, C, H', W')
        skips = []
        for blocks, down in zip(self.down, self.downsample, strict=True):
            for block in blocks:
                h = block(h, emb)
                skips.append(h)
            h = down(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)  # (B, C m_last, H'/4, W'/4)
        for blocks, up in zip(self.up, self.upsample, strict=True):
            for block in blocks:
                h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if not isinstance(up, nn.Identity):
                h = up(F.interpolate(h, scale_factor=2, mode="nearest"))
        v = self.conv_out(F.silu(self.norm_out(h)))  # (B, channels, H', W')
        return v[:, :, top:top + H, left:left + W]  # (B, channels, H, W) crop
