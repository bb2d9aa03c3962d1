"""A multilayer perceptron velocity field v_theta(x, t, y) with a handwritten backward pass.

Architecture (identical in fm_torch/models/mlp.py, parameter for parameter):

    freqs_k = exp(-log(10000) k / half),  k = 0..half-1,  half = time_features // 2
    phi(t)  = [cos(s t freqs), sin(s t freqs)]   s = time_scale (1000)  # (B, time_features)
    h_0     = concat[x, phi(t), E[y]]        (E[y] only with num_classes; y=None -> null row)
    a_i     = h_i @ W{i} + b{i},   h_{i+1} = silu(a_i) = a_i * sigmoid(a_i),  i = 0..depth-1
    v       = h_depth @ W{depth} + b{depth}                            # (B, dim)

With mean_flow=True (MeanFlow, docs/math.md "Few-step generation") the network is the
average velocity u(x, r, t) of the flow through x at time r over [r, t]: phi(r) takes the
place of phi(t) and h_0 gains the columns phi(t - r) after the label columns; r=None
means r = t (then u = v, the instantaneous velocity). Its freqs are MEAN_FLOW_TIME_RATE
times the above (100 t freqs at s = 1000), and phi(t - r) runs at s_i = interval_scale,
by default time_scale, so both time inputs run at one rate. (Files written before
interval_scale existed ran phi(t - r) at 1000 whatever time_scale was; they load so.)

`forward` keeps the activations in buffers preallocated per batch size, so `backward`
can run the chain rule in reverse without recomputing anything; `jvp` and `divergence`
push tangents forward through the same cached activations (forward-mode, exact).
"""

from collections import OrderedDict

import numpy as np

from fm_numpy import kernels
from fm_numpy.models.files import MLP_FILE_DEFAULTS, NpzFile
from fm_numpy.models.files import config_dtype as _config_dtype
from fm_numpy.models.inputs import check_t

__all__ = ["MLP"]

# Mean-flow models take their time features at 100 t freqs instead of 1000 t freqs: the
# MeanFlow target holds d_r u, which the fast features make large and noisy (8gaussians,
# 1500 steps, 1-step energy distance 0.042 at rate 1000, 0.0125 at 100, 0.019 at 10).
MEAN_FLOW_TIME_RATE = 0.1
_MAX_CACHED_BATCH_SIZES = 4  # buffers kept for this many distinct batch sizes
_DIVERGENCE_BUDGET = 1 << 22  # elements of one (B, chunk, H) tangent block in `divergence`


def _phi(s, freqs, scale):
    """phi(s) = [cos(c s freqs), sin(c s freqs)] (B, T) for s (B,), c = scale."""
    targ = (scale * s)[:, None] * freqs  # (B, T/2)
    return np.concatenate([np.cos(targ), np.sin(targ)], axis=1)


def _dphi(targ, freqs, ds, scale):
    """Tangent of phi(s) for the tangent ds (B,) of s, targ = c s freqs (B, T/2), c = scale:
    d/ds cos(c s f) = -c f sin(c s f),  d/ds sin(c s f) = c f cos(c s f)."""
    rate = (scale * freqs)[None, :] * ds[:, None]  # (B, T/2)
    return np.concatenate([-np.sin(targ) * rate, np.cos(targ) * rate], axis=1)  # (B, T)


def upgrade_file_config(config):
    """An MLP file's config as today's constructor takes it: a key an older file lacks
    gets the value that file was trained with (time_scale 1000; interval_scale 1000 for
    a mean-flow file, which ran phi(t - r) at 1000 before the key existed)."""
    config = {**MLP_FILE_DEFAULTS, **config}
    if config.get("mean_flow"):
        config.setdefault("interval_scale", 1000.0)
    return config


