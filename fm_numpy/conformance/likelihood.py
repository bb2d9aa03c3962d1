"""check_likelihood: a user's `log_likelihood(v, x1) -> (B,)` against exact log-densities.

The kit's field v is the closed-form marginal velocity (fm_numpy/analytic.py) of the path
from N(0, I) to a Gaussian mixture, so the flow's p_1 is that mixture and log p_1(x1) is
known exactly (`GaussianMixtureField.log_prob`). The field is handed over as a plain
callable v(x, t) (no divergence method), so the user's code computes the divergence
itself. Reference (float64, in likelihood.npz): 256 points of a 2-D mixture, their exact
log p_1, the noise x0 they map to and the divergence integral delta = int_1^0 div v dt
(DOP853, rtol 1e-11), what a solver run in the wrong direction would give, and an
image-shaped probe (B, 1, 2, 2) of a 4-D mixture.

Diagnoses: the negative log-likelihood returned; the wrong direction (t = 0 -> 1 from x1);
the fitted weight k of the divergence term in user = log N(x0) + k delta: k = -1 a flipped
sign, k = P >= 2 probes summed instead of averaged; failure on image-shaped input.
Tolerances: exact divergence, max |error| <= 0.02 nats (a 50-step RK4 on this smooth field
is within 1e-5; 0.02 leaves room for coarser solvers); Hutchinson, |mean error| <= 4
standard errors + 0.02 (an unbiased estimate is noisy point by point).
"""

import math

import numpy as np
from scipy.integrate import solve_ivp

from fm_numpy.analytic import GaussianMixtureField
from fm_numpy.likelihood import standard_normal_log_prob

from .report import Report, UserError, call_user, load_reference

__all__ = ["check_likelihood", "reference_arrays", "MixtureVelocity", "mixture", "image_mixture"]

TOL_EXACT = 0.02


def mixture():
    """The 2-D mixture of the probe: two components, std 0.4."""
    return GaussianMixtureField(np.array([[-1.0, 0.5], [1.0, -0.5]]), np.full((2, 2), 0.16),
                                np.array([0.4, 0.6]))


def image_mixture():
    """A 4-D mixture, seen as 1 x 2 x 2 images."""
    means = np.array([[0.5, -0.5, 0.5, -0.5], [-0.5, 0.5, 0.0, 0.5]])
    return GaussianMixtureField(means, np.full((2, 4), 0.25))


class MixtureVelocity:
    """v(x, t) of a GaussianMixtureField, with no divergence method (x of shape (B, ...))."""

    def __init__(self, field):
        self.mixture = field

    def __call__(self, x, t):
        return self.mixture(x, t)


def _augmented(field, D, sign=1.0):
    def f(t, s):
        x = s.reshape(-1, D + 1)[:, :D]
        v, div = field.divergence(x, t)
        return np.concatenate([v, sign * div[:, None]], axis=1).ravel()
    return f


def _integrate(field, x, t0, t1):
    """(x(t1), int_{t0}^{t1} div v dt) from x at t0, DOP853 at rtol 1e-11."""
    B, D = x.shape
    s0 = np.concatenate([x, np.zeros((B, 1))], axis=1).ravel()
    sol = solve_ivp(_augmented(field, D), (t0, t1), s0, method="DOP853", rtol=1e-11,
                    atol=1e-12)
    s1 = sol.y[:, -1].reshape(B, D + 1)
    return s1[:, :D], s1[:, D]


def reference_arrays():
    field = mixture()
    x1, _ = field.sample(256, np.random.default_rng(150))  # (B, 2)
    log_p1 = field.log_prob(x1)
    x0, delta = _integrate(field, x1, 1.0, 0.0)  # back to the noise; delta = int_1^0 div
    y, delta_f = _integrate(field, x1, 0.0, 1.0)  # the wrong way: from x1 at t = 0 to 1
    img = image_mixture()
    x1_img, _ = img.sample(32, np.random.default_rng(151))
    return {"x1": x1, "log_p1": log_p1, "x0": x0, "delta": delta,
            "wrong_direction_plus": standard_normal_log_prob(y) + delta_f,
            "wrong_direction_minus": standard_normal_log_prob(y) - delta_f,
            "x1_image": x1_img.reshape(32, 1, 2, 2), "log_p1_image": img.log_prob(x1_img)}


