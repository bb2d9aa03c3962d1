"""check_path: a user's `sample(x0, x1, t) -> (xt, ut)` against the closed-form path.

Truth: xt = alpha_t x1 + sigma_t x0 and ut = d_alpha_t x1 + d_sigma_t x0 with the
scheduler of fm_numpy/paths.py. The probe is a square batch (B = D = 12, so a t of
shape (B,) broadcast along the data axis runs silently instead of raising) with one time
per sample, t in [0.001, 0.999]. On a mismatch the kit fits, per sample, xt and ut onto
(x1, x0) by least squares; the four measured coefficients (a, s, da, ds) name the bug:
(A, S, -dA, -dS) a flipped target, (S, A, dS, dA) swapped x0/x1, (A, S)(1 - t) reversed
time, another scheduler's coefficients (all six are tried; sigma_min, n and the VP betas
are fitted), the same coefficients for every sample a scalar-t mix-up, a poor fit a path
that adds its own noise, ignores x0 or re-pairs the batch.

Tolerance: 1e-10 relative (unit scale). Float64 evaluations of these formulas are
accurate to a few 1e-16 at these t; anything computed in float32 is off by ~1e-7.
"""

import numpy as np

from fm_numpy.paths import (
    SCHEDULERS,
    VP,
    CondOT,
    Cosine,
    LinearVP,
    Polynomial,
    SigmaMinOT,
    make_scheduler,
)

from .report import Report, UserError, call_user, load_reference, rel_err

__all__ = ["check_path", "reference_arrays", "TOL", "SCALAR_T"]

TOL = 1e-10
MATCH = 1e-7  # coefficients equal to this (relative) identify a candidate
SCALAR_T = 0.3


def reference_arrays():
    """The probe (x0, x1, t); per scheduler (default arguments) xt, ut and its coefficients."""
    rng = np.random.default_rng(15)
    B = D = 12
    x0 = rng.standard_normal((B, D))  # (B, D)
    x1 = 2.0 + 0.5 * rng.standard_normal((B, D))  # (B, D); mean 2, so x0 and x1 differ in law
    t = np.array([0.001, 0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85, 0.95, 0.999])
    out = {"x0": x0, "x1": x1, "t": t}
    for name, cls in SCHEDULERS.items():
        coef = np.stack(cls()(t), axis=1)  # (B, 4): alpha_t, sigma_t, d_alpha_t, d_sigma_t
        out[f"{name}_coefficients"] = coef
        out[f"{name}_xt"] = coef[:, :1] * x1 + coef[:, 1:2] * x0
        out[f"{name}_ut"] = coef[:, 2:3] * x1 + coef[:, 3:4] * x0
    return out


def _coef(scheduler, t):
    return np.stack([np.broadcast_to(np.asarray(c, dtype=np.float64), t.shape)
                     for c in scheduler(t)], axis=1)  # (B, 4)


def _fit(x0, x1, xt, ut):
    """Per-sample least squares xt ~ a x1 + s x0, ut ~ da x1 + ds x0: (B, 4) and residual."""
    coef, resid = [], 0.0
    for b in range(x0.shape[0]):
        M = np.stack([x1[b], x0[b]], axis=1)  # (D, 2)
        rhs = np.stack([xt[b], ut[b]], axis=1)  # (D, 2)
        c = np.linalg.lstsq(M, rhs, rcond=None)[0]  # (2, 2)
        resid = max(resid, rel_err(M @ c, rhs))
        coef.append([c[0, 0], c[1, 0], c[0, 1], c[1, 1]])
    return np.array(coef), resid


def _close(a, b, tol=MATCH):
    return np.all(np.isfinite(a)) and rel_err(a, b) <= tol


def _fitted_schedulers(t, m):
    """Schedulers whose parameters are fitted to the measured coefficients m (B, 4)."""
    a, s = m[:, 0], m[:, 1]
    inner = (t > 0) & (t < 1)
    out = [CondOT(), Cosine(), LinearVP()]
    with np.errstate(all="ignore"):
        sm = np.median(1 - (1 - s[inner]) / t[inner])
        if np.isfinite(sm) and 0 <= sm < 1:
            out.append(SigmaMinOT(float(sm)))
        n = np.median(np.log(a[inner]) / np.log(t[inner]))
        if np.isfinite(n) and n > 0:
            out.append(Polynomial(float(n)))
        u = 1 - t
        T = -2 * np.log(a)
        if np.all(np.isfinite(T)):
            beta = np.linalg.lstsq(np.stack([u - 0.5 * u**2, 0.5 * u**2], axis=1), T,
                                   rcond=None)[0]
            if 0 <= beta[0] <= beta[1]:
                out.append(VP(float(beta[0]), float(beta[1])))
    return out


