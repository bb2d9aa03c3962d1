"""check_training_step: a user's training loss, called as their code calls it, on a probe network.

    loss_fn(model, x1, y) -> loss or (loss, dL/d output)     draws its own t and noise
    loss_fn(model, x1, y, x0) -> the same                    the kit hands over the noise

`model` is the kit's probe (probe.py): `model(x, t, y=None, r=None)`, plus `jvp` and
`backward` (fm_numpy's network protocol). A NumPy loss returns dL/du of its latest forward
(fm_numpy's `loss_and_dv`); fm_torch/conformance.py reads dL/du of every call by autograd.
The probe batch is square (B = D = 128, x1 the rows of 3 H, H a Hadamard matrix) so a t of
shape (B,) broadcast along the data axis runs instead of raising. From `calls` steps:

- times (time_sampling.py): range, law (KS), one per sample; MeanFlow's (r, t) pairs;
- the path: per sample, xt = a x1 + s x0 fitted (exactly when x0 is handed over; else
  a = <xt, x1>/|x1|^2, s = |xt - a x1| / sqrt(D - 1), x0 being standard normal) and matched
  against the scheduler, its reversed time, its swapped ends and the other schedulers;
- the target: dL/du_b = c_b (u_b - target_b) is fitted exactly onto (u_b, x1_b, xt_b), so the
  implied target_b = A_b x1_b + Q_b xt_b and its (x1, x0) coefficients under the fitted path
  name it: the path's velocity, its negative, x1 - x0, x1, x0; MeanFlow adds the probe's
  known time derivative, whose coefficient must be (t - r) (training.py's `_target`);
- the reduction: c_b n D / 2 is 1 for a mean over batch and features;
- labels: reach the network, the dropout rate, the null label outside the classes.
"""

import inspect

import numpy as np
from scipy.linalg import hadamard

from fm_numpy.paths import SCHEDULERS, make_scheduler

from .probe import Probe
from .report import Report, UserError, call_user
from .time_sampling import pair_findings, time_findings
from .training_fit import fit_path, fit_target, label_findings, reduction_findings

__all__ = ["check_training_step", "probe_batch", "B", "D"]

B = D = 128


def probe_batch(seed=0, num_classes=None):
    """(x1 (B, D), y (B,) or None): x1 = 3 H[perm], rows orthogonal, |x1_b| = 3 sqrt(D)."""
    rng = np.random.default_rng(seed)
    x1 = 3.0 * hadamard(D)[rng.permutation(B)].astype(np.float64)  # (B, D)
    y = None if not num_classes else rng.integers(0, num_classes, B)
    return x1, y


def _takes_x0(fn):
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    names = [p.name for p in params]
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return "x0" in names or len(positional) >= 4


def _gather(report, probe, steps, x1, x0s, y):
    """Stack the rows of every call whose output the loss used: a dict of (N, ...) arrays."""
    rows = {k: [] for k in ("x", "t", "r", "y", "out", "grad", "x1", "x0", "n", "y_given")}
    for step, calls in steps:
        used = [c for c in calls if c.grad is not None and np.any(c.grad != 0)]
        for c in used:
            idx = np.arange(c.n) % x1.shape[0]
            rows["x"].append(c.x)
            rows["t"].append(c.t if c.t is not None else np.full(c.n, np.nan))
            rows["r"].append(c.r if c.r is not None else np.full(c.n, np.nan))
            rows["y"].append(c.y if c.y is not None else np.full(c.n, -10**9))
            rows["out"].append(c.out)
            rows["grad"].append(c.grad)
            rows["x1"].append(x1[idx])
            rows["x0"].append(x0s[step][idx] if x0s else np.full_like(c.x, np.nan))
            rows["n"].append(np.full(c.n, c.n))
            rows["y_given"].append(y[idx] if y is not None else np.full(c.n, -10**9))
    if not rows["x"]:
        return None
    return {k: np.concatenate(v) for k, v in rows.items()}


def _per_batch_note(report, rows):
    """A note when every call has r = t for all rows or for none (a per-batch choice)."""
    fractions, start, n = [], 0, rows["n"]
    while start < len(n):
        k = int(n[start])
        sl = slice(start, start + k)
        fractions.append(float(np.mean(np.abs(rows["r"][sl] - rows["t"][sl]) > 1e-7)))
        start += k
    if len(fractions) > 1 and all(f in (0.0, 1.0) for f in fractions):
        report.note(f"r = t is chosen per batch, not per sample ({sum(fractions):.0f} of "
                    f"{len(fractions)} calls have r != t in every row, the rest in none): the "
                    "expected loss is the same, its variance is not the paper's")


