"""check_time_sampling: the times a training step draws, by a goodness-of-fit test.

    sampler(n, rng) -> t (n,)            flow matching: one time per sample
    sampler(n, rng) -> (r, t) (n,) each  MeanFlow: the pair, r <= t, some with r = t

Flow-matching times must lie in [0, 1] and follow the named law: "uniform" (U[0, 1]),
"logit-normal" (logit t ~ N(m, s), m and s fitted), or "any" of those two (the default).
The test is Kolmogorov-Smirnov (scipy.stats.kstest) on n = 4096 draws; a law is rejected
at p < 1e-4 (a right sampler fails one seed in 10,000). MeanFlow pairs: r <= t for every
pair, the fraction with r = t (checked against `ratio`, the fraction with r != t, when
given: binomial 5-sigma band), and the law of the pooled times of the pairs with r != t
(two independent draws, sorted, so the pooled values follow the law of one draw).

time_findings / pair_findings are shared with check_training_step.
"""

import numpy as np
from scipy import stats

from .report import Report, UserError, call_user

__all__ = ["check_time_sampling", "time_findings", "pair_findings", "P_REJECT", "LAWS"]

P_REJECT = 1e-4
LAWS = ("any", "uniform", "logit-normal")


def _ks(t):
    """(p uniform, p logit-normal, (m, s)) of the times t (n,)."""
    p_u = float(stats.kstest(t, "uniform").pvalue)
    tc = np.clip(t, 1e-7, 1 - 1e-7)
    z = np.log(tc) - np.log1p(-tc)  # (n,) logit t
    m, s = float(np.mean(z)), float(np.std(z))
    p_ln = float(stats.kstest(z, "norm", args=(m, max(s, 1e-12))).pvalue) if s > 0 else 0.0
    return p_u, p_ln, (m, s)


def time_findings(report, t, law="any", what="t"):
    """Range and law (None: the range only) of the times t (n,) as rows and findings."""
    if law is not None and law not in LAWS:
        raise ValueError(f"unknown time law {law!r}; choose one of {', '.join(LAWS)}")
    t = np.asarray(t, dtype=np.float64).reshape(-1)
    lo, hi = float(np.min(t)), float(np.max(t))
    outside = float(np.mean((t < 0) | (t > 1)))
    ok = report.row(f"{what} in [0, 1]", f"[{lo:.3g}, {hi:.3g}]", "[0, 1]", outside == 0)
    if not ok:
        neg = float(np.mean(t < 0))
        hint = (" (half of them negative: a standard normal draw, randn, where rand was meant; "
                "rectified-flow-pytorch#16)" if 0.4 < neg < 0.6 else "")
        report.fail("time-range", f"{outside:.0%} of the {what} the network saw lie outside "
                    f"[0, 1] (from {lo:.3g} to {hi:.3g}){hint}; fix: draw {what} = rand(B) "
                    "(uniform) or sigmoid(m + s randn(B)) (logit-normal)")
        return False
    if law is None:  # the range only
        return True
    p_u, p_ln, (m, s) = _ks(t)
    fits = {"uniform": p_u >= P_REJECT, "logit-normal": p_ln >= P_REJECT}
    for key, label, p in (("uniform", f"{what} ~ U[0, 1] (KS p, n = {t.size})", p_u),
                          ("logit-normal", f"{what} ~ logit-normal({m:.2f}, {s:.2f}) (KS p)",
                           p_ln)):
        ok = fits[key] or (law == "any" and any(fits.values())) or law not in ("any", key)
        report.row(label, f"{p:.2g}", f">= {P_REJECT:g}", ok)
    if law == "any" and not any(fits.values()):
        report.fail("time-distribution", f"the {what} follow neither U[0, 1] (KS p = {p_u:.2g}) "
                    f"nor a logit-normal law (fitted ({m:.2f}, {s:.2f}), KS p = {p_ln:.2g}); "
                    f"fix: draw {what} = rand(B) or sigmoid(m + s randn(B))")
        return False
    if law != "any" and not fits[law]:
        other = [k for k, v in fits.items() if v]
        seen = f" (they fit {other[0]})" if other else ""
        report.fail("time-distribution", f"the {what} are not {law} (KS p = "
                    f"{p_u if law == 'uniform' else p_ln:.2g}){seen}; fix: draw {what} from the "
                    f"{law} law")
        return False
    report.note(f"{what}: " + ("uniform" if fits["uniform"] else
                               f"logit-normal (m = {m:.2f}, s = {s:.2f})"))
    return True


