"""Shared strategies and comparisons for the fm_numpy <-> fm_torch cross-checks.

Every comparison is elementwise against a *scale*: the sum of the absolute values of the
terms that make up the compared quantity (|a| |x| + |b| |y| for a x + b y). Rounding
error of a sum of products is bounded by a small multiple of eps times that scale, so a
relative tolerance against it is sound even where the result itself cancels to ~0.
Non-finite entries (d_sigma_t = -inf at t = 1 for LinearVP and VP) must match exactly.
"""

import numpy as np
import torch
from hypothesis import strategies as st

import fm_numpy.paths as np_paths
import fm_torch.paths as th_paths

# Cross-package tolerances, relative to the scale above (see docs/crosscheck.md).
RTOL = {np.float64: 1e-10, np.float32: 1e-5}
TORCH_DTYPE = {np.float64: torch.float64, np.float32: torch.float32}

SCHEDULER_NAMES = ("condot", "sigma_min_ot", "cosine", "linear_vp", "vp", "polynomial")


@st.composite
def schedulers(draw, names=SCHEDULER_NAMES):
    """(name, kwargs) of a scheduler with random valid parameters."""
    name = draw(st.sampled_from(names))
    if name == "sigma_min_ot":
        kwargs = {"sigma_min": draw(st.floats(0.0, 0.5))}
    elif name == "vp":
        beta_min = draw(st.floats(0.0, 2.0))
        kwargs = {"beta_min": beta_min, "beta_max": draw(st.floats(max(beta_min, 0.5), 25.0))}
    elif name == "polynomial":
        kwargs = {"n": draw(st.one_of(st.sampled_from([1.0, 2.0, 3.0]), st.floats(0.25, 5.0)))}
    else:
        kwargs = {}
    return name, kwargs


def make_pair(name, kwargs):
    """The same scheduler in both packages."""
    return np_paths.make_scheduler(name, **kwargs), th_paths.make_scheduler(name, **kwargs)


def singular_times(name):
    """Endpoints where a scheduler's derivatives blow up (finite differences stay away).

    LinearVP: sigma_t = sqrt(1 - t^2) ~ sqrt(2 (1 - t)) at t = 1. VP: sigma_t ~ sqrt(T) with
    T ~ beta_min (1 - t) at t = 1. Polynomial: t^n is not smooth at t = 0 unless n is an
    integer (treated as singular for every n).
    """
    return {"linear_vp": (1.0,), "vp": (1.0,), "polynomial": (0.0,)}.get(name, ())


# A vector batch (B, D) or an image batch (B, C, H, W).
vector_shapes = st.tuples(st.integers(1, 64), st.integers(1, 64))
image_shapes = st.tuples(
    st.integers(1, 8), st.integers(1, 3), st.integers(1, 12), st.integers(1, 12)
)
shapes = st.one_of(vector_shapes, image_shapes)
seeds = st.integers(0, 2**32 - 1)
# Exactly 0 and 1 are drawn often, besides hypothesis's own edge floats.
time_values = st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0))


@st.composite
def times(draw, batch):
    """A scalar time (Python float) or one time per sample (float64 array of shape (B,))."""
    if draw(st.booleans()):
        return draw(time_values)
    return np.array(draw(st.lists(time_values, min_size=batch, max_size=batch)))


def to_torch(a, dtype=None):
    """A numpy array (or scalar) as a torch tensor, same values; Python floats pass through."""
    if isinstance(a, float):
        return a
    return torch.from_numpy(np.array(a, dtype=dtype))


def to_numpy(a):
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def assert_close(a, b, scale, rtol, what=""):
    """|a - b| <= rtol * scale elementwise; non-finite entries must be identical."""
    a, b = to_numpy(a), to_numpy(b)
    assert a.shape == b.shape, f"{what}: shapes {a.shape} != {b.shape}"
    assert a.dtype == b.dtype, f"{what}: dtypes {a.dtype} != {b.dtype}"
    finite = np.isfinite(a)
    np.testing.assert_array_equal(np.isfinite(b), finite, err_msg=f"{what}: non-finite pattern")
    np.testing.assert_array_equal(a[~finite], b[~finite], err_msg=f"{what}: non-finite values")
    scale = np.broadcast_to(np.asarray(scale, dtype=np.float64), a.shape)[finite]
    err = np.abs(a[finite].astype(np.float64) - b[finite].astype(np.float64))
    bad = err > rtol * scale
    if bad.any():
        i = np.argmax(err - rtol * scale)
        raise AssertionError(
            f"{what}: {bad.sum()} of {err.size} entries differ; worst |a-b| = {err[i]:.3e} "
            f"against rtol * scale = {rtol:.1e} * {scale[i]:.3e} "
            f"(a = {a[finite][i]!r}, b = {b[finite][i]!r})"
        )


def coefficients64(sched_np, t, x):
    """(alpha_t, sigma_t, d_alpha_t, d_sigma_t) in float64, broadcastable against x."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np_paths.AffinePath(sched_np).coefficients(t, np.asarray(x, dtype=np.float64))


class GaussianOracle:
    """Marginal velocity of CondOT for data N(m, s^2) per coordinate (REFERENCES.md):

        u_t(x) = m + (t s^2 - (1 - t)) / (t^2 s^2 + (1 - t)^2) (x - t m).

    Written once for both frameworks with +, -, *, / only (correctly rounded in both), so
    numpy and torch evaluate it bit for bit alike. Its flow from x0 ~ N(0, 1) is
    x_t = t m + sqrt(t^2 s^2 + (1 - t)^2) x0.
    """

    def __init__(self, m, s):
        self.m, self.s2 = m, s * s  # (...,) the non-batch shape

    def __call__(self, x, t):
        c = (t * self.s2 - (1 - t)) / (t * t * self.s2 + (1 - t) * (1 - t))
        return self.m + c * (x - t * self.m)

    def flow(self, x, t_from, t_to):
        """The exact solution: x at t_to starting from x at t_from."""
        std_from = np.sqrt(t_from**2 * self.s2 + (1 - t_from) ** 2)
        std_to = np.sqrt(t_to**2 * self.s2 + (1 - t_to) ** 2)
        return t_to * self.m + std_to / std_from * (x - t_from * self.m)
