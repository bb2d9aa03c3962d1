"""check_guidance: a user's classifier-free guidance `guided(model, x, t, y, w) -> v`.

Our convention (docs/notation.md): v = v_uncond + w (v_cond - v_uncond), so w = 1 is the
conditional model and w = 0 the unconditional one. The kit's model(x, t, y) is two linear
fields (y = None unconditional); for each w in 0, 0.5, 1, 2, 3.5 the user's output is
fitted as c_uncond v_uncond + c_cond v_cond (least squares; they are linearly
independent) and the weights name the convention: (1 - w, w) ours, (-w, 1 + w) the
`(1 + w) cond - w uncond` convention (Meta's guidance scale and many papers: their w is
ours minus 1), (w, 1 - w) cond and uncond swapped. Tolerance 1e-10 relative.
"""

import numpy as np

from .report import Report, UserError, call_user, load_reference, rel_err

__all__ = ["check_guidance", "reference_arrays", "GuidanceProbeModel", "WEIGHTS"]

WEIGHTS = (0.0, 0.5, 1.0, 2.0, 3.5)
T = 0.4


class GuidanceProbeModel:
    """model(x, t, y): v_cond = x M_c + (1 + t) e_y (first D classes), v_uncond = x M_u."""

    def __init__(self):
        self.M_u = np.array([[0.5, -1.0, 0.0], [1.0, 0.2, -0.3], [0.0, 0.4, 0.9]])
        self.M_c = np.array([[-0.2, 0.7, 1.1], [0.3, -0.6, 0.5], [1.3, 0.1, -0.4]])
        self.calls = 0

    def __call__(self, x, t, y=None):
        self.calls += 1
        x = np.asarray(x, dtype=np.float64)
        t = np.asarray(t, dtype=np.float64).reshape(-1, 1) if np.ndim(t) else float(t)
        if y is None:
            return x @ self.M_u  # (B, D)
        onehot = np.eye(x.shape[1])[np.asarray(y) % x.shape[1]]  # (B, D)
        return x @ self.M_c + (1 + t) * onehot


def reference_arrays():
    model = GuidanceProbeModel()
    x = np.random.default_rng(152).standard_normal((4, 3))
    y = np.array([0, 1, 2, 1])
    v_cond, v_uncond = model(x, T, y), model(x, T, None)
    out = {"x": x, "y": y, "t": np.array(T), "w": np.array(WEIGHTS), "v_cond": v_cond,
           "v_uncond": v_uncond}
    out["v_guided"] = np.stack([v_uncond + w * (v_cond - v_uncond) for w in WEIGHTS])
    return out


def check_guidance(guided):
    """Check `guided(model, x, t, y, w) -> v` against v_uncond + w (v_cond - v_uncond)."""
    report = Report("guidance", getattr(guided, "__name__", repr(guided)))
    ref = load_reference("guidance")
    x, y, t = ref["x"], ref["y"], float(ref["t"])
    vc, vu = ref["v_cond"], ref["v_uncond"]
    M = np.stack([vu.ravel(), vc.ravel()], axis=1)  # (B D, 2)
    weights, calls = [], []
    for k, w in enumerate(ref["w"]):
        model = GuidanceProbeModel()
        try:
            v = np.asarray(call_user(guided, model, x.copy(), t, y.copy(), float(w)),
                           dtype=np.float64)
        except UserError as e:
            report.fail("raises", f"guided raised {e.message} at w = {w:g}")
            return report
        e = rel_err(v, ref["v_guided"][k])
        report.row(f"w = {w:g}", f"{e:.1e}", "1e-10", e <= 1e-10)
        weights.append(np.linalg.lstsq(M, v.ravel(), rcond=None)[0])
        calls.append(model.calls)
    weights = np.array(weights)  # (W, 2): c_uncond, c_cond
    ws = np.array(ref["w"])
    report.note("model evaluations per guided call at w = " + ", ".join(
        f"{w:g}: {c}" for w, c in zip(ws, calls, strict=True)))
    if not any(r[3] == "FAIL" for r in report.rows):
        return report
    fits = {
        "cfg-convention": (np.stack([-ws, 1 + ws], 1),
                           "you use v = (1 + w) v_cond - w v_uncond; ours is v_uncond + "
                           "w (v_cond - v_uncond), so your w is ours minus 1 (w = 0 is "
                           "the conditional model for you, w = 1 for us); fix: pass w - 1, "
                           "or use the other formula"),
        "cfg-swapped": (np.stack([ws, 1 - ws], 1),
                        "the conditional and unconditional fields are swapped: v = v_cond + "
                        "w (v_uncond - v_cond); fix: model(x, t, None) is the unconditional one"),
    }
    for code, (pattern, text) in fits.items():
        if rel_err(weights, pattern) < 1e-8:
            report.fail(code, text)
            return report
    w2 = weights[list(ws).index(2.0)]
    report.fail("cfg-mismatch", f"at w = 2 your output is {w2[0]:.3g} v_uncond + {w2[1]:.3g} "
                "v_cond; expected -1 v_uncond + 2 v_cond")
    return report
