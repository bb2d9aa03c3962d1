"""A small convolutional U-Net v_theta(x, t, y) in NumPy, with a handwritten backward pass.

Images of C channels, H x W pixels, flat (B, C H W) outside (channel-major, as the data
sources give them), held channels-last (B, H, W, C) inside. Widths w_i = hidden * MULTS[i]
at sizes (H', W') / 2^i, i = 0..depth-1 (MNIST, depth 3: 28, 14, 7), where (H', W') is
(H, W) padded up to multiples of 2^(depth-1):

    xp      = pad(x) with zeros, about evenly on both sides                     # (B, H', W', C)
    phi(t)  = [cos(1000 t freqs), sin(1000 t freqs)]                           # (B, T)
    emb     = silu(phi @ Wt1 + bt1) @ Wt2 + bt2  [+ E[y]],   se = silu(emb)     # (B, 4 hidden)
    h       = conv3x3(xp; conv_in)                                              # (B, H', W', w_0)
    down:   for i = 0..depth-1:  h = block d{i}(h);  if i < depth-1: skip_i = h, h = pool(h)
    up:     for i = depth-2..0:  h = block u{i}(concat[upsample(h), skip_i])
    v       = crop(conv3x3(silu(GN(h; out)); conv_out))                         # (B, H, W, C)

Sizes that halve evenly (28 x 28 at depth 3, 8 x 8, 32 x 32) are not padded; why pad and
crop rather than use fewer levels: fm_numpy/models/sizing.py. Backward zero-pads dv.

A residual block k, input x (c_in channels) -> c_out channels:

    a1 = silu(GN(x; k_gn1)),        h1 = conv3x3(a1; k_conv1)
    a2 = silu(GN(h1; k_gn2) + (se @ k_We + k_be)[:, None, None]),   h2 = conv3x3(a2; k_conv2)
    out = x + h2                    (c_in = c_out),   or   x @ k_Ws + k_bs + h2   (1x1 skip)

k_conv2 and conv_out start at zero: every block starts as its skip path and v as 0.
The embedding is added after the block's second GroupNorm, as a per-sample shift: added
before it (as in fm_torch/models/unet.py) a per-channel constant is largely removed again
by the normalisation (entirely when a group holds one channel). Layers are those of
fm_numpy/models/conv.py; the torch twin is fm_torch/models/convnet.py.
"""

import numpy as np

from fm_numpy.models import conv as L
from fm_numpy.models.files import NpzFile
from fm_numpy.models.files import config_dtype as _config_dtype
from fm_numpy.models.inputs import check_t
from fm_numpy.models.sizing import image_shape, padding, upgrade_config

__all__ = ["ConvUNet", "MULTS", "block_layout"]

ARCH = "convnet"
MULTS = (1, 2, 2)  # channel multiplier per resolution level


def block_layout(hidden, depth):
    """[(name, c_in, c_out, level)] of the residual blocks, in forward order."""
    widths = [hidden * m for m in MULTS[:depth]]
    blocks, c = [], widths[0]
    for i in range(depth):
        blocks.append((f"d{i}", c, widths[i], i))
        c = widths[i]
    for i in reversed(range(depth - 1)):
        blocks.append((f"u{i}", c + widths[i], widths[i], i))
        c = widths[i]
    return blocks


