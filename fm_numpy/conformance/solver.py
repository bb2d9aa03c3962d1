"""check_solver: a user's `odeint(v, x0, t_grid) -> states` against exact solutions.

Probes (B = 3 points in D = 2; `v(x, t)` receives whatever t the solver passes):
- constant field v = c: every consistent method is exact, x(t_k) = x0 + c (t_k - t_0);
  the displacement ratio at the end names a step of 1/(steps - 1) instead of 1/steps;
- linear field v = (1 + t) A x (A a damped rotation): x(t) = expm(A (tau(t) - tau(t0))) x0,
  tau = t + t^2 / 2 (scipy.linalg.expm), at 8 and 16 steps (euler: 16 and 32): the measured
  order of accuracy log2(e_N / e_2N), and the evaluations per step;
- the same field from t = 1 back to t = 0 (a decreasing grid): backward integration;
- every evaluation time is recorded: none may leave the grid's interval, and on the 8-step
  grid they must be the method's stage times t_k + c_i h in order (c = 0 | 0, 1/2 | 0, 1 |
  0, 1/2, 1/2, 1): a grid of k/(N-1) stepped by 1/N integrates a constant field exactly and
  still has order 1, only its evaluation times give it away.
Tolerances: exact fields 1e-12 relative (float32 solvers, noticed from the dtype of the
states or of t, 4e-6, and the report says so); stage times 1e-9 (float32 4e-6); order
within 0.35 of the method's; backward error at most 10x the forward one; adaptive methods
(rtol = atol = 1e-5 typical) within 1e-3 of the exact solution.
"""

import math

import numpy as np
from scipy.linalg import expm

from .report import Report, UserError, call_user, load_reference, rel_err

__all__ = ["check_solver", "reference_arrays", "METHODS"]

# method: (order, evaluations per step); None for adaptive methods
METHODS = {"euler": (1, 1), "midpoint": (2, 2), "heun": (2, 2), "rk4": (4, 4)}
STAGES = {"euler": (0.0,), "midpoint": (0.0, 0.5), "heun": (0.0, 1.0), "rk4": (0.0, 0.5, 0.5, 1.0)}
TOL64, TOL32 = 1e-12, 4e-6
ADAPTIVE = ("rk45", "dop853", "dopri5", "dopri8", "bosh3", "adaptive_heun", "adaptive")
A = np.array([[-0.5, -2.0], [2.0, -0.5]])
C = np.array([1.0, -2.0])


def _tau(t):
    return t + 0.5 * t**2


def reference_arrays():
    """x0 (3, 2), the exact linear-field solutions on the probe grids, forward and back."""
    x0 = np.array([[1.0, 0.0], [0.0, 1.0], [-0.7, 0.4]])
    out = {"x0": x0, "A": A, "c": C}
    for n in (8, 16, 32):
        grid = np.linspace(0.0, 1.0, n + 1)
        out[f"linear_forward_{n}"] = np.stack(
            [x0 @ expm(A * (_tau(t) - _tau(0.0))).T for t in grid])  # (n + 1, B, D)
        back = np.linspace(1.0, 0.0, n + 1)
        out[f"linear_backward_{n}"] = np.stack(
            [x0 @ expm(A * (_tau(t) - _tau(1.0))).T for t in back])
    return out


class _Recorder:
    """A field that records every time it is evaluated at."""

    def __init__(self, f):
        self.f, self.times, self.nfe, self.float32 = f, [], 0, False
        self.stage_t = []  # one time per evaluation (the first sample's)

    def __call__(self, x, t):
        self.nfe += 1
        self.float32 |= np.asarray(t).dtype == np.float32 or np.asarray(x).dtype == np.float32
        t_arr = np.asarray(t, dtype=np.float64)
        self.times.extend(np.ravel(t_arr).tolist())
        self.stage_t.append(float(np.ravel(t_arr)[0]) if t_arr.size else np.nan)
        x = np.asarray(x, dtype=np.float64)
        tt = t_arr.reshape(-1, *([1] * (x.ndim - 1))) if t_arr.ndim == 1 else t_arr
        return self.f(x, tt)


