"""The image layers of fm_numpy's U-Net (fm_numpy/models/convnet.py), forward and backward.

Images are channels-last arrays (B, H, W, C), so a 3x3 convolution is one matrix product
of im2col patches. Each layer has a forward that returns what its backward needs and a
backward that takes dL/d(output) and returns dL/d(input) (and parameter gradients):

    conv3x3:   P[b, i, j, (dy, dx, c)] = xpad[b, i + dy, j + dx, c],  dy, dx in 0..2,
               out = P @ W_k + b0                  W (9 C_in, C_out), zero padding of 1
               (W's rows are (c, dy, dx), so W^T reshaped is torch's (C_out, C_in, 3, 3)
               weight; W_k is W with its rows reordered to the patches' (dy, dx, c))
    conv1x1:   out = x @ W + b0                    W (C_in, C_out)
    group_norm: per sample and group of C/G consecutive channels, over H W C/G values,
               n = (x - mu) / sqrt(var + eps) g + beta   (biased var, eps = 1e-5)
    silu:      u = a sigmoid(a)
    avg_pool2: out[i, j] = mean of x[2i:2i+2, 2j:2j+2]
    upsample2: out[i, j] = x[i // 2, j // 2]       (nearest neighbour)
    pad2 / crop2: zeros around H and W / the inner H x W (pad2 is crop2's backward, and back)

The torch twin computes the same maps with torch.nn.functional (conv2d on NCHW with the
weight W reshaped to (C_out, C_in, 3, 3), group_norm, avg_pool2d, interpolate), an
independent implementation that tests/test_crosscheck_convnet.py compares to 1e-10.
"""

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["GN_EPS", "groups", "conv3x3", "conv3x3_backward", "group_norm",
           "group_norm_backward", "silu", "silu_backward", "avg_pool2", "avg_pool2_backward",
           "upsample2", "upsample2_backward", "pad2", "crop2"]

GN_EPS = 1e-5
# the 9 offsets (dy, dx) of a 3x3 kernel, row-major
OFFSETS = [(dy, dx) for dy in range(3) for dx in range(3)]


def groups(channels):
    """GroupNorm's group count for `channels`: gcd(channels, 8) (as fm_torch's UNet)."""
    return math.gcd(int(channels), 8)


def _offset_major(W):
    """W (9 C_in, C_out) with rows (c, dy, dx) reordered to (dy, dx, c): W_k, the patches' order."""
    C, Co = W.shape[0] // 9, W.shape[1]
    return W.reshape(C, 9, Co).transpose(1, 0, 2).reshape(9 * C, Co)  # (9 C_in, C_out)


def conv3x3(x, W, b):
    """out = im2col(x) @ W_k + b for x (B, H, W, C_in), W (9 C_in, C_out); returns (out, P).

    The patches keep the channel innermost, (dy, dx, c): their copy moves runs of C
    contiguous numbers, 4 to 12 times faster here than the (c, dy, dx) order of W's rows,
    whose innermost runs are 3 numbers long; the 9 C_in x C_out weight is reordered instead.
    """
    B, H, Wd, C = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))  # (B, H+2, W+2, C) zero padding
    windows = sliding_window_view(xp, (3, 3), axis=(1, 2))  # (B, H, W, C, 3, 3) a view
    P = np.ascontiguousarray(windows.transpose(0, 1, 2, 4, 5, 3))  # (B, H, W, 3, 3, C) im2col
    out = P.reshape(-1, 9 * C) @ _offset_major(W) + b  # (B H W, C_out)
    return out.reshape(B, H, Wd, W.shape[1]), P


def conv3x3_backward(dout, P, W):
    """(dx, dW, db) of out = P @ W_k + b, P = im2col(x) with rows (dy, dx, c):

        dW_k = P^T dout (then back to W's row order),  db = sum dout,  dP = dout W_k^T,
        dx[i, j] = sum over (dy, dx) of dP[i - dy + 1, j - dx + 1, (dy, dx, c)]  (col2im)
    """
    B, H, Wd, Co = dout.shape
    C = W.shape[0] // 9
    d2 = dout.reshape(-1, Co)  # (B H W, C_out)
    dW_k = P.reshape(-1, 9 * C).T @ d2  # (9 C_in, C_out), rows (dy, dx, c)
    dW = dW_k.reshape(9, C, Co).transpose(1, 0, 2).reshape(9 * C, Co)  # rows (c, dy, dx)
    db = d2.sum(axis=0)  # (C_out,)
    # dP = dout W_k^T one offset's C_in columns at a time: each block comes out contiguous,
    # so the col2im adds run over whole image rows (2.6x faster at 28 x 28 than slicing
    # the (B, H, W, 9, C_in) dP, whose contiguous runs are C_in numbers long)
    W_t = np.ascontiguousarray(_offset_major(W).reshape(9, C, Co).transpose(0, 2, 1))  # (9, Co, C)
    dxp = np.zeros((B, H + 2, Wd + 2, C), dtype=dout.dtype)  # (B, H+2, W+2, C_in)
    for k, (dy, dx) in enumerate(OFFSETS):
        dP_k = (d2 @ W_t[k]).reshape(B, H, Wd, C)  # dL/dP[..., (dy, dx, :)]
        dxp[:, dy:dy + H, dx:dx + Wd, :] += dP_k  # back to each patch entry's source pixel
    return dxp[:, 1:-1, 1:-1, :], dW, db  # crop the padding