class ConvUNet(NpzFile):
    """v = ConvUNet(x, t, y) of the module docstring; x flat (B, dim) as the other networks.

    Parameters (ordered dict `self.params`): "Wt1", "bt1", "Wt2", "bt2", "conv_in_W",
    "conv_in_b", per block k: "k_gn1_g", "k_gn1_b", "k_conv1_W", "k_conv1_b", "k_We",
    "k_be", "k_gn2_g", "k_gn2_b", "k_conv2_W", "k_conv2_b" [, "k_Ws", "k_bs"], then
    "out_gn_g", "out_gn_b", "conv_out_W", "conv_out_b" [, "E"]. Conv weights are (9 c_in,
    c_out) with rows in (c_in, dy, dx) order. Initialisation (seeded): weights and biases
    uniform in +-1/sqrt(fan_in), k_conv2 and conv_out zero, GN g = 1, b = 0, E standard normal.
    """

    ARCH, NAME = ARCH, "a ConvUNet"  # NpzFile
    FILE_DEFAULTS = staticmethod(upgrade_config)  # old files: a square dim, one channel

    def __init__(self, dim=None, hidden=16, depth=3, time_features=32, num_classes=None, seed=0,
                 dtype=np.float32, arch=ARCH, channels=1, height=None, width=None):
        if arch != ARCH:
            raise ValueError(f"arch must be {ARCH!r}, got {arch!r}")
        for name, value, low, high in (("hidden", hidden, 1, None),
                                       ("depth", depth, 1, len(MULTS)),
                                       ("time_features", time_features, 2, None)):
            if int(value) != value or value < low or (high and value > high):
                raise ValueError(f"{name} must be an integer in [{low}, {high or 'inf'}], "
                                 f"got {value}")
        if time_features % 2:
            raise ValueError(f"time_features must be even, got {time_features}")
        if num_classes is not None and (int(num_classes) != num_classes or num_classes < 1):
            raise ValueError(f"num_classes must be a positive integer or None, got {num_classes}")
        self.shape = image_shape(dim, channels, height, width)  # (C, H, W)
        self.channels, self.height, self.width = self.shape
        self.dim = self.channels * self.height * self.width
        self.hidden, self.depth = int(hidden), int(depth)
        self.pad_h, self.pad_w = padding(self.height, self.depth), padding(self.width, self.depth)
        self.time_features = int(time_features)
        self.num_classes = None if num_classes is None else int(num_classes)
        self.seed = int(seed)
        self.dtype = np.dtype(_config_dtype(dtype))
        self.config = {
            "arch": ARCH, "channels": self.channels, "height": self.height, "width": self.width,
            "hidden": self.hidden, "depth": self.depth, "time_features": self.time_features,
            "num_classes": self.num_classes, "seed": self.seed, "dtype": self.dtype.name,
        }
        half = self.time_features // 2
        self.freqs = np.exp(-np.log(10000.0) * np.arange(half) / half).astype(self.dtype)  # (T/2,)
        self.blocks = block_layout(self.hidden, self.depth)
        E = self.emb_dim = 4 * self.hidden

        rng = np.random.default_rng(self.seed)
        dt = self.dtype

        def uniform(fan_in, shape):
            bound = 1.0 / np.sqrt(fan_in)
            return rng.uniform(-bound, bound, shape).astype(dt)

        P = self.params = {}
        T, w0, C = self.time_features, self.hidden, self.channels
        P["Wt1"], P["bt1"] = uniform(T, (T, E)), uniform(T, E)
        P["Wt2"], P["bt2"] = uniform(E, (E, E)), uniform(E, E)
        P["conv_in_W"], P["conv_in_b"] = uniform(9 * C, (9 * C, w0)), uniform(9 * C, w0)
        for k, ci, co, _ in self.blocks:
            P[f"{k}_gn1_g"], P[f"{k}_gn1_b"] = np.ones(ci, dt), np.zeros(ci, dt)
            P[f"{k}_conv1_W"] = uniform(9 * ci, (9 * ci, co))
            P[f"{k}_conv1_b"] = uniform(9 * ci, co)
            P[f"{k}_We"], P[f"{k}_be"] = uniform(E, (E, co)), uniform(E, co)
            P[f"{k}_gn2_g"], P[f"{k}_gn2_b"] = np.ones(co, dt), np.zeros(co, dt)
            P[f"{k}_conv2_W"], P[f"{k}_conv2_b"] = np.zeros((9 * co, co), dt), np.zeros(co, dt)
            if ci != co:
                P[f"{k}_Ws"], P[f"{k}_bs"] = uniform(ci, (ci, co)), uniform(ci, co)
        P["out_gn_g"], P["out_gn_b"] = np.ones(w0, dt), np.zeros(w0, dt)
        P["conv_out_W"], P["conv_out_b"] = np.zeros((9 * w0, C), dt), np.zeros(C, dt)
        if self.num_classes:
            P["E"] = rng.standard_normal((self.num_classes + 1, E)).astype(dt)
        self.grads = {k: np.zeros_like(p) for k, p in P.items()}
        self._cache = None

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config.items() if k != "arch")
        return f"ConvUNet({args})"

    @property
    def num_parameters(self):
        return sum(p.size for p in self.params.values())

    def _inputs(self, x, t, y):
        """x as padded images (B, H', W', C), phi(t) (B, T) and the label rows (or None)."""
        x = np.asarray(x, dtype=self.dtype)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (B, {self.dim}), got {x.shape}")
        B = x.shape[0]
        t = check_t(t, B, self.dtype)  # (B,)
        targ = (1000 * t)[:, None] * self.freqs  # (B, T/2)
        phi = np.concatenate([np.cos(targ), np.sin(targ)], axis=1)  # (B, T)
        if y is not None and not self.num_classes:
            raise ValueError("this ConvUNet is unconditional (num_classes=None) but labels "
                             "were given")
        rows = None if not self.num_classes else np.asarray(self.num_classes if y is None else y)
        if rows is not None:  # the label of each sample; num_classes is the null class
            rows = np.full(B, rows) if rows.ndim == 0 else rows
            if rows.shape != (B,) or not np.issubdtype(rows.dtype, np.integer):
                raise ValueError(f"y must be integers of shape ({B},), got {rows.dtype} "
                                 f"{rows.shape}")
            if rows.min() < 0 or rows.max() > self.num_classes:
                raise ValueError(f"labels must lie in [0, {self.num_classes}] ({self.num_classes}"
                                 f" = null class), got {rows.min()}..{rows.max()}")
        img = x.reshape(B, *self.shape).transpose(0, 2, 3, 1)  # (B, H, W, C)
        return L.pad2(img, self.pad_h, self.pad_w), phi, rows  # (B, H', W', C)

    # ------------------------------------------------------------------ forward
    def _block(self, k, x, se):
        """out of residual block k for x (B, h, w, c_in), se = silu(emb); and its cache."""
        P = self.params
        G1, G2 = L.groups(x.shape[3]), L.groups(P[f"{k}_conv1_b"].shape[0])
        n1, xh1, r1 = L.group_norm(x, P[f"{k}_gn1_g"], P[f"{k}_gn1_b"], G1)  # (B, h, w, c_in)
        a1, s1 = L.silu(n1)  # (B, h, w, c_in)
        h1, P1 = L.conv3x3(a1, P[f"{k}_conv1_W"], P[f"{k}_conv1_b"])  # (B, h, w, c_out)
        n2, xh2, r2 = L.group_norm(h1, P[f"{k}_gn2_g"], P[f"{k}_gn2_b"], G2)  # (B, h, w, c_out)
        n2 = n2 + (se @ P[f"{k}_We"] + P[f"{k}_be"])[:, None, None, :]  # (B, h, w, c_out)
        a2, s2 = L.silu(n2)  # (B, h, w, c_out)
        h2, P2 = L.conv3x3(a2, P[f"{k}_conv2_W"], P[f"{k}_conv2_b"])  # (B, h, w, c_out)
        if f"{k}_Ws" in P:
            out = x @ P[f"{k}_Ws"] + P[f"{k}_bs"] + h2  # (B, h, w, c_out) 1x1 skip
        else:
            out = x + h2  # (B, h, w, c_out)
        return out, (x, xh1, r1, a1, s1, P1, xh2, r2, a2, s2, P2)

    def forward(self, x, t, y=None):
        """v = ConvUNet(x, t, y) for x (B, dim), t scalar or (B,), y None or ints (B,).

        Keeps what `backward` needs (until the next forward call); returns a new (B, dim).
        """
        P = self.params
        img, phi, rows = self._inputs(x, t, y)  # (B, H', W', C), (B, T)
        B = img.shape[0]
        e1 = phi @ P["Wt1"] + P["bt1"]  # (B, E)
        u1, s1 = L.silu(e1)  # (B, E)
        emb = u1 @ P["Wt2"] + P["bt2"]  # (B, E)
        if self.num_classes:
            emb = emb + P["E"][rows]  # (B, E)
        se, sse = L.silu(emb)  # (B, E)
        h, Pin = L.conv3x3(img, P["conv_in_W"], P["conv_in_b"])  # (B, H', W', w_0)
        caches, skips = [], []
        for k, _, _, level in self.blocks:
            if k[0] == "u":
                h = L.upsample2(h)  # (B, 2h, 2w, c)
                h = np.concatenate([h, skips.pop()], axis=3)  # (B, h, w, c + w_level)
            h, cache = self._block(k, h, se)
            caches.append(cache)
            if k[0] == "d" and level < self.depth - 1:
                skips.append(h)
                h = L.avg_pool2(h)  # (B, h/2, w/2, c)
        n, xh, r = L.group_norm(h, P["out_gn_g"], P["out_gn_b"], L.groups(h.shape[3]))
        a, s = L.silu(n)  # (B, H', W', w_0)
        v, Pout = L.conv3x3(a, P["conv_out_W"], P["conv_out_b"])  # (B, H', W', C)
        self._cache = (B, phi, rows, e1, u1, s1, emb, se, sse, Pin, caches, xh, r, a, s, Pout)
        v = L.crop2(v, self.pad_h, self.pad_w, self.height, self.width)  # (B, H, W, C)
        return v.transpose(0, 3, 1, 2).reshape(B, self.dim)  # (B, C H W)

    __call__ = forward

    # ------------------------------------------------------------------ backward
    def _block_backward(self, k, dout, cache, se, dse):
        """dL/dx of block k given dout = dL/d(out); writes its gradients, adds to dse."""
        P, G = self.params, self.grads
        x, xh1, r1, a1, s1, P1, xh2, r2, a2, s2, P2 = cache
        if f"{k}_Ws" in P:
            G[f"{k}_Ws"][...] = x.reshape(-1, x.shape[3]).T @ dout.reshape(-1, dout.shape[3])
            G[f"{k}_bs"][...] = dout.sum(axis=(0, 1, 2))  # (c_out,)
            dx = dout @ P[f"{k}_Ws"].T  # (B, h, w, c_in) through the 1x1 skip
        else:
            dx = dout  # (B, h, w, c_in) through the identity skip
        da2, G[f"{k}_conv2_W"][...], G[f"{k}_conv2_b"][...] = L.conv3x3_backward(
            dout, P2, P[f"{k}_conv2_W"])  # (B, h, w, c_out)
        dn2 = L.silu_backward(da2, a2, s2)  # (B, h, w, c_out)
        dproj = dn2.sum(axis=(1, 2))  # (B, c_out) dL/d(se We + be)
        G[f"{k}_We"][...] = se.T @ dproj  # (E, c_out)
        G[f"{k}_be"][...] = dproj.sum(axis=0)  # (c_out,)
        dse += dproj @ P[f"{k}_We"].T  # (B, E)
        dh1, G[f"{k}_gn2_g"][...], G[f"{k}_gn2_b"][...] = L.group_norm_backward(
            dn2, xh2, r2, P[f"{k}_gn2_g"], L.groups(xh2.shape[3]))  # (B, h, w, c_out)
        da1, G[f"{k}_conv1_W"][...], G[f"{k}_conv1_b"][...] = L.conv3x3_backward(
            dh1, P1, P[f"{k}_conv1_W"])  # (B, h, w, c_in)
        dn1 = L.silu_backward(da1, a1, s1)  # (B, h, w, c_in)
        dx_gn, G[f"{k}_gn1_g"][...], G[f"{k}_gn1_b"][...] = L.group_norm_backward(
            dn1, xh1, r1, P[f"{k}_gn1_g"], L.groups(xh1.shape[3]))  # (B, h, w, c_in)
        return dx + dx_gn  # (B, h, w, c_in): skip path plus the block's branch

    def backward(self, dv):
        """Gradients of a loss L with respect to every parameter, given dv = dL/dv (B, dim).

        The forward pass in reverse: conv_out, silu, GN, then the blocks last to first
        (an up block's input gradient splits into the upsampled part, summed back over each
        2x2 block, and the skip part, added to the gradient of the down block that made it;
        a pool's gradient spreads a quarter to each of its 4 inputs), conv_in, and the
        embedding: demb = dse silu'(emb), dE[c] = sum of demb over samples of class row c,
        dWt2 = u1^T demb, du1 = demb Wt2^T, de1 = du1 silu'(e1), dWt1 = phi^T de1.
        Returns the dict `self.grads` (names as in `params`), overwritten by the next call.
        """
        if self._cache is None:
            raise ValueError("backward needs a forward pass first")
        B, phi, rows, e1, u1, s1, emb, se, sse, Pin, caches, xh, r, a, s, Pout = self._cache
        dv = np.asarray(dv, dtype=self.dtype)
        if dv.shape != (B, self.dim):
            raise ValueError(f"dv must have shape ({B}, {self.dim}), got {dv.shape}")
        P, G = self.params, self.grads
        dv = dv.reshape(B, *self.shape).transpose(0, 2, 3, 1)  # (B, H, W, C)
        dv = L.pad2(dv, self.pad_h, self.pad_w)  # (B, H', W', C)
        da, G["conv_out_W"][...], G["conv_out_b"][...] = L.conv3x3_backward(
            dv, Pout, P["conv_out_W"])  # (B, H', W', w_0)
        dn = L.silu_backward(da, a, s)  # (B, H', W', w_0)
        dh, G["out_gn_g"][...], G["out_gn_b"][...] = L.group_norm_backward(
            dn, xh, r, P["out_gn_g"], L.groups(xh.shape[3]))  # (B, H', W', w_0)
        dse = np.zeros_like(se)  # (B, E)
        dskips = []
        for (k, _, _, level), cache in zip(reversed(self.blocks), reversed(caches),
                                           strict=True):
            if k[0] == "d" and level < self.depth - 1:
                dh = L.avg_pool2_backward(dh) + dskips.pop()  # (B, h, w, c) pool + skip use
            dh = self._block_backward(k, dh, cache, se, dse)  # (B, h, w, c_in)
            if k[0] == "u":
                c = dh.shape[3] - P[f"d{level}_conv1_b"].shape[0]
                dskips.append(dh[..., c:])  # (B, h, w, w_level) to skip_level
                dh = L.upsample2_backward(dh[..., :c])  # (B, h/2, w/2, c)
        dimg, G["conv_in_W"][...], G["conv_in_b"][...] = L.conv3x3_backward(
            dh, Pin, P["conv_in_W"])  # (B, H', W', C), unused
        demb = L.silu_backward(dse, se, sse)  # (B, E)
        if self.num_classes:
            G["E"][...] = 0
            np.add.at(G["E"], rows, demb)  # (C+1, E)
        G["Wt2"][...] = u1.T @ demb  # (E, E)
        G["bt2"][...] = demb.sum(axis=0)  # (E,)
        du1 = demb @ P["Wt2"].T  # (B, E)
        de1 = L.silu_backward(du1, u1, s1)  # (B, E)
        G["Wt1"][...] = phi.T @ de1  # (T, E)
        G["bt1"][...] = de1.sum(axis=0)  # (E,)
        return G

    def _arrays(self):
        return self.params  # NpzFile: save_npz, load_npz, from_npz

    def _set_arrays(self, arrays):
        for name, value in arrays.items():
            self.params[name][...] = value