def _rematch(rows, x1):
    """Rows re-paired by the loss (an OT coupling moves x1 too): each network row's x1 is the
    probe row with the largest projection <xt, x1_j> (the rows of x1 are orthogonal); only
    rows matched with a margin (best > 2 x second) are kept. None if under half are."""
    proj = rows["x"] @ x1.T  # (N, B)
    order = np.argsort(proj, axis=1)
    best, second = order[:, -1], order[:, -2]
    n = np.arange(len(best))
    sure = proj[n, best] > 2 * np.maximum(proj[n, second], 0)
    if np.mean(sure) < 0.5:
        return None
    out = {k: v[sure] for k, v in rows.items()}
    out["x1"] = x1[best[sure]]
    out["x0"] = np.full_like(out["x"], np.nan)
    out["rematched"] = True
    return out


def _path_or_repaired(report, rows, sched, with_x0, objective, x1):
    """fit_path on the rows in order; if no path fits, on the rows re-matched to x1."""
    first = Report("training")
    path = fit_path(first, rows, sched, with_x0, objective)
    if path is None and "path-mismatch" in first.codes:
        matched = _rematch(rows, x1)
        if matched is not None:
            second = Report("training")
            path2 = fit_path(second, matched, sched, False, objective)
            if path2 is not None and not second.findings:
                report.note(f"the batch is re-paired (an OT coupling): {len(matched['x'])} of "
                            f"{len(rows['x'])} rows matched to their x1 by projection; the "
                            "rest are left out")
                first, path, rows, with_x0 = second, path2, matched, False
    report.rows += first.rows
    report.notes += first.notes
    for f in first.findings:
        report.fail(*f.split(": ", 1))
    return path, rows, with_x0


def check_training_step(loss_fn, scheduler="condot", objective="fm", times="any",
                        num_classes=None, label_dropout=None, reduction="mean", ratio=None,
                        steps=16, seed=0, **scheduler_args):
    """Check a training loss: times, path, target, reduction and labels (module docstring).

    objective: "fm" (flow matching, target the path's velocity) or "meanflow" (the network
    also gets r, r <= t; `ratio` is the fraction with r != t); times: "any" (uniform or
    logit-normal), "uniform" or "logit-normal"; num_classes: the kit passes labels in
    0..num_classes - 1 and checks what reaches the network (label_dropout: expected rate).
    """
    if objective not in ("fm", "meanflow"):
        raise ValueError(f"unknown objective {objective!r}; choose fm or meanflow")
    if scheduler not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
    sched = make_scheduler(scheduler, **scheduler_args)
    name = getattr(loss_fn, "__name__", type(loss_fn).__name__)
    report = Report("training", f"{name} against {sched!r} ({objective})")
    x1, y = probe_batch(seed, num_classes)
    probe = Probe(D, seed=seed + 7, time_slopes=objective == "meanflow")
    with_x0 = _takes_x0(loss_fn)
    rng = np.random.default_rng(seed + 3)
    x0s, recorded = [], []
    for step in range(steps):
        start = len(probe.calls)
        args = (probe, x1.copy(), None if y is None else y.copy())
        if with_x0:
            x0s.append(rng.standard_normal((B, D)))
            args += (x0s[-1].copy(),)
        try:
            out = call_user(loss_fn, *args)
        except UserError as e:
            report.fail("raises", f"the loss raised {e.message}")
            return report
        calls = probe.calls[start:]
        if isinstance(out, (tuple, list)) and len(out) == 2 and out[1] is not None and calls:
            if all(c.grad is None for c in calls):
                probe.backward(out[1])
        recorded.append((step, calls))
    rows = _gather(report, probe, recorded, x1, x0s, y)
    if rows is None:
        report.fail("no-gradient", "the loss never depends on the network's output (no call "
                    "with a nonzero gradient); fix: return the loss of model(xt, t)")
        return report
    report.note(f"{rows['x'].shape[0]} network rows from {steps} steps"
                + (", x0 handed over" if with_x0 else ", the loss drew its own noise"))
    # 1. times
    t = rows["t"]
    if np.all(np.isnan(t)):
        report.fail("no-time", "the network never receives a time; fix: model(xt, t)")
        return report
    if probe.scalar_t:
        report.fail("one-t-per-sample", f"{probe.scalar_t} of the calls passed one time for the "
                    "whole batch; fix: t = rand(B), one per sample")
    if objective == "meanflow":
        if np.all(np.isnan(rows["r"])):
            report.fail("no-r", "MeanFlow's network never receives r (the second time); fix: "
                        "model(z, t, r=r)")
            return report
        pair_findings(report, rows["r"], t, ratio, times)
        _per_batch_note(report, rows)
    else:
        time_findings(report, t, times)
    # 2. labels
    if num_classes:
        label_findings(report, rows, num_classes, label_dropout)
    # 3. the path, 4. the target, 5. the reduction
    path, rows, with_x0 = _path_or_repaired(report, rows, sched, with_x0, objective, x1)
    if path is not None:
        fit_target(report, rows, sched, path, with_x0, objective, probe)
        reduction_findings(report, rows, reduction, objective)
    return report