def pair_findings(report, r, t, ratio=None, law="any"):
    """MeanFlow's (r, t) (n,) each: r <= t, the fraction with r != t, the law of the times."""
    r = np.asarray(r, dtype=np.float64).reshape(-1)
    t = np.asarray(t, dtype=np.float64).reshape(-1)
    after = float(np.mean(r > t + 1e-7))
    report.row("r <= t", f"{1 - after:.1%} of pairs", "100%", after == 0)
    if after > 0:
        swapped = " (every pair: the two times are swapped)" if after > 0.99 * np.mean(r != t) \
            else ""
        report.fail("r-after-t", f"r > t in {after:.0%} of the pairs{swapped}; fix: r, t = "
                    "min(s1, s2), max(s1, s2)")
    differ = np.abs(r - t) > 1e-7
    frac = float(np.mean(differ))
    n = r.size
    if ratio is not None:
        band = 5 * np.sqrt(ratio * (1 - ratio) / n) + 1.0 / n
        ok = report.row("fraction with r != t", f"{frac:.3f}", f"{ratio:g} +- {band:.3f}",
                        abs(frac - ratio) <= band)
        if not ok:
            inverted = abs(frac - (1 - ratio)) <= band
            hint = (" (the ratio is inverted: it is the fraction with r = t)" if inverted
                    else "")
            report.fail("pair-ratio", f"{frac:.1%} of the pairs have r != t, the objective says "
                        f"{ratio:.0%}{hint}; fix: t = where(rand(B) < ratio, t, r)")
    else:
        report.note(f"{frac:.1%} of the (r, t) pairs have r != t")
    pooled = np.concatenate([r[differ], t[differ]]) if np.any(differ) else t
    ok_r = time_findings(report, r, None, "r")
    ok_t = ok_r and time_findings(report, pooled, law, "times of pairs with r != t")
    if ok_t and np.sum(differ) >= 20:
        # r of a pair is the smaller of two independent draws: F(r) ~ 1 - (1 - u)^2 with F
        # the pooled law (r = U t, a fraction of t, is not)
        u = np.searchsorted(np.sort(pooled), r[differ], side="right") / pooled.size
        p_min = float(stats.kstest(u, lambda q: 1 - (1 - q) ** 2).pvalue)
        ok_t = report.row("r = the smaller of two draws (KS p)", f"{p_min:.2g}",
                          f">= {P_REJECT:g}", p_min >= P_REJECT)
        if not ok_t:
            report.fail("time-distribution", f"r is not the smaller of two independent draws "
                        f"of the times' law (KS p = {p_min:.2g}); fix: draw two times and sort "
                        "them, r, t = min, max (MeanFlow section 4.3)")
    return after == 0 and ok_r and ok_t


def check_time_sampling(sampler, law="any", ratio=None, n=4096, seed=0):
    """Check `sampler(n, rng) -> t (n,)` or `-> (r, t)` (MeanFlow pairs); law of one draw."""
    report = Report("time_sampling", getattr(sampler, "__name__", repr(sampler)))
    try:
        out = call_user(sampler, n, np.random.default_rng(seed))
    except UserError as e:
        report.fail("raises", f"sampler raised {e.message}")
        return report
    if isinstance(out, (tuple, list)) and len(out) == 2:
        r, t = (np.asarray(a, dtype=np.float64) for a in out)
        if r.shape != (n,) or t.shape != (n,):
            report.fail("one-t-per-sample", f"asked for {n} pairs, got r of shape {r.shape} and "
                        f"t of shape {t.shape}; fix: one (r, t) per sample, shape (B,) each")
            return report
        pair_findings(report, r, t, ratio, law)
        return report
    t = np.asarray(out, dtype=np.float64)
    if t.shape != (n,):
        report.fail("one-t-per-sample", f"asked for {n} times, got shape {t.shape}; fix: one "
                    "time per sample, shape (B,)")
        return report
    distinct = np.unique(t).size
    if not report.row("distinct times", f"{distinct}", f"> {n // 2}", distinct > n // 2):
        report.fail("one-t-per-sample", f"{distinct} distinct values among {n} draws: the same "
                    "time is repeated (one t for the whole batch?); fix: t = rand(B)")
    time_findings(report, t, law)
    return report
