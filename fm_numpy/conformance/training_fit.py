"""The fits behind check_training_step (training.py): path, target, reduction and labels.

`rows` holds one entry per network row the loss used: x (N, D) what the network saw, t and r
(N,), y (N,) the label it got (-10**9 for none), out (N, D) the probe's output, grad (N, D)
dL/d out, x1 and x0 (N, D) the kit's data and noise (x0 NaN when the loss drew its own),
n (N,) the rows of that call, y_given (N,) the label the kit passed.
"""

import numpy as np

from fm_numpy.paths import SCHEDULERS

__all__ = ["fit_path", "fit_target", "label_findings", "reduction_findings", "NONE"]

NONE = -10**9  # "no label reached the network"
TOL_EXACT = 1e-4  # float32 arithmetic inside a torch loss lands near 1e-7
TOL_STAT = 0.1  # the estimated (a, s) of one sample scatter by ~0.05 at D = 128


def _coefs(sched, t):
    return [np.broadcast_to(np.asarray(c, dtype=np.float64), t.shape) for c in sched(t)]


def _candidates(sched, tz):
    """(code, name, a, s, da, ds) of every path the network's xt might follow, at times tz."""
    a, s, da, ds = _coefs(sched, tz)
    ra, rs, rda, rds = _coefs(sched, 1 - tz)
    out = [("ok", f"{sched!r}", a, s, da, ds),
           ("reversed-time", f"{sched!r} at 1 - t (t = 0 is data)", ra, rs, -rda, -rds),
           ("swapped-x0-x1", f"{sched!r} with x0 and x1 swapped", s, a, ds, da)]
    for cls in SCHEDULERS.values():
        other = cls()
        if repr(other) != repr(sched):
            out.append(("wrong-scheduler", f"{other!r}", *_coefs(other, tz)))
    return out


def _fit_as(x, x1, x0, exact):
    """Per row xt = a x1 + s x0: exactly (x0 known) or estimated (x0 standard normal)."""
    if exact:
        m11, m10, m00 = (np.einsum("nd,nd->n", p, q) for p, q in ((x1, x1), (x1, x0), (x0, x0)))
        r1, r0 = np.einsum("nd,nd->n", x1, x), np.einsum("nd,nd->n", x0, x)
        det = m11 * m00 - m10 * m10
        return (r1 * m00 - r0 * m10) / det, (r0 * m11 - r1 * m10) / det
    a = np.einsum("nd,nd->n", x, x1) / np.einsum("nd,nd->n", x1, x1)  # (N,)
    s = np.linalg.norm(x - a[:, None] * x1, axis=1) / np.sqrt(x.shape[1] - 1)  # (N,)
    return a, s


def _err(a, s, ca, cs, exact):
    if exact:
        return float(np.max(np.maximum(np.abs(a - ca), np.abs(s - cs))))
    return float(np.sqrt(np.mean(0.5 * ((a - ca) ** 2 + (s - cs) ** 2))))


def _axis_fit(rows, cand, exact):
    """Error of the candidate when t[d] scales column d (a (B,) time broadcast on the data axis)."""
    x, x1, x0, n = rows["x"], rows["x1"], rows["x0"], rows["n"]
    D = x.shape[1]
    errs, start = [], 0
    if rows.get("rematched"):
        return np.inf  # the rows are no longer whole calls
    while start < len(n):
        k = int(n[start])
        if k == D and start + k <= len(n):
            sl = slice(start, start + k)
            xa, x1a, x0a = x[sl].T, x1[sl].T, x0[sl].T  # (D, B): rows are columns now
            a, _ = _fit_as(xa, x1a, x0a, exact)  # the data weight per column (enough: the
            # noise weight may still be per sample where only one term was broadcast wrongly)
            errs.append(_err(a, cand[2][sl], a, cand[2][sl], exact) if exact else
                        float(np.sqrt(np.mean((a - cand[2][sl]) ** 2))))
        start += k
    return max(errs) if errs else np.inf