def _constant(x, t):
    return np.broadcast_to(C, x.shape).copy()


def _linear(x, t):
    return (1 + t) * (x @ A.T)  # (B, D)


def _run(odeint, field, x0, grid):
    rec = _Recorder(field)
    raw = call_user(odeint, rec, x0.copy(), grid.copy())
    rec.float32 |= np.asarray(raw).dtype == np.float32
    return np.asarray(raw, dtype=np.float64), rec


def _stage_times(report, rec, grid, key, tol):
    """The recorded evaluation times against the tableau's t_k + c_i h, in order."""
    if key not in STAGES:
        return
    h = np.diff(grid)
    want = np.concatenate([grid[k] + np.array(STAGES[key]) * h[k] for k in range(len(h))])
    got = np.asarray(rec.stage_t)
    if got.size != want.size:
        return  # the evaluation count is reported as nfe / one-step
    e = float(np.max(np.abs(got - want)))
    if report.row("evaluation times = t_k + c_i h", f"{e:.1e}", f"{tol:g}", e <= tol):
        return
    n = len(h)
    lin = np.linspace(grid[0], grid[-1], n) if key == "euler" else None
    hint = (f": the field is evaluated on linspace(t0, t1, {n}) (k/(N-1)) while stepping by "
            f"1/N (rectified-flow-pytorch NanoFlow 0.2.12)" if lin is not None and
            np.max(np.abs(got - lin)) <= tol else "")
    k = int(np.argmax(np.abs(got - want)))
    report.fail("stage-times", f"evaluation {k} is at t = {got[k]:.6g}, the method's stage time "
                f"is {want[k]:.6g}{hint}; fix: evaluate stage i of step k at t_k + c_i h")


def _end(states, x0):
    """The final state, whether all states came back or only the last one."""
    return states if states.shape == x0.shape else states[-1]


def _outside(rec, grid):
    lo, hi = min(grid[0], grid[-1]), max(grid[0], grid[-1])
    t = np.asarray(rec.times)
    if t.size == 0:
        return None
    bad = t[(t < lo - 1e-12) | (t > hi + 1e-12)]
    return (float(bad.min()), float(bad.max())) if bad.size else None


