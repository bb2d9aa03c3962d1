"""The probe network of check_training_step: a model the kit controls, recording what it sees.

    u = e + beta t + gamma r        (per sample, flattened to (n, D))

e is a fresh standard normal draw each call (independent of the inputs, so the implied
regression target can be read off the gradient: for L = sum_b c_b |u_b - target_b|^2 / 2,
dL/du_b = c_b (u_b - target_b), a linear fit of dL/du onto u and the known inputs is exact);
beta and gamma are fixed vectors that give the output a known time derivative
(d u / d t = beta, d u / d r = gamma, d u / d x = 0), which MeanFlow's JVP target needs.

Each call appends a `Call` (x, t, y, r, output; `grad` = dL/d output once the loss is known).
NumPy losses hand back dL/du of the latest forward or jvp (fm_numpy's `loss_and_dv`
contract); fm_torch/conformance.py fills `grad` of every call through autograd.
"""

import numpy as np

__all__ = ["Call", "Probe"]


class Call:
    """One forward of the probe: the inputs as the network saw them, its output and dL/d output."""

    def __init__(self, x, t, y, r, out):
        self.x, self.t, self.y, self.r, self.out = x, t, y, r, out
        self.grad = None

    @property
    def n(self):
        return self.x.shape[0]


def _per_sample(t, n):
    """A time input as (n,) float64, and whether it was a scalar (one t for the whole batch)."""
    if t is None:
        return None, False
    arr = np.asarray(t, dtype=np.float64)
    if arr.ndim == 0 or arr.size == 1:
        return np.full(n, float(arr.reshape(-1)[0])), True
    if arr.size != n:
        raise ValueError(f"the time input has {arr.size} values for a batch of {n}")
    return arr.reshape(n), False


class Probe:
    """A network `probe(x, t, y=None, r=None) -> u` with the shape of x, recording every call.

    Also `jvp(x, t, dx, y=None, r=None, dr=0.0, dt=0.0) -> (u, du)` (fm_numpy's MLP.jvp
    signature, used by MeanFlow), `backward(dv)` (attaches dL/du to the latest call) and an
    empty `params`, so a training step written against fm_numpy's network protocol runs.
    """

    def __init__(self, dim, seed=0, time_slopes=False):
        self.rng = np.random.default_rng(seed)
        self.dim = int(dim)
        slopes = np.random.default_rng(seed + 1).standard_normal((2, self.dim))
        self.beta, self.gamma = (slopes if time_slopes else np.zeros((2, self.dim)))
        self.calls = []
        self.params = {}
        self.scalar_t = 0  # calls whose t was one number for the whole batch

    def output(self, x, t, y=None, r=None):
        """Record a call and return u = e + beta t + gamma r, shaped like x (float64)."""
        x = np.asarray(x)
        n = x.shape[0]
        flat = np.asarray(x, dtype=np.float64).reshape(n, -1)  # (n, D)
        if flat.shape[1] != self.dim:
            raise ValueError(f"the probe was built for {self.dim} features, got {flat.shape[1]}")
        t_n, scalar = _per_sample(t, n)
        r_n, _ = _per_sample(r, n)
        self.scalar_t += int(scalar and n > 1)
        e = self.rng.standard_normal((n, self.dim))  # (n, D)
        u = e.copy()
        if t_n is not None:
            u += t_n[:, None] * self.beta  # (n, D)
        if r_n is not None:
            u += r_n[:, None] * self.gamma
        y_n = None if y is None else np.asarray(y).reshape(-1).copy()
        self.calls.append(Call(flat.copy(), t_n, y_n, r_n, u.copy()))
        return u.reshape(x.shape)

    def __call__(self, x, t, y=None, r=None):
        return self.output(x, t, y, r)

    forward = __call__

    def jvp(self, x, t, dx, y=None, r=None, dr=0.0, dt=0.0):
        """(u, du): du = beta dt + gamma dr (the probe does not depend on x)."""
        u = self.output(x, t, y, r)
        n = u.shape[0]
        dt_n = np.broadcast_to(np.asarray(dt, dtype=np.float64).reshape(-1), (n,))
        dr_n = np.broadcast_to(np.asarray(dr, dtype=np.float64).reshape(-1), (n,))
        du = dt_n[:, None] * self.beta + dr_n[:, None] * self.gamma  # (n, D)
        return u, du.reshape(u.shape)

    def backward(self, dv):
        """Attach dL/du to the latest call (the fm_numpy network protocol); returns no grads."""
        if not self.calls:
            raise ValueError("backward before any forward")
        self.calls[-1].grad = np.asarray(dv, dtype=np.float64).reshape(self.calls[-1].out.shape)
        return {}

    def reset(self):
        self.calls = []
