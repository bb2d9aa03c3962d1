"""fm_numpy.paths and fm_torch.paths agree, and both obey the path's calculus.

Properties (tolerances and their reasons: docs/crosscheck.md):
- AffinePath.sample gives the same xt, ut in both packages (float64 and float32),
  for every scheduler, scalar or per-sample t (0 and 1 included), vector or image batches;
- xt = x0 at t = 0 and xt = x1 at t = 1 (VP starts at alpha_0 x1 + sigma_0 x0 and
  SigmaMinOT ends at x1 + sigma_min x0, by construction);
- ut is the time derivative of xt (fourth-order finite differences);
- the four prediction conversions agree across packages, invert `sample`, and round-trip
  v -> x1 -> v and v -> x0 -> v wherever they are defined.
"""

import math

import numpy as np
import pytest
import torch
from crosscheck_helpers import (
    RTOL,
    assert_close,
    coefficients64,
    make_pair,
    schedulers,
    seeds,
    shapes,
    singular_times,
    times,
    to_torch,
)
from hypothesis import assume, given
from hypothesis import strategies as st

import fm_numpy.paths as np_paths
import fm_torch.paths as th_paths

DTYPES = [np.float64, np.float32]


def _draw_pair(shape, seed, dtype):
    rng = np.random.default_rng(seed)
    x0 = rng.standard_normal(shape).astype(dtype)  # (B, ...)
    x1 = rng.standard_normal(shape).astype(dtype)  # (B, ...)
    return x0, x1


@pytest.mark.parametrize("dtype", DTYPES)
@given(sched=schedulers(), shape=shapes, seed=seeds, data=st.data())
def test_sample_agrees_across_packages(dtype, sched, shape, seed, data):
    t = data.draw(times(shape[0]), label="t")
    s_np, s_th = make_pair(*sched)
    x0, x1 = _draw_pair(shape, seed, dtype)
    with np.errstate(divide="ignore", invalid="ignore"):
        xt_np, ut_np = np_paths.AffinePath(s_np).sample(x0, x1, t)
    xt_th, ut_th = th_paths.AffinePath(s_th).sample(
        torch.from_numpy(x0), torch.from_numpy(x1), to_torch(t)
    )
    alpha_t, sigma_t, d_alpha_t, d_sigma_t = coefficients64(s_np, t, x0)
    # alpha_t, sigma_t lie in [0, 1] and carry an absolute error of a few eps (1 - t^n
    # cancels near t = 1); d_alpha_t, d_sigma_t are products and quotients of accurate
    # factors, so a relative error of a few ulps.
    scale_x = np.abs(x1) + np.abs(x0)
    scale_u = np.abs(d_alpha_t) * np.abs(x1) + np.abs(d_sigma_t) * np.abs(x0)
    assert_close(xt_np, xt_th, scale_x, RTOL[dtype], "xt")
    assert_close(ut_np, ut_th, scale_u, RTOL[dtype], "ut")


def _vp_start(beta_min, beta_max):
    """VP at t = 0: T = (beta_max + beta_min) / 2, alpha_0 = e^{-T/2}, sigma_0 = sqrt(1-e^{-T})."""
    T = 0.5 * (beta_max + beta_min)
    return math.exp(-0.5 * T), math.sqrt(-math.expm1(-T))


@pytest.mark.parametrize("package", ["numpy", "torch"])
@given(sched=schedulers(), shape=shapes, seed=seeds, per_sample=st.booleans())
def test_endpoints(package, sched, shape, seed, per_sample):
    name, kwargs = sched
    s_np, s_th = make_pair(name, kwargs)
    x0, x1 = _draw_pair(shape, seed, np.float64)
    scale = np.abs(x0) + np.abs(x1)
    expected = {0.0: x0, 1.0: x1}
    if name == "vp":
        alpha_0, sigma_0 = _vp_start(kwargs["beta_min"], kwargs["beta_max"])
        expected[0.0] = alpha_0 * x1 + sigma_0 * x0
    if name == "sigma_min_ot":
        expected[1.0] = x1 + kwargs["sigma_min"] * x0
    for t, x_expected in expected.items():
        t_in = np.full(shape[0], t) if per_sample else t
        if package == "numpy":
            with np.errstate(divide="ignore", invalid="ignore"):
                xt, _ = np_paths.AffinePath(s_np).sample(x0, x1, t_in)
        else:
            xt, _ = th_paths.AffinePath(s_th).sample(
                torch.from_numpy(x0), torch.from_numpy(x1), to_torch(t_in)
            )
        # cos(pi / 2) = 6e-17, not 0, in floating point: a few eps of slack.
        assert_close(xt, x_expected, scale, 1e-14, f"xt at t={t}")