def check_solver(odeint, method="euler", order=None, nfe_per_step=None, states="all",
                 backward=True):
    """Check `odeint(v, x0, t_grid) -> states (len(t_grid), *x0.shape)` for a method.

    method: euler, midpoint, heun, rk4 (order and evaluations per step known), an adaptive
    name (RK45, DOP853, dopri5, ...), or any name with order= and nfe_per_step= given.
    states="last": the solver returns only the final state (a sampler), which is then not a
    finding; backward=False skips the decreasing grid (a sampler that only runs 0 -> 1).
    """
    key = str(method).lower()
    adaptive = key in ADAPTIVE
    if not adaptive:
        if key in METHODS:
            order = METHODS[key][0] if order is None else order
            nfe_per_step = METHODS[key][1] if nfe_per_step is None else nfe_per_step
        elif order is None:
            known = ", ".join(list(METHODS) + list(ADAPTIVE))
            raise ValueError(f"unknown method {method!r}: choose one of {known}, or pass order=")
    if states not in ("all", "last"):
        raise ValueError(f"states must be 'all' or 'last', got {states!r}")
    states_kind = states
    report = Report("solver", f"{getattr(odeint, '__name__', repr(odeint))} with {method}")
    ref = load_reference("solver")
    x0 = ref["x0"]
    outside = []

    # 1. constant field: exact at every grid time
    n = 8
    grid = np.linspace(0.0, 1.0, n + 1)
    try:
        states, rec = _run(odeint, _constant, x0, grid)
    except UserError as e:
        report.fail("raises", f"odeint raised {e.message} on a constant field")
        return report
    outside.append(_outside(rec, grid))
    exact = x0[None] + grid[:, None, None] * C  # (n + 1, B, D)
    if states.shape != exact.shape and states.shape == x0.shape and states_kind == "last":
        end_only = states
    elif states.shape != exact.shape:
        report.row("states at every grid time", f"shape {states.shape}", f"{exact.shape}", False)
        report.fail("grid", f"returned shape {states.shape}, expected {exact.shape} (the state "
                    "at every grid time, first the initial one); fix: return all of them")
        end_only = _end(states, x0)
    else:
        end_only = None
    end = states[-1] if end_only is None else end_only
    ratio = float(np.median((end - x0) / C))
    e = rel_err(end, exact[-1])
    if not rec.float32 and TOL64 < e <= TOL32:
        # float64 states, float32 arithmetic inside (a step or time stored in float32):
        # rounding, not a span error
        rec.float32 = True
        report.note(f"float64 states but the constant field is off by {e:.1e}, float32 "
                    "rounding (times or steps kept in float32 inside)")
    tol = TOL32 if rec.float32 else TOL64
    if rec.float32:
        report.note(f"a float32 solver: judged at float32 precision (tolerance {TOL32:g} "
                    f"instead of {TOL64:g} on exact fields, stage times {TOL32:g})")
    f32 = rec.float32
    report.row("constant field, end point", f"{e:.1e}", f"{tol:g}", e <= tol)
    if e > tol:
        if abs(ratio - n / (n - 1)) < 1e-9:
            report.fail("step-size", f"the displacement is {ratio:.4f} times the exact one "
                        f"= {n}/{n - 1}: the step is 1/(steps - 1) instead of 1/steps "
                        "(rectified-flow-pytorch#14); fix: h = t_grid[k + 1] - t_grid[k]")
        else:
            report.fail("span", f"on v = const the end point is off by {e:.2g} (displacement "
                        f"{ratio:.4f} times the exact one): the solver does not integrate over "
                        "[t_grid[0], t_grid[-1]]; fix: take the steps of the grid you are given")
    elif end_only is None:
        e_all = rel_err(states, exact)
        if not report.row("constant field, every grid time", f"{e_all:.1e}", f"{tol:g}",
                          e_all <= tol):
            report.fail("grid", f"the end point is right but the intermediate states are off "
                        f"by {e_all:.2g}: they are not the states at t_grid[k]")

    # 2. linear time-dependent field: order of accuracy and evaluations per step
    sizes = (16, 32) if order == 1 else (8, 16)
    errs, nfes = [], []
    for n in sizes:
        grid = np.linspace(0.0, 1.0, n + 1)
        try:
            states, rec = _run(odeint, _linear, x0, grid)
        except UserError as e:
            report.fail("raises", f"odeint raised {e.message} on a linear field")
            return report
        outside.append(_outside(rec, grid))
        if n == sizes[0] and not adaptive:
            stage_rec, stage_grid = rec, grid
        errs.append(rel_err(_end(states, x0), ref[f"linear_forward_{n}"][-1]))
        nfes.append(rec.nfe)
    n = sizes[0]
    if not adaptive:
        _stage_times(report, stage_rec, stage_grid, key,
                     TOL32 if f32 or stage_rec.float32 else 1e-9)
    if adaptive:
        report.row("linear field (adaptive), end point", f"{errs[0]:.1e}", "1e-03",
                   errs[0] <= 1e-3)
        report.note(f"{nfes[0]} evaluations for {n} grid intervals")
        if nfes[0] <= 2:
            report.fail("one-step", f"{nfes[0]} evaluation(s) in all: the adaptive solver "
                        "took a single step (flow_matching#67); fix: pass the tolerances "
                        "and the full time grid")
        elif errs[0] > 1e-3:
            report.fail("accuracy", f"adaptive error {errs[0]:.2g} at t = 1 (tolerance 1e-3)")
    else:
        per_step = nfes[0] / n
        report.row("evaluations per step", f"{per_step:g}", f"{nfe_per_step}",
                   per_step == nfe_per_step)
        if nfes[0] <= nfe_per_step and n > 1:
            report.fail("one-step", f"{nfes[0]} evaluation(s) for {n} grid intervals: the "
                        f"solver silently took one step over the whole interval "
                        "(flow_matching#67: a fixed-step method given time_grid=[0, 1] and no "
                        "step_size); fix: step once per grid interval")
        elif nfe_per_step > 1 and nfes[0] == n * nfe_per_step - (nfe_per_step - 1):
            report.fail("nfe", f"{nfes[0]} evaluations for {n} steps: every step but one takes "
                        f"{nfe_per_step}, one step takes 1, a lower-order (Euler) step (as "
                        "k-diffusion's Heun does for the last step, to sigma = 0); fix: the "
                        "method's stages on every step")
        elif per_step != nfe_per_step:
            report.fail("nfe", f"{per_step:g} evaluations per step, {method} takes "
                        f"{nfe_per_step}; fix: evaluate each stage once")
        p = math.log2(errs[0] / errs[1]) if errs[1] > 0 and errs[0] > 0 else float("inf")
        ok = abs(p - order) <= 0.35
        report.row(f"order of accuracy ({sizes[0]} vs {sizes[1]} steps)", f"{p:.2f}",
                   f"{order} +- 0.35", ok)
        if not ok and "one-step" not in report.codes:
            report.fail("order", f"measured order {p:.2f}, {method} has order {order} (errors "
                        f"{errs[0]:.2g} at {sizes[0]} steps, {errs[1]:.2g} at {sizes[1]}): the "
                        "stages use the wrong times or weights; fix: compare each stage with "
                        "the method's tableau (t_n + c_i h)")

    # 3. backward: from t = 1 down to t = 0
    n = sizes[0]
    if not backward:
        report.note("backward integration not checked (backward=False)")
        return _outside_findings(report, outside)
    back = np.linspace(1.0, 0.0, n + 1)
    x1 = x0  # the backward run starts from x0, at t = 1
    exact_back = ref[f"linear_backward_{n}"][-1]
    try:
        states, rec = _run(odeint, _linear, x1, back)
        outside.append(_outside(rec, back))
        e_back = rel_err(_end(states, x1), exact_back)
        ok = report.row("backward (t = 1 -> 0)", f"{e_back:.1e}",
                        f"<= 10 x forward ({errs[0]:.1e})", e_back <= 10 * errs[0] + 1e-12)
        if not ok:
            forward = ref[f"linear_forward_{n}"][-1]
            if rel_err(_end(states, x1), forward) < 10 * errs[0] + 1e-9:
                report.fail("backward", "a decreasing grid integrates forward in time (from "
                            "t = 0 to 1); fix: h = t_grid[k + 1] - t_grid[k] is negative there")
            else:
                report.fail("backward", f"backward error {e_back:.2g} vs forward {errs[0]:.2g}: "
                            "a decreasing grid is not integrated correctly; fix: signed steps")
    except UserError as e:
        report.row("backward (t = 1 -> 0)", "raises", "-", False)
        report.fail("backward", f"raises {e.message} on a decreasing grid; fix: allow signed "
                    "steps (the likelihood integrates from t = 1 to 0)")

    return _outside_findings(report, outside)


def _outside_findings(report, outside):
    bad = [o for o in outside if o is not None]
    report.row("evaluation times inside the grid's interval", "no" if bad else "yes", "-",
               not bad)
    if bad:
        lo = min(b[0] for b in bad)
        hi = max(b[1] for b in bad)
        report.fail("outside-grid", f"the field was evaluated at t from {lo:.4g} to {hi:.4g}, "
                    "outside the grid's interval (torchdiffeq#78: a learned field is undefined "
                    "there); fix: steps that end on the last grid time")
    return report