def fit_path(report, rows, sched, exact, objective):
    """Match the network's xt against the candidate paths; the matched one (dict) or None."""
    x, x1, x0 = rows["x"], rows["x1"], rows["x0"]
    tol = TOL_EXACT if exact else TOL_STAT
    a, s = _fit_as(x, x1, x0, exact)
    times = [("t", rows["t"], rows["r"])]
    if objective == "meanflow":
        times.append(("r", rows["r"], rows["t"]))
    best = None
    for tname, tz, to in times:
        keep = np.isfinite(tz) & (tz > 1e-3) & (tz < 1 - 1e-3)
        for code, name, ca, cs, cda, cds in _candidates(sched, np.where(keep, tz, 0.5)):
            e = _err(a[keep], s[keep], ca[keep], cs[keep], exact)
            cand = dict(code=code, name=name, a=ca, s=cs, da=cda, ds=cds, err=e, tz=tz,
                        to=to, tname=tname, keep=keep)
            # the expected path within tolerance wins (SigmaMinOT(1e-4) is CondOT to the
            # statistical fit); among equals the smaller error
            rank = (not (code == "ok" and e <= tol), e)
            if best is None or rank < best["rank"]:
                best = dict(cand, rank=rank)
    how = "exact fit" if exact else "fitted from the noise's norm, RMS"
    ok = report.row(f"xt = alpha_t x1 + sigma_t x0 ({how})", f"{best['err']:.1e}"
                    if best["code"] == "ok" else f"{best['name']}", f"{tol:g}",
                    best["code"] == "ok" and best["err"] <= tol)
    if objective == "meanflow":
        report.note(f"MeanFlow: xt sits at the network's {best['tname']} input")
    if ok:
        return best
    k = int(np.nanargmin(np.abs(rows["t"] - 0.5)))
    got = f"fitted xt = {a[k]:.3g} x1 + {s[k]:.3g} x0 at t = {rows['t'][k]:.3g}"
    if best["err"] <= tol:
        texts = {"reversed-time": "time is reversed: the network's xt is data at t = 0 and "
                 "noise at t = 1; fix: xt = alpha_t x1 + sigma_t x0 with t = 0 noise",
                 "swapped-x0-x1": "x0 and x1 are swapped in xt; fix: xt = alpha_t x1 + "
                 "sigma_t x0, x0 the noise",
                 "wrong-scheduler": f"the path is {best['name']}, not {sched!r}; fix: use "
                 f"{sched!r} or check against {best['name']}"}
        report.fail(best["code"], f"{texts[best['code']]}; {got}")
        return best
    expected = _candidates(sched, np.where(best["keep"], best["tz"], 0.5))[0]
    cand = dict(code="ok", a=expected[2], s=expected[3])
    if _axis_fit(rows, (None, None, cand["a"], cand["s"]), exact) <= tol:
        report.fail("t-axis", "t of shape (B,) is broadcast along the data axis: t[d] scales "
                    "column d of every sample (torchcfm 1.0.4); fix: t.reshape(-1, *[1] * "
                    "(x.ndim - 1)) before multiplying")
        return None
    report.fail("path-mismatch", f"xt follows none of the schedulers, reversed or swapped "
                f"(best: {best['name']}, error {best['err']:.2g}); {got}")
    return None


def _solve(cols, g):
    """Per-row least squares g_b ~ sum_k coef_bk cols[k]_b; coefficients (N, K), residual."""
    M = np.stack(cols, axis=2)  # (N, D, K)
    G = np.einsum("ndk,ndl->nkl", M, M)  # (N, K, K)
    h = np.einsum("ndk,nd->nk", M, g)  # (N, K)
    coef = np.linalg.solve(G, h[..., None])[..., 0]  # (N, K)
    fit = np.einsum("ndk,nk->nd", M, coef)
    resid = float(np.max(np.linalg.norm(g - fit, axis=1) / np.maximum(
        np.linalg.norm(g, axis=1), 1e-300)))
    return coef, resid