# Fourth-order stencils: f'(t) ~ sum_k c_k f(t + k h) / (12 h); backward uses h < 0.
CENTRAL = ((-2, 1.0), (-1, -8.0), (1, 8.0), (2, -1.0))
FORWARD = ((0, -25.0), (1, 48.0), (2, -36.0), (3, 16.0), (4, -3.0))
SINGULAR_MARGIN = 1e-3


def _finite_difference(sample, t, h):
    """Fourth-order finite difference of xt(t) for per-sample t and step h, both (B,).

    Central stencil where [t - 2h, t + 2h] fits in [0, 1]; one-sided (into the interval)
    otherwise, so t = 0 and t = 1 are differentiated too.
    """
    central = (t >= 2 * h) & (t <= 1 - 2 * h)  # (B,)
    h_signed = np.where(central | (t < 0.5), h, -h)  # (B,)
    out = 0.0
    for stencil, mask in ((CENTRAL, central), (FORWARD, ~central)):
        for k, c in stencil:
            xt_k, _ = sample(np.clip(t + k * h_signed, 0.0, 1.0))
            w = np.where(mask, c, 0.0) / (12 * h_signed)  # (B,)
            out = out + w.reshape((-1,) + (1,) * (xt_k.ndim - 1)) * xt_k
    return out


@pytest.mark.parametrize("package", ["numpy", "torch"])
@given(sched=schedulers(), shape=shapes, seed=seeds, data=st.data())
def test_ut_is_time_derivative_of_xt(package, sched, shape, seed, data):
    """ut = d xt / dt by finite differences, in float64.

    Times within SINGULAR_MARGIN of a singular endpoint (LinearVP and VP at t = 1, where
    d_sigma_t is infinite; Polynomial at t = 0, where t^n is not smooth) are left out.
    The step h = min(1e-4, d / 100), d the distance to that endpoint, keeps the stencil's
    truncation error (h^4 / 5) |f^(5)| below ~1e-9 relative (VP with beta_max = 25 has
    |f^(5)| ~ beta^4 |f'|; t^n near 0 has |f^(5)| ~ |f'| / t^4) and its round-off
    (128 / 12) eps |f| / h below 3e-10 |f| (h >= 1e-5): 1e-7 of the scale is sound.
    """
    name, kwargs = sched
    s_np, s_th = make_pair(name, kwargs)
    x0, x1 = _draw_pair(shape, seed, np.float64)
    t = np.broadcast_to(data.draw(times(shape[0]), label="t"), (shape[0],)).copy()  # (B,)
    dist = np.full_like(t, np.inf)
    for t_s in singular_times(name):
        dist = np.minimum(dist, np.abs(t - t_s))
    keep = dist >= SINGULAR_MARGIN
    assume(keep.any())
    x0, x1, t, dist = x0[keep], x1[keep], t[keep], dist[keep]
    h = np.minimum(1e-4, dist / 100)  # (B,)

    if package == "numpy":
        path = np_paths.AffinePath(s_np)

        def sample(t_):
            return path.sample(x0, x1, t_)
    else:
        path = th_paths.AffinePath(s_th)

        def sample(t_):
            xt, ut = path.sample(torch.from_numpy(x0), torch.from_numpy(x1), torch.from_numpy(t_))
            return xt.numpy(), ut.numpy()

    _, ut = sample(t)
    ut_fd = _finite_difference(sample, t, h)
    alpha_t, sigma_t, d_alpha_t, d_sigma_t = coefficients64(s_np, t, x0)
    scale = (np.abs(alpha_t) + np.abs(d_alpha_t)) * np.abs(x1) + (
        np.abs(sigma_t) + np.abs(d_sigma_t)
    ) * np.abs(x0)
    assert_close(ut, ut_fd, scale, 1e-7, "ut vs finite difference")