def _key(scheduler):
    """The SCHEDULERS name of a scheduler object (and its arguments)."""
    name = next(k for k, cls in SCHEDULERS.items() if isinstance(scheduler, cls))
    args = {k: v for k, v in vars(scheduler).items()}
    return repr(name) + "".join(f", {k}={v:.4g}" for k, v in args.items())


def _fmt(c):
    return f"{c:.4g}"


def _diagnose(report, sample, x0, x1, t, xt, ut, sched):
    B = x0.shape[0]
    ref = _coef(sched, t)
    m, resid = _fit(x0, x1, xt, ut)
    k = int(np.argmin(np.abs(t - 0.55)))  # the sample quoted in messages
    want = (f"expected xt = {_fmt(ref[k, 0])} x1 + {_fmt(ref[k, 1])} x0, "
            f"ut = {_fmt(ref[k, 2])} x1 + {_fmt(ref[k, 3])} x0 at t = {t[k]:g}")
    got = (f"got xt = {_fmt(m[k, 0])} x1 + {_fmt(m[k, 1])} x0, "
           f"ut = {_fmt(m[k, 2])} x1 + {_fmt(m[k, 3])} x0")
    report.row("xt, ut affine in (x1, x0) per sample", f"{resid:.1e}", "1e-08", resid <= 1e-8)
    if resid > 1e-8:
        _diagnose_not_affine(report, sample, x0, x1, t, xt, ut, sched, ref, m)
        return
    # the bug classes, as coefficient patterns (B, 4)
    rev = _coef(sched, 1 - t)
    patterns = [
        ("sign-flipped", np.concatenate([ref[:, :2], -ref[:, 2:]], 1),
         "ut has the wrong sign (you return -ut); fix: ut = d_alpha_t x1 + d_sigma_t x0, "
         "pointing from noise (t = 0) to data (t = 1)"),
        ("swapped-x0-x1", ref[:, [1, 0, 3, 2]],
         "x0 and x1 are swapped (the path runs from data to noise); fix: x0 is the noise "
         "(t = 0), x1 the data (t = 1): xt = alpha_t x1 + sigma_t x0"),
        ("reversed-time", np.concatenate([rev[:, :2], -rev[:, 2:]], 1),
         "time is reversed (t = 0 is data in your code); fix: use t -> 1 - t, t = 0 noise, "
         "t = 1 data, and ut = d xt / dt in that time"),
        ("reversed-time", rev,
         "time is reversed (your path is the expected one at 1 - t); fix: evaluate the "
         "scheduler at t, with t = 0 noise and t = 1 data"),
        ("per-sample-t", np.repeat(ref[:1], B, 0),
         f"every sample got the first time t[0] = {t[0]:g} (a scalar-vs-per-sample t mix-up); "
         "fix: use t[b] for sample b, t of shape (B,) broadcast as (B, 1, ...)"),
        ("wrong-target", np.concatenate([ref[:, :2], np.tile([1.0, 0.0], (B, 1))], 1),
         "the target is x1 (data prediction), not the velocity; fix: ut = d_alpha_t x1 + "
         "d_sigma_t x0"),
        ("wrong-target", np.concatenate([ref[:, :2], np.tile([0.0, 1.0], (B, 1))], 1),
         "the target is x0 (noise prediction), not the velocity; fix: ut = d_alpha_t x1 + "
         "d_sigma_t x0"),
        ("wrong-target", np.concatenate([ref[:, :2], np.tile([1.0, 1.0], (B, 1))], 1),
         "the target is x1 + x0 (the sign of the x0 term is wrong); fix: ut = d_alpha_t x1 + "
         "d_sigma_t x0"),
    ]
    for code, pattern, text in patterns:
        if _close(m, pattern):
            both = code == "swapped-x0-x1" and _close(pattern, np.concatenate(
                [rev[:, :2], -rev[:, 2:]], 1))
            extra = " (for this scheduler swapping x0/x1 and reversing time are the same bug)"
            report.fail(code, f"{text}{extra if both else ''}; {got}, {want}")
            return
    err = rel_err(m, ref)
    if err < 1e-5:
        report.fail("precision", f"the coefficients are off by {err:.1e} relative (float32 "
                    "rounding is ~6e-8): something is computed in float32 (t, a constant, "
                    "a tensor's default dtype); fix: keep float64 end to end")
        return
    for other in _fitted_schedulers(t, m):
        if repr(other) != repr(sched) and _close(m, _coef(other, t)):
            report.fail("wrong-scheduler", f"your path is {other!r}, not {sched!r} "
                        f"(all six schedulers and sigma_min tried); fix: use {sched!r} or "
                        f"check with scheduler={_key(other)}; {got}")
            return
    if _close(m[:, :2], ref[:, :2]):
        report.fail("wrong-target", f"xt is right but ut is not d xt/dt; {got}, {want}; "
                    "fix: ut = d_alpha_t x1 + d_sigma_t x0")
        return
    report.fail("mismatch", f"matches no known bug pattern; {got}, {want}")