def fit_target(report, rows, sched, path, exact, objective, probe):
    """The target implied by dL/du (exact linear fit) against the path's velocity and others."""
    keep = path["keep"]
    g, u, x1 = rows["grad"], rows["out"], rows["x1"]
    cols = [u, x1, rows["x0"] if exact else rows["x"]]
    if objective == "meanflow":
        dvec = probe.gamma if path["tname"] == "r" else probe.beta
        cols.append(np.broadcast_to(dvec, u.shape))
    coef, resid = _solve([c[keep] for c in cols], g[keep])
    c = coef[:, 0]
    rows["c"] = np.full(len(keep), np.nan)
    rows["c"][keep] = c
    if not report.row("dL/du linear in u (a squared error)", f"{resid:.1e}", f"{TOL_EXACT:g}",
                      resid <= TOL_EXACT):
        report.fail("not-mse", f"dL/du is not c (u - target) (relative residual {resid:.2g}): "
                    "the loss is not a squared error (L1, Huber?); fix: mean((v - ut)^2)")
        return
    if np.any(c <= 0):
        report.fail("wrong-target", "the loss decreases as u moves away from the target "
                    "(negative weight): the loss is maximised; fix: minimise mean((v - ut)^2)")
        return
    P, Q = -coef[:, 1] / c, -coef[:, 2] / c
    a, s = path["a"][keep], path["s"][keep]
    da_i, ds_i = (P, Q) if exact else (P + Q * a, Q * s)  # (x1, x0) coefficients of the target
    vel = (path["da"][keep], path["ds"][keep])
    ones, zeros = np.ones_like(P), np.zeros_like(P)
    named = [("velocity", vel), ("minus the velocity", (-vel[0], -vel[1])),
             ("x1 - x0", (ones, -ones)), ("x0 - x1", (-ones, ones)),
             ("x1 (data prediction)", (ones, zeros)), ("x0 (noise prediction)", (zeros, ones))]

    def err(want):
        return float(np.max(np.maximum(np.abs(da_i - want[0]), np.abs(ds_i - want[1]))
                            / np.maximum(1.0, np.abs(want[0]) + np.abs(want[1]))))
    errs = {name: err(want) for name, want in named}
    tol = TOL_EXACT if exact or path["code"] == "ok" else 3 * TOL_STAT
    match = min(errs, key=errs.get)
    ok = report.row("target = d xt / dt of the path", f"{errs['velocity']:.1e}", f"{tol:g}",
                    errs["velocity"] <= tol)
    k = int(np.argmin(np.abs(path["tz"][keep] - 0.5)))
    got = f"target = {da_i[k]:.3g} x1 + {ds_i[k]:.3g} x0 at t = {path['tz'][keep][k]:.3g}"
    if not ok:
        if path["code"] == "ok":
            if match == "minus the velocity" and errs[match] <= tol:
                report.fail("sign-flipped", f"the target is minus the path's velocity; {got}; "
                            "fix: ut = d_alpha_t x1 + d_sigma_t x0 (noise to data)")
            else:
                what = match if errs[match] <= tol else "none of velocity, x1, x0, x1 - x0"
                report.fail("wrong-target", f"the target is {what}, not the path's velocity; "
                            f"{got}; fix: ut = d_alpha_t x1 + d_sigma_t x0")
        else:
            what = match if errs[match] <= tol else "none of the usual targets"
            report.fail("target-mismatch", f"the target is {what} while xt follows "
                        f"{path['name']}, whose velocity it is not: path and target disagree "
                        f"(rectified-flow-pytorch 0.2.14's inverted path); {got}; fix: "
                        "xt = alpha_t x1 + sigma_t x0 and ut = d xt / dt in the same time")
    if objective == "meanflow":
        K = -coef[:, 3] / c  # (N,) the weight of d u / d(time of xt) in the target
        want = (path["to"] - path["tz"])[keep]
        diff = np.abs(want) > 1e-6
        e = float(np.max(np.abs(K - want)[diff])) if np.any(diff) else 0.0
        if not report.row("MeanFlow target: v + (t_other - t_xt) du/dt_xt", f"{e:.1e}",
                          f"{TOL_EXACT:g}", e <= TOL_EXACT):
            kk = float(np.median(K[diff] / want[diff]))
            report.fail("meanflow-target", f"the JVP term of the target is {kk:.3g} times the "
                        "MeanFlow identity's (1: right, -1: wrong sign, 0: missing); fix: "
                        "u_tgt = v + (t - r) du/dr along the tangent (v, 1, 0) in (z, r, t)")


