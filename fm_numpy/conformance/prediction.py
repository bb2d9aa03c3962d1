"""check_prediction: x1 (or x0) recovered from a velocity, against the closed form.

    convert(xt, v, t) -> x1_hat   (target="x1")   or   -> x0_hat   (target="x0")

With xt = alpha_t x1 + sigma_t x0 and v = d_alpha_t x1 + d_sigma_t x0 (the true conditional
velocity), the two equations solve to

    x1 = (d_sigma_t xt - sigma_t v) / (d_sigma_t alpha_t - sigma_t d_alpha_t)
    x0 = (alpha_t v - d_alpha_t xt) / (d_sigma_t alpha_t - sigma_t d_alpha_t)

(fm_numpy/paths.py::AffinePath.x1_from_velocity), so the answer must be the x1 (x0) the kit
built xt from. On a mismatch the answer is fitted per sample as p xt + q v and (p, q)
compared with the formula at t, at 1 - t (reversed time), with -v, and with the other end.
Tolerance 1e-10 relative (float32 answers: 1e-5, and the report says so).
"""

import numpy as np

from fm_numpy.paths import make_scheduler

from .report import Report, UserError, call_user, rel_err

__all__ = ["check_prediction"]


def _pq(sched, t, target):
    a, s, da, ds = (np.broadcast_to(np.asarray(c, dtype=np.float64), t.shape) for c in sched(t))
    det = ds * a - s * da
    return (ds / det, -s / det) if target == "x1" else (-da / det, a / det)


def check_prediction(convert, target="x1", scheduler="condot", **scheduler_args):
    """Check `convert(xt, v, t) -> x1_hat` (or x0_hat) for the scheduler (module docstring)."""
    if target not in ("x1", "x0"):
        raise ValueError(f"target must be x1 or x0, got {target!r}")
    sched = make_scheduler(scheduler, **scheduler_args)
    report = Report("prediction", f"{getattr(convert, '__name__', repr(convert))}: {target} "
                    f"from v, {sched!r}")
    rng = np.random.default_rng(21)
    x0 = rng.standard_normal((12, 12))  # (B, D)
    x1 = 2.0 + 0.5 * rng.standard_normal((12, 12))
    t = np.linspace(0.05, 0.95, 12)  # (B,)
    a, s, da, ds = (np.asarray(c, dtype=np.float64)[:, None] for c in sched(t))
    xt, v = a * x1 + s * x0, da * x1 + ds * x0  # (B, D) each
    want = x1 if target == "x1" else x0
    try:
        raw = call_user(convert, xt.copy(), v.copy(), t.copy())
    except UserError as e:
        report.fail("raises", f"convert raised {e.message}")
        return report
    f32 = np.asarray(raw).dtype == np.float32
    got = np.asarray(raw, dtype=np.float64)
    tol = 1e-5 if f32 else 1e-10
    if f32:
        report.note("float32 answer: judged at float32 precision (tolerance 1e-5)")
    e = rel_err(got, want)
    if report.row(f"{target} from (xt, v)", f"{e:.1e}", f"{tol:g}", e <= tol):
        return report
    if got.shape != want.shape:
        report.fail("shape", f"returned shape {got.shape}, expected {want.shape}")
        return report
    pq = np.array([np.linalg.lstsq(np.stack([xt[b], v[b]], 1), got[b], rcond=None)[0]
                   for b in range(12)])  # (B, 2)
    other = "x0" if target == "x1" else "x1"
    cands = [("reversed-time", _pq(sched, 1 - t, target), "the formula at 1 - t (t = 0 is "
              "data in your code)"),
             ("sign-flipped", tuple(c * m for c, m in zip(_pq(sched, t, target), (1, -1),
                                                         strict=True)), "the formula with -v"),
             ("wrong-end", _pq(sched, t, other), f"the formula for {other}")]
    for code, (p, q), text in cands:
        if np.max(np.abs(pq[:, 0] - p) + np.abs(pq[:, 1] - q)) <= 1e-6:
            report.fail(code, f"your {target} is {text}; fix: {target} = "
                        + ("(d_sigma_t xt - sigma_t v)" if target == "x1" else
                           "(alpha_t v - d_alpha_t xt)")
                        + " / (d_sigma_t alpha_t - sigma_t d_alpha_t)")
            return report
    p, q = _pq(sched, t, target)
    k = 6
    report.fail("wrong-formula", f"{target} = {pq[k, 0]:.4g} xt + {pq[k, 1]:.4g} v at t = "
                f"{t[k]:.3g}, the closed form is {p[k]:.4g} xt + {q[k]:.4g} v")
    return report
