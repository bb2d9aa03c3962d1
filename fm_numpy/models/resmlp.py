"""A residual MLP with LayerNorm, v_theta(x, t, y), with a handwritten backward pass.

Architecture (identical in fm_torch/models/resmlp.py, parameter for parameter):

    phi(t)  = [cos(1000 t freqs), sin(1000 t freqs)]        (as fm_numpy.models.mlp)  # (B, T)
    h_0     = concat[x, phi(t), E[y]]        (E[y] only with num_classes; y=None -> null row)
    z_0     = h_0 @ W_in + b_in                                                # (B, H)
    for k = 0..depth-1 (pre-norm residual blocks):
        n_k     = LN(z_k) g{k} + beta{k},   LN(z) = (z - mean(z)) / sqrt(var(z) + eps)
        a_k     = n_k @ W{k}_1 + b{k}_1,    u_k = silu(a_k) = a_k sigmoid(a_k)  # (B, H)
        z_{k+1} = z_k + u_k @ W{k}_2 + b{k}_2                                  # (B, H)
    n_out   = LN(z_depth) g_out + beta_out
    v       = n_out @ W_out + b_out                                            # (B, dim)

mean and var are over the H features of one sample (var biased, as torch.nn.LayerNorm),
eps = 1e-5. W{k}_2 and b{k}_2 start at zero, so every block starts as the identity and
the network as a one-hidden-layer map (the residual stream carries x, t and y to the top).
"""

import numpy as np

from fm_numpy.models.files import NpzFile
from fm_numpy.models.files import config_dtype as _config_dtype
from fm_numpy.models.inputs import check_t

__all__ = ["ResMLP", "LN_EPS", "layer_norm", "layer_norm_backward"]

ARCH = "resmlp"
LN_EPS = 1e-5


def layer_norm(z, g, beta, eps=LN_EPS):
    """n = (z - mu) rstd g + beta per row; returns (n, zhat, rstd) for the backward pass."""
    mu = z.mean(axis=1, keepdims=True)  # (B, 1)
    zc = z - mu  # (B, H)
    var = (zc * zc).mean(axis=1, keepdims=True)  # (B, 1) biased variance
    rstd = 1.0 / np.sqrt(var + eps)  # (B, 1)
    zhat = zc * rstd  # (B, H)
    return zhat * g + beta, zhat, rstd


def layer_norm_backward(dn, zhat, rstd, g):
    """(dz, dg, dbeta) from dn = dL/dn of n = zhat g + beta, zhat = (z - mu) rstd:

        dg = sum_B dn zhat,  dbeta = sum_B dn,  dzhat = dn g,
        dz = rstd (dzhat - mean_H(dzhat) - zhat mean_H(dzhat zhat))
    """
    dg = (dn * zhat).sum(axis=0)  # (H,)
    dbeta = dn.sum(axis=0)  # (H,)
    dzhat = dn * g  # (B, H)
    m1 = dzhat.mean(axis=1, keepdims=True)  # (B, 1)
    m2 = (dzhat * zhat).mean(axis=1, keepdims=True)  # (B, 1)
    dz = rstd * (dzhat - m1 - zhat * m2)  # (B, H)
    return dz, dg, dbeta


def _sigmoid(a):
    with np.errstate(over="ignore"):  # exp(-a) = inf for a << 0 gives sigmoid = 0 exactly
        return 1.0 / (1.0 + np.exp(-a))