def _group_mean(a, G):
    """(B, C): the mean of a (B, H, W, C) over H, W and the C/G channels of each group,
    repeated for every channel of the group."""
    B, C = a.shape[0], a.shape[3]
    per_channel = a.reshape(B, -1, C).mean(axis=1)  # (B, C)
    per_group = per_channel.reshape(B, G, C // G).mean(axis=2)  # (B, G)
    return np.repeat(per_group, C // G, axis=1)  # (B, C)


def group_norm(x, g, beta, G, eps=GN_EPS):
    """n = (x - mu) rstd g + beta over groups of C/G channels; returns (n, xhat, rstd).

    rstd is returned per channel, (B, C), repeated within each group.
    """
    mu = _group_mean(x, G)  # (B, C)
    xc = x - mu[:, None, None, :]  # (B, H, W, C)
    var = _group_mean(xc * xc, G)  # (B, C) biased variance
    rstd = 1.0 / np.sqrt(var + eps)  # (B, C)
    xhat = xc * rstd[:, None, None, :]  # (B, H, W, C)
    return xhat * g + beta, xhat, rstd


def group_norm_backward(dn, xhat, rstd, g, G):
    """(dx, dg, dbeta) of n = xhat g + beta, xhat = (x - mu) rstd per group (as LayerNorm):

        dg = sum dn xhat,  dbeta = sum dn,  dxhat = dn g,
        dx = rstd (dxhat - mean_group(dxhat) - xhat mean_group(dxhat xhat))
    """
    dg = (dn * xhat).sum(axis=(0, 1, 2))  # (C,)
    dbeta = dn.sum(axis=(0, 1, 2))  # (C,)
    dxh = dn * g  # (B, H, W, C)
    m1 = _group_mean(dxh, G)  # (B, C)
    m2 = _group_mean(dxh * xhat, G)  # (B, C)
    return rstd[:, None, None, :] * (dxh - m1[:, None, None, :] - xhat * m2[:, None, None, :]), \
        dg, dbeta


def silu(a):
    """u = a sigmoid(a); returns (u, s) with s = sigmoid(a)."""
    with np.errstate(over="ignore"):  # exp(-a) = inf for a << 0 gives sigmoid = 0 exactly
        s = 1.0 / (1.0 + np.exp(-a))
    return a * s, s


def silu_backward(du, u, s):
    """da = du silu'(a), silu'(a) = s + a s (1 - s) = s + u - u s."""
    return du * (s + u - u * s)


def avg_pool2(x):
    """out (B, H/2, W/2, C): the mean of each 2x2 block of x (B, H, W, C)."""
    B, H, Wd, C = x.shape
    return x.reshape(B, H // 2, 2, Wd // 2, 2, C).mean(axis=(2, 4))


def avg_pool2_backward(dout):
    """dx[i, j] = dout[i // 2, j // 2] / 4."""
    B, H, Wd, C = dout.shape
    dx = np.broadcast_to((dout * 0.25)[:, :, None, :, None, :], (B, H, 2, Wd, 2, C))
    return dx.reshape(B, 2 * H, 2 * Wd, C)


def upsample2(x):
    """out[i, j] = x[i // 2, j // 2]: (B, H, W, C) -> (B, 2H, 2W, C)."""
    B, H, Wd, C = x.shape
    out = np.broadcast_to(x[:, :, None, :, None, :], (B, H, 2, Wd, 2, C))
    return out.reshape(B, 2 * H, 2 * Wd, C)


def upsample2_backward(dout):
    """dx[i, j] = sum of dout over the 2x2 block it was copied to."""
    B, H, Wd, C = dout.shape
    return dout.reshape(B, H // 2, 2, Wd // 2, 2, C).sum(axis=(2, 4))


def pad2(x, pad_h, pad_w):
    """(B, H, W, C) -> (B, H + sum(pad_h), W + sum(pad_w), C), zeros around; x itself when
    nothing is padded. pad_h = (top, bottom), pad_w = (left, right)."""
    if tuple(pad_h) == tuple(pad_w) == (0, 0):
        return x
    return np.pad(x, ((0, 0), tuple(pad_h), tuple(pad_w), (0, 0)))


def crop2(x, pad_h, pad_w, H, W):
    """The inner (B, H, W, C) of a padded x (B, H', W', C): pad2's inverse (a view)."""
    return x[:, pad_h[0]:pad_h[0] + H, pad_w[0]:pad_w[0] + W, :]