def reduction_findings(report, rows, reduction, objective):
    """c_b n D / 2 = 1 for every row: the mean over batch and features, no weighting."""
    c = rows.get("c")
    if c is None:
        return
    keep = np.isfinite(c)
    w = c[keep] * rows["n"][keep] * rows["x"].shape[1] / 2.0  # (N,) per-row weight
    if objective == "meanflow":
        report.note(f"MeanFlow weights per row from {np.min(w):.3g} to {np.max(w):.3g} "
                    "(adaptive weighting; not checked)")
        return
    spread = float(np.max(w) / np.min(w) - 1.0)
    if spread > 1e-3:
        corr = float(np.corrcoef(w, rows["t"][keep])[0, 1])
        report.row("equal weight per sample", f"{spread:.2g}", "1e-3", False)
        report.fail("weighting", f"per-sample loss weights range from {np.min(w):.3g} to "
                    f"{np.max(w):.3g} (correlation with t {corr:+.2f}); the objective weights "
                    "every sample equally; fix: mean((v - ut)^2) without a time weight")
        return
    w0 = float(np.median(w))
    ok = report.row("reduction (1 = mean over batch and features)", f"{w0:.4g}", "1",
                    abs(w0 - 1) < 1e-3 or reduction == "any")
    if not ok:
        D, n = rows["x"].shape[1], float(np.median(rows["n"]))
        names = {D: "a sum over features, mean over the batch", n * D: "a sum over everything",
                 n: "a sum over the batch, mean over features"}
        what = next((v for k, v in names.items() if abs(w0 / k - 1) < 1e-3), f"{w0:.4g} x the mean")
        report.fail("reduction", f"the loss is {what} (weight {w0:.4g} per the mean's 1); the "
                    "objective is the mean; fix: reduction='mean' (or scale the learning rate)")


def label_findings(report, rows, num_classes, label_dropout):
    """Labels reach the network; dropped ones become a null label outside 0..K-1, at rate p."""
    yn, yg = rows["y"], rows["y_given"]
    if np.all(yn == NONE):
        report.row("labels reach the network", "never", "always", False)
        report.fail("labels-ignored", "the labels you pass never reach the network (y = None "
                    "in every call); fix: pass y (as model(xt, t, y)) in the training step")
        return
    dropped = yn != yg
    rate = float(np.mean(dropped))
    nulls = np.unique(yn[dropped])
    real = [int(v) for v in nulls if 0 <= v < num_classes]
    if len(real) > 1:
        report.fail("labels-mismatch", f"{rate:.0%} of the rows get another sample's label "
                    f"({len(real)} different real classes); fix: keep labels aligned with x1")
    elif real:
        report.row("null label outside the classes", f"{real[0]}", f"not in 0..{num_classes - 1}",
                   False)
        report.fail("null-class", f"dropped labels are set to {real[0]}, a real class (labels "
                    f"are 0..{num_classes - 1}): the unconditional model is class {real[0]}'s; "
                    f"fix: null label = {num_classes} (an extra embedding row)")
    n = yn.size
    if label_dropout is not None:
        band = 5 * np.sqrt(label_dropout * (1 - label_dropout) / n) + 1.0 / n
        if not report.row("label dropout rate", f"{rate:.3f}", f"{label_dropout:g} +- {band:.3f}",
                          abs(rate - label_dropout) <= band):
            report.fail("label-dropout", f"{rate:.1%} of the labels are dropped, the objective "
                        f"says {label_dropout:.0%}; fix: drop = rand(B) < p")
    else:
        report.note(f"label dropout rate {rate:.1%}" + (f", null label {int(nulls[0])}"
                    if len(nulls) == 1 and nulls[0] != NONE else ""))
