"""check_diffusion_to_flow: a user's `convert(model, alphas_cumprod, prediction) -> v(x, t)`.

`convert` turns a variance-preserving diffusion model(x_dm, timestep, y=None) into a
CondOT velocity field of flow time (fm_numpy.diffusion.DiffusionToFlow is ours). The
kit's model is the *ideal* one for Gaussian data N(m, s^2 I) (D = 3): with
a = sqrt(abar), b = sqrt(1 - abar) and c = a^2 s^2 + b^2,
  E[x0 | x_dm] = b (x_dm - a m) / c,   E[x1 | x_dm] = m + a s^2 (x_dm - a m) / c,
and it outputs the noise (epsilon), the clean sample (x0) or a x0 - b x1 (v). The flow
field it converts to is known in closed form: the marginal velocity of CondOT to that
Gaussian (fm_numpy.analytic.GaussianMixtureField). It is compared at the flow times of
the table's steps k = 0, 100, 250, 500, 750, 999 (Stable Diffusion's scaled-linear
schedule, 1000 steps), where no interpolation is involved. Tolerance 1e-8 relative.
Diagnoses: the output read as another prediction type, the scale map x_dm = s x left
out, the sign of v.
"""

import numpy as np

from fm_numpy.analytic import GaussianMixtureField
from fm_numpy.diffusion import (
    PREDICTIONS,
    DiffusionToFlow,
    alpha_bar_at,
    alphas_cumprod,
    flow_time_table,
    scaled_linear_betas,
)

from .report import Report, UserError, call_user, load_reference, rel_err

__all__ = ["check_diffusion_to_flow", "reference_arrays", "IdealDiffusionModel", "STEPS"]

STEPS = (0, 100, 250, 500, 750, 999)
MEAN = np.array([1.0, -0.5, 0.3])
STD = 0.5


def schedule():
    return alphas_cumprod(scaled_linear_betas(1000))


class IdealDiffusionModel:
    """The exact model(x_dm, timestep, y=None) of a prediction type for N(MEAN, STD^2 I)."""

    def __init__(self, prediction, abar):
        self.prediction, self.abar = prediction, abar

    def __call__(self, x_dm, timestep, y=None):
        x_dm = np.asarray(x_dm, dtype=np.float64)
        k = np.broadcast_to(np.asarray(timestep, dtype=np.float64), (x_dm.shape[0],))
        ab = alpha_bar_at(k, self.abar)[:, None]  # (B, 1)
        a, b = np.sqrt(ab), np.sqrt(1 - ab)
        c = a**2 * STD**2 + b**2
        r = x_dm - a * MEAN
        x0_hat = b * r / c  # (B, D)
        x1_hat = MEAN + a * STD**2 * r / c
        if self.prediction == "epsilon":
            return x0_hat
        if self.prediction == "x0":
            return x1_hat
        return a * x0_hat - b * x1_hat


def _truth():
    return GaussianMixtureField(MEAN[None], np.full((1, 3), STD**2))


def reference_arrays():
    abar = schedule()
    t = flow_time_table(abar)[list(STEPS)]
    x = np.random.default_rng(154).standard_normal((len(STEPS), 5, 3))
    field = _truth()
    v = np.stack([field(x[i], t[i]) for i in range(len(STEPS))])  # (K, B, D)
    return {"alphas_cumprod": abar, "steps": np.array(STEPS), "t": t, "x": x, "v": v}


class _NoScale(DiffusionToFlow):
    """DiffusionToFlow without the scale map: the network sees x instead of s x."""

    def __call__(self, x, t, y=None):
        from fm_numpy.diffusion import x1_x0_from_output
        timestep, a, b, _ = self.coefficients(t, x)
        out = self.model(x, timestep, y)
        x1_hat, x0_hat = x1_x0_from_output(self.prediction, x, out, a, b)
        return x1_hat - x0_hat


def _field_values(v, ref):
    return np.stack([np.asarray(v(ref["x"][i].copy(), float(ref["t"][i])), dtype=np.float64)
                     for i in range(len(ref["t"]))])


def check_diffusion_to_flow(convert, prediction="epsilon"):
    """Check `convert(model, alphas_cumprod, prediction) -> v(x, t)` (NumPy) for a prediction."""
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; choose one of "
                         f"{', '.join(PREDICTIONS)}")
    report = Report("diffusion_to_flow",
                    f"{getattr(convert, '__name__', repr(convert))} with {prediction}-prediction")
    ref = load_reference("diffusion_to_flow")
    abar = ref["alphas_cumprod"]
    model = IdealDiffusionModel(prediction, abar)
    try:
        v = call_user(convert, model, abar.copy(), prediction)
        got = call_user(_field_values, v, ref)
    except UserError as e:
        report.fail("raises", f"convert or its field raised {e.message}")
        return report
    if got.shape != ref["v"].shape:
        report.fail("shape", f"the field returned shape {got.shape[1:]}, expected "
                    f"{ref['v'].shape[1:]}")
        return report
    ok = True
    for i, k in enumerate(ref["steps"]):
        e = rel_err(got[i], ref["v"][i])
        ok &= report.row(f"step {k} (t = {ref['t'][i]:.4f})", f"{e:.1e}", "1e-08", e <= 1e-8)
    if ok:
        return report
    candidates = [("wrong-prediction", DiffusionToFlow(model, abar, other),
                   f"the output is read as {other}-prediction, but the model predicts "
                   f"{prediction} (diffusion's 'x0' is the clean sample, our x1; 'epsilon' is "
                   f"the noise, our x0); fix: prediction={prediction!r}")
                  for other in PREDICTIONS if other != prediction]
    candidates.append(("missing-scale", _NoScale(model, abar, prediction),
                       "the network is fed the flow point x instead of x_dm = s x, "
                       "s = 1 / sqrt(t^2 + (1 - t)^2); fix: scale x before calling the model"))
    for code, field, text in candidates:
        if rel_err(got, _field_values(field, ref)) < 1e-8:
            report.fail(code, text)
            return report
    if rel_err(got, -ref["v"]) < 1e-8:
        report.fail("sign-flipped", "the velocity has the wrong sign; fix: v = x1_hat - x0_hat "
                    "(towards the data, t = 1)")
        return report
    worst = int(np.argmax([rel_err(got[i], ref["v"][i]) for i in range(len(ref["t"]))]))
    report.fail("mismatch", f"off by {rel_err(got[worst], ref['v'][worst]):.2g} at flow time "
                f"{ref['t'][worst]:.4f} (step {ref['steps'][worst]}); check the time map "
                "t = a / (a + b) and the scale s = a + b")
    return report