# Conversions are tested where they are defined and well conditioned: alpha_t and sigma_t
# at least MARGIN and |det| = |d_alpha_t sigma_t - d_sigma_t alpha_t| at least MARGIN times
# |d_alpha_t sigma_t| + |d_sigma_t alpha_t| (at most 1 / MARGIN cancellation). Each
# conversion then loses at most ~1 / MARGIN ulps against the scale of its terms.
MARGIN = {np.float64: 1e-3, np.float32: 1e-2}
RTOL_CONVERT = {np.float64: 1e-10, np.float32: 1e-4}


def _well_conditioned(coeffs, margin):
    alpha_t, sigma_t, d_alpha_t, d_sigma_t = (np.ravel(c) for c in coeffs)
    with np.errstate(invalid="ignore"):
        det = d_alpha_t * sigma_t - d_sigma_t * alpha_t
        return (
            np.isfinite(d_alpha_t) & np.isfinite(d_sigma_t)
            & (alpha_t >= margin) & (sigma_t >= margin)
            & (np.abs(det) >= margin * (np.abs(d_alpha_t * sigma_t) + np.abs(d_sigma_t * alpha_t)))
        )


@pytest.mark.parametrize("dtype", DTYPES)
@given(sched=schedulers(), shape=shapes, seed=seeds, data=st.data())
def test_conversions_agree_invert_sample_and_round_trip(dtype, sched, shape, seed, data):
    s_np, s_th = make_pair(*sched)
    t = data.draw(times(shape[0]), label="t")
    x0, x1 = _draw_pair(shape, seed, dtype)
    v = np.random.default_rng(seed + 1).standard_normal(shape).astype(dtype)  # (B, ...)
    ok = _well_conditioned(coefficients64(s_np, t, np.zeros(shape[:1])), MARGIN[dtype])
    if np.ndim(t) == 0:
        assume(ok.all())
    else:
        assume(ok.any())
        x0, x1, v, t = x0[ok], x1[ok], v[ok], t[ok]
    rtol = RTOL_CONVERT[dtype]
    alpha_t, sigma_t, d_alpha_t, d_sigma_t = coefficients64(s_np, t, x0)
    det = d_alpha_t * sigma_t - d_sigma_t * alpha_t
    a0, a1, ax = np.abs(x0), np.abs(x1), np.abs(v)

    path_np, path_th = np_paths.AffinePath(s_np), th_paths.AffinePath(s_th)
    xt, ut = path_np.sample(x0, x1, t)
    axt = np.abs(xt)
    t_th = to_torch(t)
    xt_th = torch.from_numpy(xt)

    def both(method, first, second):
        out_np = getattr(path_np, method)(xt, first, t)
        out_th = getattr(path_th, method)(xt_th, torch.from_numpy(second), t_th)
        return out_np, out_th

    # scales: sums of |terms| of each formula (docs/crosscheck.md)
    scale_x1 = (np.abs(sigma_t) * ax + np.abs(d_sigma_t) * axt) / np.abs(det)
    scale_x0 = (np.abs(alpha_t) * ax + np.abs(d_alpha_t) * axt) / np.abs(det)
    x1_hat, x1_hat_th = both("x1_from_velocity", v, v)
    x0_hat, x0_hat_th = both("x0_from_velocity", v, v)
    assert_close(x1_hat, x1_hat_th, scale_x1, rtol, "x1_from_velocity across packages")
    assert_close(x0_hat, x0_hat_th, scale_x0, rtol, "x0_from_velocity across packages")

    scale_v1 = np.abs(d_sigma_t / sigma_t) * axt + np.abs(det / sigma_t) * np.abs(x1_hat)
    scale_v0 = np.abs(d_alpha_t / alpha_t) * axt + np.abs(det / alpha_t) * np.abs(x0_hat)
    v1, v1_th = both("velocity_from_x1", x1_hat, x1_hat)
    v0, v0_th = both("velocity_from_x0", x0_hat, x0_hat)
    assert_close(v1, v1_th, scale_v1, rtol, "velocity_from_x1 across packages")
    assert_close(v0, v0_th, scale_v0, rtol, "velocity_from_x0 across packages")
    # round trips v -> x1 -> v and v -> x0 -> v (x1_hat carries its own error into v)
    assert_close(v1, v, scale_v1 + ax, rtol, "v -> x1 -> v")
    assert_close(v0, v, scale_v0 + ax, rtol, "v -> x0 -> v")

    # the conversions invert sample: (xt, ut) -> x1, x0 and (xt, x1 or x0) -> ut
    scale_xt = np.abs(alpha_t) * a1 + np.abs(sigma_t) * a0
    scale_ut = np.abs(d_alpha_t) * a1 + np.abs(d_sigma_t) * a0
    scale_sample_x = (np.abs(sigma_t) * scale_ut + np.abs(d_sigma_t) * scale_xt) / np.abs(det)
    scale_sample_x0 = (np.abs(alpha_t) * scale_ut + np.abs(d_alpha_t) * scale_xt) / np.abs(det)
    assert_close(path_np.x1_from_velocity(xt, ut, t), x1, scale_sample_x, rtol, "x1 from ut")
    assert_close(path_np.x0_from_velocity(xt, ut, t), x0, scale_sample_x0, rtol, "x0 from ut")
    scale_u1 = np.abs(d_sigma_t / sigma_t) * scale_xt + np.abs(det / sigma_t) * a1
    scale_u0 = np.abs(d_alpha_t / alpha_t) * scale_xt + np.abs(det / alpha_t) * a0
    assert_close(path_np.velocity_from_x1(xt, x1, t), ut, scale_u1, rtol, "ut from x1")
    assert_close(path_np.velocity_from_x0(xt, x0, t), ut, scale_u0, rtol, "ut from x0")