def check_likelihood(log_likelihood, divergence="exact"):
    """Check `log_likelihood(v, x1) -> log p_1(x1)` of shape (B,) (NumPy arrays).

    v(x, t) is the kit's field (no divergence method); divergence: "exact" or "hutchinson"
    (only the tolerance differs).
    """
    if divergence not in ("exact", "hutchinson"):
        raise ValueError(f"divergence must be exact or hutchinson, got {divergence!r}")
    report = Report("likelihood", f"{getattr(log_likelihood, '__name__', repr(log_likelihood))}"
                    f" ({divergence} divergence)")
    ref = load_reference("likelihood")
    x1, truth = ref["x1"], ref["log_p1"]
    B = x1.shape[0]
    try:
        got = np.asarray(call_user(log_likelihood, MixtureVelocity(mixture()), x1.copy()),
                         dtype=np.float64).reshape(-1)
    except UserError as e:
        if "Double" in e.message and "Float" in e.message:
            report.fail("precision", f"fails on float64 input: {e.message} (a float32 tensor "
                        "meets float64 ones); fix: create probes and constants in x1's dtype, "
                        "e.g. (torch.randn_like(x1) < 0).to(x1.dtype) * 2 - 1")
        else:
            report.fail("raises", f"log_likelihood raised {e.message} on x1 of shape {x1.shape}")
        return report
    if got.shape != (B,):
        report.fail("shape", f"returned {got.size} values for {B} points; expected one per point")
        return report
    err = got - truth
    if divergence == "exact":
        tol, measured, ok = TOL_EXACT, float(np.max(np.abs(err))), None
        label = "max |log p - exact| (nats)"
    else:
        stderr = float(np.std(err) / math.sqrt(B))
        tol, measured = 4 * stderr + TOL_EXACT, abs(float(np.mean(err)))
        label = "|mean(log p - exact)| (nats)"
    ok = report.row(label, f"{measured:.2g}", f"{tol:.2g}", measured <= tol)
    report.note(f"mean exact log p_1 = {truth.mean():.4f}, yours = {got.mean():.4f}, "
                f"mean |error| = {np.mean(np.abs(err)):.2g} nats")
    if not ok:
        _diagnose(report, got, ref, tol, divergence == "hutchinson")
    # image-shaped input (B, 1, 2, 2): the divergence must trace all non-batch axes
    x_img, truth_img = ref["x1_image"], ref["log_p1_image"]
    try:
        got_img = np.asarray(call_user(log_likelihood, MixtureVelocity(image_mixture()),
                                       x_img.copy()), dtype=np.float64).reshape(-1)
        e = (float(np.max(np.abs(got_img - truth_img))) if divergence == "exact"
             else abs(float(np.mean(got_img - truth_img))))
        tol_img = tol if divergence == "exact" else 4 * float(
            np.std(got_img - truth_img) / math.sqrt(len(truth_img))) + TOL_EXACT
        ok_img = report.row("image-shaped x1 (B, 1, 2, 2)", f"{e:.2g}", f"{tol_img:.2g}",
                            e <= tol_img)
        if not ok_img and ok:  # wrong only on images (when flat inputs fail too, that is why)
            report.fail("image-shape", f"on x1 of shape {x_img.shape} the log-likelihood is off "
                        f"by {e:.2g} nats (flat inputs: {measured:.2g}): the divergence does not "
                        "trace all non-batch axes; fix: flatten to (B, D) for the trace")
    except UserError as ex:
        report.row("image-shaped x1 (B, 1, 2, 2)", "raises", "-", False)
        report.fail("image-shape", f"raises {ex.message} on x1 of shape {x_img.shape}; fix: "
                    "index the Jacobian diagonal on x.flatten(1), not x[:, i]")
    return report


def _diagnose(report, got, ref, tol, hutchinson):
    truth, delta = ref["log_p1"], ref["delta"]
    log_p0 = standard_normal_log_prob(ref["x0"])

    def close(a):
        return float(np.mean(np.abs(got - a))) <= tol

    if close(-truth):
        report.fail("sign", "you return the negative log-likelihood (-log p); fix: return "
                    "log p0(x0) + int_1^0 div v dt, or rename it nll")
        return
    for key in ("wrong_direction_plus", "wrong_direction_minus"):
        if close(ref[key]):
            report.fail("direction", "the ODE runs from t = 0 to 1 starting at the data x1: the "
                        "likelihood integrates data -> noise, from t = 1 down to t = 0; fix: "
                        "time grid [1, 0] (x1 at t = 1)")
            return
    # got = log p0(x0) + k delta; Hutchinson noise averages out of the least-squares k
    k = float(np.sum((got - log_p0) * delta) / np.sum(delta**2))
    fit = float(np.mean(np.abs(got - log_p0 - k * delta)))
    if fit <= tol or (hutchinson and abs(k - round(k)) < 0.15 and round(k) != 1):
        if abs(k + 1) < 0.1:
            report.fail("sign", f"the divergence term has the wrong sign (fitted weight "
                        f"{k:.3f}): log p1 = log p0(x0) - int_0^1 div v dt = log p0(x0) + "
                        "int_1^0 div v dt; fix: flip the sign of the accumulated divergence")
            return
        if k > 1.5 and abs(k - round(k)) < 0.15:
            report.fail("hutchinson-sum", f"the divergence term is {k:.2f} times the true one: "
                        f"{round(k)} Hutchinson probes are summed instead of averaged "
                        "(bayesflow#772); fix: divide the sum of eps^T J eps by the number of "
                        "probes")
            return
        report.fail("divergence-scale", f"the divergence term is {k:.3f} times the true one; "
                    "fix: check the trace and the probe normalisation (E[eps eps^T] = I)")
        return
    report.fail("mismatch", f"mean error {np.mean(got - truth):.3g} nats matches no known bug "
                "(sign, direction, probe sum); check the solver's accuracy and p0 = N(0, I)")