class ResMLP(NpzFile):
    """v = ResMLP(x, t, y): the velocity field of the module docstring, NumPy only.

    Parameters live in `self.params` (ordered): "W_in", "b_in", then per block k "g{k}",
    "beta{k}", "W{k}_1", "b{k}_1", "W{k}_2", "b{k}_2", then "g_out", "beta_out", "W_out",
    "b_out" [, "E"]; W has shape (in, out). Initialisation (seeded): W_in, W{k}_1, W_out and
    their biases uniform in +-1/sqrt(fan_in), W{k}_2 = b{k}_2 = 0, g = 1, beta = 0,
    E standard normal.
    """

    ARCH, NAME, FILE_DEFAULTS = ARCH, "a ResMLP", None  # NpzFile

    def __init__(self, dim, hidden=512, depth=3, time_features=32, num_classes=None, seed=0,
                 dtype=np.float32, arch=ARCH):
        if arch != ARCH:
            raise ValueError(f"arch must be {ARCH!r}, got {arch!r}")
        for name, value, low in (("dim", dim, 1), ("hidden", hidden, 1), ("depth", depth, 1),
                                 ("time_features", time_features, 2)):
            if int(value) != value or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value}")
        if time_features % 2:
            raise ValueError(f"time_features must be even, got {time_features}")
        if num_classes is not None and (int(num_classes) != num_classes or num_classes < 1):
            raise ValueError(f"num_classes must be a positive integer or None, got {num_classes}")
        self.dim, self.hidden, self.depth = int(dim), int(hidden), int(depth)
        self.time_features = int(time_features)
        self.num_classes = None if num_classes is None else int(num_classes)
        self.seed = int(seed)
        self.dtype = np.dtype(_config_dtype(dtype))
        self.config = {
            "arch": ARCH, "dim": self.dim, "hidden": self.hidden, "depth": self.depth,
            "time_features": self.time_features, "num_classes": self.num_classes,
            "seed": self.seed, "dtype": self.dtype.name,
        }
        half = self.time_features // 2
        self.freqs = np.exp(-np.log(10000.0) * np.arange(half) / half).astype(self.dtype)  # (T/2,)
        label_features = self.time_features if self.num_classes else 0
        self.in_features = self.dim + self.time_features + label_features

        rng = np.random.default_rng(self.seed)
        H, dt = self.hidden, self.dtype

        def linear(fan_in, fan_out):
            bound = 1.0 / np.sqrt(fan_in)
            return (rng.uniform(-bound, bound, (fan_in, fan_out)).astype(dt),
                    rng.uniform(-bound, bound, fan_out).astype(dt))

        P = self.params = {}
        P["W_in"], P["b_in"] = linear(self.in_features, H)
        for k in range(self.depth):
            P[f"g{k}"], P[f"beta{k}"] = np.ones(H, dt), np.zeros(H, dt)
            P[f"W{k}_1"], P[f"b{k}_1"] = linear(H, H)
            P[f"W{k}_2"], P[f"b{k}_2"] = np.zeros((H, H), dt), np.zeros(H, dt)
        P["g_out"], P["beta_out"] = np.ones(H, dt), np.zeros(H, dt)
        P["W_out"], P["b_out"] = linear(H, self.dim)
        if self.num_classes:
            P["E"] = rng.standard_normal((self.num_classes + 1, self.time_features)).astype(dt)
        self.grads = {k: np.zeros_like(p) for k, p in P.items()}
        self._cache = None

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config.items() if k != "arch")
        return f"ResMLP({args})"

    @property
    def num_parameters(self):
        return sum(p.size for p in self.params.values())

    # ------------------------------------------------------------------ inputs
    def _inputs(self, x, t, y):
        """h_0 = concat[x, phi(t), E[y]] (B, in_features) and the label rows used (or None)."""
        x = np.asarray(x, dtype=self.dtype)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (B, {self.dim}), got {x.shape}")
        B = x.shape[0]
        t = check_t(t, B, self.dtype)  # (B,)
        targ = (1000 * t)[:, None] * self.freqs  # (B, T/2)
        parts = [x, np.cos(targ), np.sin(targ)]
        rows = None
        if y is not None and not self.num_classes:
            raise ValueError("this ResMLP is unconditional (num_classes=None) but labels were "
                             "given")
        if self.num_classes:
            if y is None:
                rows = np.full(B, self.num_classes)
            else:
                rows = np.asarray(y)
                if rows.ndim == 0:
                    rows = np.full(B, rows)
                if rows.shape != (B,) or not np.issubdtype(rows.dtype, np.integer):
                    raise ValueError(f"y must be integers of shape ({B},), got {rows.dtype} "
                                     f"{rows.shape}")
                if rows.min() < 0 or rows.max() > self.num_classes:
                    raise ValueError(f"labels must lie in [0, {self.num_classes}] "
                                     f"({self.num_classes} = null class), got "
                                     f"{rows.min()}..{rows.max()}")
            parts.append(self.params["E"][rows])  # (B, T)
        return np.concatenate(parts, axis=1), rows  # (B, D + T [+ T])

    # ------------------------------------------------------------------ forward
    def forward(self, x, t, y=None):
        """v = ResMLP(x, t, y) for x (B, dim), t scalar or (B,), y None or ints (B,).

        Keeps what `backward` needs (until the next forward call); returns a new (B, dim).
        """
        P = self.params
        h0, rows = self._inputs(x, t, y)  # (B, D + T [+ T])
        z = h0 @ P["W_in"] + P["b_in"]  # (B, H) z_0
        blocks = []
        for k in range(self.depth):
            n, zhat, rstd = layer_norm(z, P[f"g{k}"], P[f"beta{k}"])  # (B, H)
            a = n @ P[f"W{k}_1"] + P[f"b{k}_1"]  # (B, H)
            s = _sigmoid(a)  # (B, H)
            u = a * s  # (B, H) silu(a)
            z = z + (u @ P[f"W{k}_2"] + P[f"b{k}_2"])  # (B, H) z_{k+1}
            blocks.append((n, zhat, rstd, s, u))
        n_out, zhat_out, rstd_out = layer_norm(z, P["g_out"], P["beta_out"])  # (B, H)
        v = n_out @ P["W_out"] + P["b_out"]  # (B, D)
        self._cache = (h0, rows, blocks, n_out, zhat_out, rstd_out)
        return v

    __call__ = forward

    # ------------------------------------------------------------------ backward
    def backward(self, dv):
        """Gradients of a loss L with respect to every parameter, given dv = dL/dv (B, dim).

        The chain rule through the last forward pass, in reverse:
            dW_out = n_out^T dv,  db_out = sum_B dv,  dn_out = dv W_out^T
            dz_depth, dg_out, dbeta_out = LN backward of dn_out
            for k = depth-1..0:  (dz is dL/dz_{k+1}; the skip passes it on unchanged)
                dW{k}_2 = u_k^T dz,  db{k}_2 = sum_B dz,  du = dz W{k}_2^T
                da = du silu'(a_k),  silu'(a) = s + u - u s  (s = sigmoid(a), u = a s)
                dW{k}_1 = n_k^T da,  db{k}_1 = sum_B da,  dn = da W{k}_1^T
                dz <- dz + LN backward of dn  (also dg{k}, dbeta{k})
            dW_in = h_0^T dz,  db_in = sum_B dz,
            dE[c] = sum over samples with label row c of (dz W_in^T)[:, label columns]
        Returns the dict `self.grads` (names as in `params`), overwritten by the next call.
        """
        if self._cache is None:
            raise ValueError("backward needs a forward pass first")
        h0, rows, blocks, n_out, zhat_out, rstd_out = self._cache
        B = h0.shape[0]
        dv = np.asarray(dv, dtype=self.dtype)
        if dv.shape != (B, self.dim):
            raise ValueError(f"dv must have shape ({B}, {self.dim}), got {dv.shape}")
        P, G = self.params, self.grads
        G["W_out"][...] = n_out.T @ dv  # (H, D)
        G["b_out"][...] = dv.sum(axis=0)  # (D,)
        dn = dv @ P["W_out"].T  # (B, H) dL/dn_out
        dz, G["g_out"][...], G["beta_out"][...] = layer_norm_backward(
            dn, zhat_out, rstd_out, P["g_out"])  # (B, H) dL/dz_depth
        for k in reversed(range(self.depth)):
            n, zhat, rstd, s, u = blocks[k]
            G[f"W{k}_2"][...] = u.T @ dz  # (H, H)
            G[f"b{k}_2"][...] = dz.sum(axis=0)  # (H,)
            du = dz @ P[f"W{k}_2"].T  # (B, H) dL/du_k
            da = du * (s + u - u * s)  # (B, H) dL/da_k
            G[f"W{k}_1"][...] = n.T @ da  # (H, H)
            G[f"b{k}_1"][...] = da.sum(axis=0)  # (H,)
            dn = da @ P[f"W{k}_1"].T  # (B, H) dL/dn_k
            dz_ln, G[f"g{k}"][...], G[f"beta{k}"][...] = layer_norm_backward(
                dn, zhat, rstd, P[f"g{k}"])  # (B, H)
            dz = dz + dz_ln  # (B, H) dL/dz_k: skip path plus the block's branch
        G["W_in"][...] = h0.T @ dz  # (in, H)
        G["b_in"][...] = dz.sum(axis=0)  # (H,)
        if self.num_classes:
            label_cols = self.dim + self.time_features
            dE_rows = dz @ P["W_in"][label_cols:].T  # (B, T) dL/dh_0 at the label columns
            G["E"][...] = 0
            np.add.at(G["E"], rows, dE_rows)  # (C+1, T)
        return G

    # ------------------------------------------------------------------ files
    def _arrays(self):
        return self.params  # NpzFile: save_npz, load_npz, from_npz

    def _set_arrays(self, arrays):
        for name, value in arrays.items():
            self.params[name][...] = value
