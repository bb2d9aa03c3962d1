"""check_velocity: a user's trained velocity v(x, t) against the closed-form marginal field.

Data set "8gaussians" (eight Gaussians of std 0.1 on a circle of radius 2, fm_numpy.data's
toy set) on the CondOT path: the ideal model is fm_numpy.analytic.eight_gaussians_mixture,
u_t(x) = E[x1 - x0 | xt = x]. At t = 0.05, 0.25, 0.5, 0.75, 0.95, 256 points of p_t each;
per t the relative error |v - u|^2 / |u|^2 (means over the points). A trained network is
approximate, so the tolerance is loose (default 0.1; the oracle itself scores 0). The
diagnoses compare the same error for -u (sign-flipped) and u(x, 1 - t) (reversed time).
"""

import numpy as np

from fm_numpy.analytic import eight_gaussians_mixture

from .report import Report, UserError, call_user, load_reference

__all__ = ["check_velocity", "reference_arrays", "TIMES", "DATASETS"]

TIMES = (0.05, 0.25, 0.5, 0.75, 0.95)
DATASETS = ("8gaussians",)


def reference_arrays():
    field = eight_gaussians_mixture()
    rng = np.random.default_rng(153)
    out = {"t": np.array(TIMES)}
    for k, t in enumerate(TIMES):
        x1, _ = field.sample(256, rng)
        x0 = rng.standard_normal(x1.shape)
        x = t * x1 + (1 - t) * x0  # (N, 2), a draw of p_t
        out[f"x_{k}"] = x
        out[f"u_{k}"] = field(x, t)
        out[f"u_reversed_{k}"] = field(x, 1 - t)
    return out


def _rel(v, u):
    return float(np.mean(np.sum((v - u) ** 2, axis=1)) / np.mean(np.sum(u**2, axis=1)))


def check_velocity(v, data="8gaussians", tol=0.1):
    """Check a trained `v(x, t) -> (N, 2)` (t a Python float) on the kit's data set."""
    if data not in DATASETS:
        raise ValueError(f"unknown data set {data!r}; choose one of {', '.join(DATASETS)}")
    report = Report("velocity", f"{getattr(v, '__name__', type(v).__name__)} on {data}")
    ref = load_reference("velocity")
    errs, flipped, reversed_ = [], [], []
    for k, t in enumerate(ref["t"]):
        x, u = ref[f"x_{k}"], ref[f"u_{k}"]
        try:
            vx = np.asarray(call_user(v, x.copy(), float(t)), dtype=np.float64).reshape(u.shape)
        except (UserError, ValueError) as e:
            report.fail("raises", f"v raised {getattr(e, 'message', e)} at t = {t:g}")
            return report
        errs.append(_rel(vx, u))
        flipped.append(_rel(vx, -u))
        reversed_.append(_rel(vx, ref[f"u_reversed_{k}"]))
        report.row(f"|v - u|^2 / |u|^2 at t = {t:g}", f"{errs[-1]:.3g}", f"{tol:g}",
                   errs[-1] <= tol)
    worst = int(np.argmax(errs))
    if max(errs) <= tol:
        return report
    if max(flipped) <= tol or np.mean(flipped) < 0.5 * np.mean(errs):
        report.fail("sign-flipped", f"v matches -u (relative error {np.mean(flipped):.3g} "
                    f"against -u, {np.mean(errs):.3g} against u): the model was trained on "
                    "x0 - x1; fix: train on ut = x1 - x0 (noise t = 0 -> data t = 1)")
    elif max(reversed_) <= tol or np.mean(reversed_) < 0.5 * np.mean(errs):
        report.fail("reversed-time", f"v(x, t) matches u(x, 1 - t) (relative error "
                    f"{np.mean(reversed_):.3g}): the model uses t = 0 for data; fix: call it "
                    "with 1 - t, or retrain with t = 0 noise")
    else:
        report.fail("inaccurate", f"relative error {errs[worst]:.3g} at t = "
                    f"{ref['t'][worst]:g} (tolerance {tol:g}): train longer, or check the "
                    "data scaling (8gaussians: radius 2, std 0.1)")
    return report