def _repaired(x0, x1, xt, ut, ref):
    """How many rows are the exact path point of another pair (i, j), or None if not all are."""
    B = x0.shape[0]
    A, S, dA, dS = (ref[:, i] for i in range(4))
    # xt_ij[b, i, j] = A_b x1[j] + S_b x0[i]: (B, B, B, D)
    xt_ij = (A[:, None, None, None] * x1[None, None, :, :]
             + S[:, None, None, None] * x0[None, :, None, :])
    d = np.max(np.abs(xt_ij - xt[:, None, None, :]), axis=3)  # (B, B, B)
    i, j = np.unravel_index(np.argmin(d.reshape(B, -1), axis=1), (B, B))
    ut_ij = dA[:, None] * x1[j] + dS[:, None] * x0[i]
    if np.max(d[np.arange(B), i, j]) < 1e-8 and rel_err(ut_ij, ut) < 1e-8:
        return int(np.sum((i != np.arange(B)) | (j != np.arange(B))))
    return None


def _diagnose_not_affine(report, sample, x0, x1, t, xt, ut, sched, ref, m):
    B = x0.shape[0]
    A, S, dA, dS = (ref[:, i] for i in range(4))
    # re-paired batch (OT couplings): row b is the path point of some other pair (i, j)
    moved = _repaired(x0, x1, xt, ut, ref)
    if moved is not None:
        report.repaired = True
        report.row("path points of a re-paired batch", f"{moved}/{B} rows re-paired", "-", True)
        report.note(f"the batch is re-paired ({moved} of {B} rows are the path point of another "
                    f"(x0, x1) pair, as an OT or minibatch coupling does); each pair follows "
                    f"{sched!r} exactly")
        return
    # t of shape (B,) broadcast along the data axis (possible only because B == D here)
    xt_bd, ut_bd = A[None] * x1 + S[None] * x0, dA[None] * x1 + dS[None] * x0
    if rel_err(xt_bd, xt) < 1e-8 and rel_err(ut_bd, ut) < 1e-8:
        report.fail("per-sample-t", "t of shape (B,) is broadcast along the data axis "
                    "(t * x with x of shape (B, D) multiplies column d by t[d]); fix: "
                    "reshape t to (B, 1, ...) before multiplying")
        return
    try:
        xt2, _ = call_user(sample, x0.copy(), x1.copy(), t.copy())
        stochastic = rel_err(np.asarray(xt2, dtype=np.float64), xt) > 1e-12
    except UserError:
        stochastic = False
    k = int(np.argmin(np.abs(t - 0.55)))
    if np.median(np.abs(m[:, 1])) < 0.2 * np.median(np.abs(S)):
        report.fail("ignores-x0", f"xt does not depend on the x0 you pass (fitted x0 weight "
                    f"{m[k, 1]:.3g}, expected {S[k]:.3g} at t = {t[k]:g}); it draws its own "
                    "noise, which is right only for a standard normal source with an "
                    "independent coupling; fix: xt = alpha_t x1 + sigma_t x0 with the given x0")
        return
    extra = xt - (A[:, None] * x1 + S[:, None] * x0)  # what is neither x1 nor x0
    if rel_err(m[:, :2], ref[:, :2]) < 0.2:
        how = "; it changes between two calls" if stochastic else ""
        report.fail("noise", f"xt = alpha_t x1 + sigma_t x0 + an extra term of rms "
                    f"{np.sqrt(np.mean(extra**2)):.3g} that is neither x0 nor x1{how}: the path "
                    "adds its own noise (xt = mu_t + sigma eps, as torchcfm does with "
                    "sigma > 0); fix: sigma = 0 for the deterministic path")
        return
    resid = rel_err(xt, ref[:, :1] * x1 + ref[:, 1:2] * x0)
    report.fail("mismatch", "xt or ut is not a per-sample combination of x1 and x0 "
                f"(largest relative residual {resid:.2g})")