@pytest.mark.parametrize("dtype", DTYPES)
@given(
    beta_min=st.floats(0.01, 2.0),
    beta_max=st.floats(2.0, 25.0),
    gap=st.one_of(st.floats(6e-8, 1e-2), st.sampled_from([6e-8, 1e-7, 1e-6])),
)
def test_vp_sigma_near_data_end(dtype, beta_min, beta_max, gap):
    """Near t = 1, VP's sigma_t = sqrt(1 - e^{-T}) with T -> 0: both packages keep it to
    ~100 eps relative (computing 1 - exp(-T) directly lost all digits in float32: numpy
    and torch disagreed by 32% at t = 0.999999, before sigma_t used -expm1(-T))."""
    t = np.asarray(1 - gap, dtype=dtype)
    s_np, s_th = make_pair("vp", {"beta_min": beta_min, "beta_max": beta_max})
    _, sigma_np, _, d_sigma_np = s_np(t)
    _, sigma_th, _, d_sigma_th = s_th(torch.from_numpy(t))
    t64 = float(t)  # the exact time both packages were given
    T = 0.5 * (1 - t64) ** 2 * (beta_max - beta_min) + (1 - t64) * beta_min
    sigma = math.sqrt(-math.expm1(-T))
    d_sigma = 0.5 * (-(1 - t64) * (beta_max - beta_min) - beta_min) * math.exp(-T) / sigma
    rtol = 100 * np.finfo(dtype).eps
    for got, want, what in [
        (sigma_np, sigma, "numpy sigma_t"), (sigma_th, sigma, "torch sigma_t"),
        (d_sigma_np, d_sigma, "numpy d_sigma_t"), (d_sigma_th, d_sigma, "torch d_sigma_t"),
    ]:
        assert abs(float(got) - want) <= rtol * abs(want), f"{what}: {float(got)!r} != {want!r}"