class _Buffers:
    """Activations of one forward pass for batch size B, reused from call to call."""

    def __init__(self, B, in_features, hidden, depth, half, dtype):
        self.h0 = np.empty((B, in_features), dtype)  # (B, D + T [+ T])
        self.targ = np.empty((B, half), dtype)  # (B, T/2) time arguments s t freqs
        self.a = [np.empty((B, hidden), dtype) for _ in range(depth)]  # pre-activations
        self.s = [np.empty((B, hidden), dtype) for _ in range(depth)]  # sigmoid(a_i)
        self.h = [np.empty((B, hidden), dtype) for _ in range(depth)]  # h_{i+1} = silu(a_i)
        self.dh = np.empty((B, hidden), dtype)  # dL/dh_i during backward
        self.da = np.empty((B, hidden), dtype)  # dL/da_i during backward


class MLP(NpzFile):
    """v = MLP(x, t, y): the velocity field of the module docstring, NumPy only.

    Parameters live in `self.params` (an ordered dict "W0", "b0", ..., "W{depth}",
    "b{depth}" [, "E"]); W{i} has shape (in, out). Initialisation (seeded): W and b
    uniform in +-1/sqrt(fan_in) (torch.nn.Linear's default), E standard normal.
    `fast` (default True) runs the SiLU lines through fm_numpy.kernels, which gives
    bitwise the same numbers faster; set it False for the plain lines alone.
    """

    fast = True

    ARCH, NAME = "mlp", "an MLP"  # NpzFile
    FILE_DEFAULTS = staticmethod(upgrade_file_config)

    def __init__(self, dim, hidden=256, depth=3, time_features=32, num_classes=None, seed=0,
                 dtype=np.float32, mean_flow=False, time_scale=1000.0, interval_scale=None):
        for name, value, low in (("dim", dim, 1), ("hidden", hidden, 1), ("depth", depth, 1),
                                 ("time_features", time_features, 2)):
            if int(value) != value or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value}")
        if time_features % 2:
            raise ValueError(f"time_features must be even, got {time_features}")
        for name, value in (("time_scale", time_scale), ("interval_scale", interval_scale)):
            if name == "interval_scale" and value is None:  # None: the rate of time_scale
                continue
            if not (isinstance(value, (int, float, np.number)) and 0 < value < np.inf):
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        if interval_scale is not None and not mean_flow:
            raise ValueError("interval_scale is a setting of mean-flow models only")
        if num_classes is not None and (int(num_classes) != num_classes or num_classes < 1):
            raise ValueError(f"num_classes must be a positive integer or None, got {num_classes}")
        self.dim, self.hidden, self.depth = int(dim), int(hidden), int(depth)
        self.time_features = int(time_features)
        self.num_classes = None if num_classes is None else int(num_classes)
        self.seed = int(seed)
        self.dtype = np.dtype(_config_dtype(dtype))
        self.config = {
            "dim": self.dim, "hidden": self.hidden, "depth": self.depth,
            "time_features": self.time_features, "num_classes": self.num_classes,
            "seed": self.seed, "dtype": self.dtype.name, "time_scale": float(time_scale),
        }
        self.time_scale = float(time_scale)
        self.mean_flow = bool(mean_flow)
        # phi(t - r) at the rate of phi(r) unless told (old files: 1000, upgrade_file_config)
        self.interval_scale = self.time_scale if interval_scale is None else float(interval_scale)
        if self.mean_flow:  # only then in the config, so files without the key load as before
            self.config["mean_flow"] = True
            self.config["interval_scale"] = self.interval_scale
        half = self.time_features // 2
        self.freqs = np.exp(-np.log(10000.0) * np.arange(half) / half).astype(self.dtype)  # (T/2,)
        if self.mean_flow:  # slower time features, see the constant
            self.freqs = (self.freqs * MEAN_FLOW_TIME_RATE).astype(self.dtype)
        label_features = self.time_features if self.num_classes else 0
        interval_features = self.time_features if self.mean_flow else 0  # phi(t - r)
        self.in_features = self.dim + self.time_features + label_features + interval_features

        rng = np.random.default_rng(self.seed)
        widths = [self.in_features] + [self.hidden] * self.depth + [self.dim]
        self.params = OrderedDict()
        for i in range(self.depth + 1):
            bound = 1.0 / np.sqrt(widths[i])
            self.params[f"W{i}"] = rng.uniform(-bound, bound, (widths[i], widths[i + 1])).astype(
                self.dtype)
            self.params[f"b{i}"] = rng.uniform(-bound, bound, widths[i + 1]).astype(self.dtype)
        if self.num_classes:
            self.params["E"] = rng.standard_normal(
                (self.num_classes + 1, self.time_features)).astype(self.dtype)
        self.grads = OrderedDict((k, np.zeros_like(p)) for k, p in self.params.items())
        self._buffers = OrderedDict()
        self._cache = None

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        return f"MLP({args})"

    @property
    def num_parameters(self):
        return sum(p.size for p in self.params.values())

    # ------------------------------------------------------------------ inputs
    def _get_buffers(self, B):
        buf = self._buffers.get(B)
        if buf is None:
            buf = _Buffers(B, self.in_features, self.hidden, self.depth,
                           self.time_features // 2, self.dtype)
            self._buffers[B] = buf
            if len(self._buffers) > _MAX_CACHED_BATCH_SIZES:
                self._buffers.popitem(last=False)
        else:
            self._buffers.move_to_end(B)
        return buf

    def _check_x(self, x):
        x = np.asarray(x, dtype=self.dtype)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (B, {self.dim}), got {x.shape}")
        return x

    def _check_t(self, t, B):
        return check_t(t, B, self.dtype)  # (B,)

    def _check_r(self, r, t, B):
        """(time of x, t - r): (t, 0) for r=None; r must satisfy 0 <= r <= t (mean-flow only)."""
        if r is None:
            return t, np.zeros(B, dtype=self.dtype)
        if not self.mean_flow:
            raise ValueError("r is an input of mean-flow models only (mean_flow=False here)")
        r = self._check_t(r, B)
        if np.any(r > t):
            raise ValueError("r must not exceed t (the average velocity runs from r to t)")
        return r, t - r

    def _label_index(self, y, B):
        """Rows of E to use: y itself, or the null row num_classes where y is None."""
        if y is None:
            return None
        if not self.num_classes:
            raise ValueError("this MLP is unconditional (num_classes=None) but labels were given")
        y = np.asarray(y)
        if y.ndim == 0:
            y = np.full(B, y)
        if y.shape != (B,) or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"y must be integers of shape ({B},), got {y.dtype} {y.shape}")
        if y.min() < 0 or y.max() > self.num_classes:
            raise ValueError(f"labels must lie in [0, {self.num_classes}] "
                             f"({self.num_classes} = null class), got {y.min()}..{y.max()}")
        return y

    # ------------------------------------------------------------------ forward
    def forward(self, x, t, y=None, r=None):
        """v = MLP(x, t, y) for x (B, dim), t scalar or (B,), y None or ints (B,); returns (B, dim).

        Mean-flow models: u(x, r, t) with x at time r <= t (r=None: r = t).
        The activations stay cached for `backward` (until the next forward call).
        The returned array is new, never a buffer, so a solver may keep it.
        """
        x = self._check_x(x)
        B = x.shape[0]
        t = self._check_t(t, B)
        t, interval = self._check_r(r, t, B)  # t <- r: the time of x; interval = t - r
        y = self._label_index(y, B)
        P, D, half = self.params, self.dim, self.time_features // 2
        buf = self._get_buffers(B)
        h = buf.h0
        h[:, :D] = x
        np.multiply((self.time_scale * t)[:, None], self.freqs, out=buf.targ)  # (B, T/2)
        np.cos(buf.targ, out=h[:, D:D + half])
        np.sin(buf.targ, out=h[:, D + half:D + 2 * half])
        if self.num_classes:
            label = P["E"][self.num_classes] if y is None else P["E"][y]  # (B, T)
            h[:, D + 2 * half:D + 4 * half] = label
        if self.mean_flow:
            h[:, -2 * half:] = _phi(interval, self.freqs, self.interval_scale)  # (B, T) phi(t-r)
        with np.errstate(over="ignore"):  # exp(-a) = inf for a << 0 gives sigmoid = 0 exactly
            for i in range(self.depth):
                a, s = buf.a[i], buf.s[i]
                np.matmul(h, P[f"W{i}"], out=a)  # (B, H)
                if self.fast:  # the same lines below, in cache-sized blocks over threads
                    kernels.silu_forward(a, P[f"b{i}"], s, buf.h[i])
                    h = buf.h[i]
                    continue
                a += P[f"b{i}"]  # (B, H)
                np.negative(a, out=s)
                np.exp(s, out=s)
                s += 1
                np.reciprocal(s, out=s)  # sigmoid(a) = 1 / (1 + exp(-a))
                np.multiply(a, s, out=buf.h[i])  # h_{i+1} = a sigmoid(a)
                h = buf.h[i]
        v = h @ P[f"W{self.depth}"]  # (B, D)
        v += P[f"b{self.depth}"]
        self._cache = (buf, B, y)
        return v

    __call__ = forward

    # ------------------------------------------------------------------ backward
    def backward(self, dv):
        """Gradients of a loss L with respect to every parameter, given dv = dL/dv (B, dim).

        The chain rule through the last forward pass, in reverse:
            dW{depth} = h_depth^T dv,  db{depth} = sum_B dv,  dh_depth = dv W{depth}^T
            da_i = dh_{i+1} * silu'(a_i),  silu'(a) = s + h - h s  (s = sigmoid(a), h = a s)
            dW{i} = h_i^T da_i,  db{i} = sum_B da_i,  dh_i = da_i W{i}^T
            dE[c] = sum over samples with label row c of dh_0[:, label columns]
        Returns the dict `self.grads` (names as in `params`), overwritten by the next call.
        """
        if self._cache is None:
            raise ValueError("backward needs a forward pass first")
        buf, B, y = self._cache
        dv = np.asarray(dv, dtype=self.dtype)
        if dv.shape != (B, self.dim):
            raise ValueError(f"dv must have shape ({B}, {self.dim}), got {dv.shape}")
        P, G, L = self.params, self.grads, self.depth
        h_in = [buf.h0] + buf.h[:-1]  # h_i, the input of layer i
        dh, da = buf.dh, buf.da
        np.matmul(buf.h[L - 1].T, dv, out=G[f"W{L}"])  # (H, D)
        np.sum(dv, axis=0, out=G[f"b{L}"])  # (D,)
        np.matmul(dv, P[f"W{L}"].T, out=dh)  # (B, H) dL/dh_depth
        for i in reversed(range(L)):
            s, h = buf.s[i], buf.h[i]
            if self.fast:  # the same four lines, in cache-sized blocks over threads
                kernels.silu_backward(dh, s, h, da)
            else:
                np.multiply(h, s, out=da)  # h s
                np.subtract(h, da, out=da)  # h - h s
                da += s  # silu'(a_i) = s + h - h s
                da *= dh  # (B, H) dL/da_i
            np.matmul(h_in[i].T, da, out=G[f"W{i}"])  # (in, H)
            np.sum(da, axis=0, out=G[f"b{i}"])  # (H,)
            if i > 0:
                np.matmul(da, P[f"W{i}"].T, out=dh)  # (B, H) dL/dh_i
        if self.num_classes:
            label_cols = self.dim + self.time_features
            dE_rows = da @ P["W0"][label_cols:label_cols + self.time_features].T  # (B, T)
            G["E"][...] = 0
            rows = np.full(B, self.num_classes) if y is None else y
            np.add.at(G["E"], rows, dE_rows)  # (C+1, T)
        return G

    # ------------------------------------------------------------------ forward mode
    def _silu_slopes(self, buf):
        """silu'(a_i) = s + h - h s for every hidden layer of the cached forward pass."""
        slopes = []
        for s, h in zip(buf.s, buf.h, strict=True):
            slope = h * s
            np.subtract(h, slope, out=slope)
            slope += s
            slopes.append(slope)  # (B, H)
        return slopes

    def jvp(self, x, t, dx, y=None, r=None, dr=0.0, dt=0.0):
        """(v, dv): v = MLP(x, t, y) [u(x, r, t) for mean-flow models] and its derivative
        along the tangent (dx, dr, dt) of (x, r, t), by forward-mode differentiation (exact).

        dx (B, dim); dr, dt scalars or (B,) (the default 0 gives J dx, J = dv/dx). With
        r=None the time of x is t itself, so its tangent is dt. Tangents:
            ds = dr (dt if r is None),  dphi(s) = c freqs [-sin, cos](c s freqs) ds, c = time_scale
            da_0 = dx W0[x rows] + dphi(s) W0[time rows] [+ dphi(t - r) W0[interval rows]]
            (dphi(t - r) with c = interval_scale and the tangent dt - dr)
            dh_{i+1} = silu'(a_i) da_i,  da_{i+1} = dh_{i+1} W{i+1},  dv = dh_depth W{depth}
        """
        v = self.forward(x, t, y, r)
        buf, B, _ = self._cache
        dx = np.asarray(dx, dtype=self.dtype)
        if dx.shape != (B, self.dim):
            raise ValueError(f"dx must have shape ({B}, {self.dim}), got {dx.shape}")
        P, D, T = self.params, self.dim, self.time_features
        slopes = self._silu_slopes(buf)
        da = dx @ self.params["W0"][:self.dim]  # (B, H)
        ds = np.broadcast_to(np.asarray(dt if r is None else dr, dtype=self.dtype), (B,))
        if np.any(ds != 0):
            da += _dphi(buf.targ, self.freqs, ds, self.time_scale) @ P["W0"][D:D + T]  # (B, H)
        if r is not None:
            d_interval = np.broadcast_to(
                np.asarray(dt, dtype=self.dtype) - np.asarray(dr, self.dtype), (B,))  # of t - r
            if np.any(d_interval != 0):
                interval = self._check_t(t, B) - self._check_t(r, B)  # (B,)
                targ = (self.interval_scale * interval)[:, None] * self.freqs  # (B, T/2)
                da += _dphi(targ, self.freqs, d_interval, self.interval_scale) @ P["W0"][-T:]
        for i in range(self.depth):
            dh = slopes[i] * da  # (B, H)
            da = dh @ self.params[f"W{i + 1}"]  # (B, H) or (B, D) at the last layer
        return v, da

    def divergence(self, x, t, y=None):
        """(v, div v) with div v = trace(dv/dx), shape (B,), exact, by forward mode.

        All dim unit tangents e_j are pushed at once (in chunks of columns so a
        (B, chunk, H) block stays under a few million numbers): the tangent of a_0 for
        e_j is the row W0[j], then T <- (silu'(a_i) T) W{i+1}, and
        div = sum_j sum_k T_depth[b, j, k] W{depth}[k, j].
        """
        v = self.forward(x, t, y)
        buf, B, _ = self._cache
        slopes = self._silu_slopes(buf)
        P, D, H, L = self.params, self.dim, self.hidden, self.depth
        chunk = int(max(1, min(D, _DIVERGENCE_BUDGET // max(1, B * H))))
        div = np.zeros(B, dtype=self.dtype)
        for j0 in range(0, D, chunk):
            j1 = min(D, j0 + chunk)
            T = slopes[0][:, None, :] * P["W0"][None, j0:j1, :]  # (B, C, H) tangents of h_1
            for i in range(1, L):
                T = T.reshape(-1, H) @ P[f"W{i}"]  # (B C, H)
                T = T.reshape(B, j1 - j0, H)
                T *= slopes[i][:, None, :]  # (B, C, H) tangents of h_{i+1}
            T *= P[f"W{L}"][:, j0:j1].T[None]  # (B, C, H) times W{depth}[k, j]
            div += T.sum(axis=(1, 2))  # (B,) diagonal entries J[b, j, j] summed over the chunk
        return v, div

    # ------------------------------------------------------------------ files
    def _arrays(self):
        return self.params  # NpzFile: save_npz, load_npz, from_npz

    def _set_arrays(self, arrays):
        for name, value in arrays.items():
            self.params[name][...] = value