def _pair(result):
    """(xt, ut) as arrays; UserError if sample did not return two of them."""
    try:
        xt, ut = result
        return np.asarray(xt), np.asarray(ut)
    except (TypeError, ValueError) as e:
        raise UserError(TypeError(f"sample must return (xt, ut), got {type(result).__name__}"
                                  f" ({e})")) from e


def check_path(sample, scheduler="condot", **scheduler_args):
    """Check `sample(x0, x1, t) -> (xt, ut)` (NumPy arrays) against the closed form.

    scheduler: a name of fm_numpy.paths.SCHEDULERS (condot, sigma_min_ot, cosine, linear_vp,
    vp, polynomial) or a scheduler object; scheduler_args go to its constructor.
    """
    sched = make_scheduler(scheduler, **scheduler_args) if isinstance(scheduler, str) else scheduler
    report = Report("path", f"{getattr(sample, '__name__', repr(sample))} against {sched!r}")
    report.repaired = False
    ref = load_reference("path")
    x0, x1, t = ref["x0"], ref["x1"], ref["t"]
    B = x0.shape[0]
    coef = _coef(sched, t)
    xt_ref = coef[:, :1] * x1 + coef[:, 1:2] * x0
    ut_ref = coef[:, 2:3] * x1 + coef[:, 3:4] * x0
    try:
        result = call_user(sample, x0.copy(), x1.copy(), t.copy())
    except UserError as e:
        report.row("sample with t of shape (B,)", "raises", "-", False)
        try:
            call_user(sample, x0.copy(), x1.copy(), SCALAR_T)
        except UserError:
            report.fail("raises", f"sample raised {e.message}, with a per-sample t and with a "
                        "scalar one")
            return report
        report.fail("per-sample-t", f"raises {e.message} when t has one time per sample, shape "
                    f"({B},), but not for a scalar t; fix: reshape t to (B, 1, ...) before "
                    "multiplying")
        return report
    try:
        xt, ut = _pair(result)
    except UserError as e:
        report.fail("shape", e.message.split(": ", 1)[-1])
        return report
    if xt.shape != x0.shape or ut.shape != x0.shape:
        report.fail("shape", f"returned shapes {xt.shape}, {ut.shape}, expected {x0.shape} each")
        return report
    if xt.dtype != np.float64 or ut.dtype != np.float64:
        report.fail("precision", f"float64 input came back as {xt.dtype}/{ut.dtype}; fix: keep "
                    "the input dtype (no float32 casts or float32 default tensors)")
    xt, ut = xt.astype(np.float64), ut.astype(np.float64)
    e_xt, e_ut = rel_err(xt, xt_ref), rel_err(ut, ut_ref)
    ok_xt = report.row("xt = alpha_t x1 + sigma_t x0", f"{e_xt:.1e}", f"{TOL:.0e}", e_xt <= TOL)
    ok_ut = report.row("ut = d_alpha_t x1 + d_sigma_t x0", f"{e_ut:.1e}", f"{TOL:.0e}", e_ut <= TOL)
    if not (ok_xt and ok_ut):
        _diagnose(report, sample, x0, x1, t, xt, ut, sched)
    # a scalar t (a Python float) must mean the same time for every sample
    c = _coef(sched, np.full(B, SCALAR_T))
    try:
        xs, us = (a.astype(np.float64)
                  for a in _pair(call_user(sample, x0.copy(), x1.copy(), SCALAR_T)))
        e = max(rel_err(xs, c[:, :1] * x1 + c[:, 1:2] * x0), rel_err(us, c[:, 2:3] * x1
                                                                      + c[:, 3:4] * x0))
        if report.repaired and _repaired(x0, x1, xs, us, c) is not None:
            e = 0.0  # a re-pairing sampler: each row is an exact path point of some pair
        ok = report.row(f"scalar t = {SCALAR_T}", f"{e:.1e}", f"{TOL:.0e}", e <= TOL)
        if not ok and not report.findings:
            report.fail("scalar-t", f"a scalar t = {SCALAR_T} gives a different path than "
                        f"t = {SCALAR_T} for every sample (error {e:.2g}); fix: broadcast a "
                        "scalar t to every sample")
    except UserError as e:
        report.row(f"scalar t = {SCALAR_T}", "raises", "-", False)
        report.fail("scalar-t", f"raises {e.message} for a scalar t; fix: accept a Python float "
                    "or 0-d array and broadcast it (t = np.broadcast_to(t, (B,)))")
    return report
