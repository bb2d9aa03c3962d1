"""The conformance kit on code nobody here wrote: Meta's `flow_matching` and `torchcfm`.

Every scheduler of flow_matching through `AffineProbPath`, its `ODESolver` (fixed-step
methods on our grid, and dopri5) and `compute_likelihood` (exact and Hutchinson); the
four conditional flow matchers of torchcfm through `sample_location_and_conditional_flow`.
Each adapter below is a few lines that call the library the way its docs do and hand
the result to fm_torch.conformance. Both libraries use t = 0 for the source (noise) and
t = 1 for the data, like us, so no time conversion is needed.

They are installed at benchmark time exactly as bench_libraries does (`pip install
--no-deps` into runs/bench/site, appended to sys.path); if they cannot be, the rows say so.
Nothing is timed: the table is the kit's verdict, findings and notes. Results are recorded
in docs/conformance.md.

    python -m benchmarks.bench_conformance
"""

import importlib.metadata
import os
import sys

from benchmarks.common import run_from_command_line
from benchmarks.peers import SITE, ensure_packages

MARKDOWN = True


def _version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        for entry in os.listdir(SITE) if os.path.isdir(SITE) else ():
            if entry.startswith(name.replace("-", "_") + "-") and entry.endswith(".dist-info"):
                return entry[len(name) + 1:-len(".dist-info")]
        return "?"


def _per_sample(t, x):
    """Both libraries want t of shape (B,): a scalar t is broadcast (noted in the table)."""
    import torch

    t = torch.as_tensor(t, dtype=x.dtype)
    return t.expand(x.shape[0]) if t.ndim == 0 else t


# ---------------------------------------------------------------- Meta's flow_matching
def meta_cases():
    import torch
    from flow_matching.path import AffineProbPath
    from flow_matching.path.scheduler import (
        CondOTScheduler,
        CosineScheduler,
        LinearVPScheduler,
        PolynomialConvexScheduler,
        VPScheduler,
    )
    from flow_matching.solver import ODESolver

    from fm_torch import conformance as T
    from fm_torch.likelihood import standard_normal_log_prob

    def path_sample(scheduler, broadcast=True):
        path = AffineProbPath(scheduler=scheduler)

        def sample(x0, x1, t):
            s = path.sample(x_0=x0, x_1=x1, t=_per_sample(t, x0) if broadcast else t)
            return s.x_t, s.dx_t
        return sample

    cases = []
    for label, sched, name, args in [
        ("CondOTScheduler()", CondOTScheduler(), "condot", {}),
        ("PolynomialConvexScheduler(n=2)", PolynomialConvexScheduler(n=2), "polynomial",
         {"n": 2.0}),
        ("CosineScheduler()", CosineScheduler(), "cosine", {}),
        ("LinearVPScheduler()", LinearVPScheduler(), "linear_vp", {}),
        ("VPScheduler()", VPScheduler(), "vp", {}),
    ]:
        cases.append((f"AffineProbPath({label}).sample", f"path {name}",
                      lambda s=sched, n=name, a=args: T.check_path(path_sample(s), n, **a)))
    cases.append(("AffineProbPath(CondOTScheduler()).sample, t passed as given",
                  "path condot", lambda: T.check_path(path_sample(CondOTScheduler(), False))))

    def ode_sampler(method, step_size=None):
        def odeint(v, x0, t_grid):
            solver = ODESolver(velocity_model=v)
            return solver.sample(x_init=x0, step_size=step_size, method=method,
                                 time_grid=t_grid, return_intermediates=True)
        return odeint

    for method, order, nfe in [("euler", None, None), ("midpoint", None, None),
                               ("rk4", None, None), ("heun3", 3, 3)]:
        cases.append((f"ODESolver.sample(method={method!r}, time_grid=grid)", f"solver {method}",
                      lambda m=method, o=order, k=nfe: T.check_solver(
                          ode_sampler(m), m, **({"order": o, "nfe_per_step": k} if o else {}))))
    cases.append(("ODESolver.sample(method='dopri5', time_grid=grid)", "solver dopri5",
                  lambda: T.check_solver(ode_sampler("dopri5"), "dopri5")))

    def sampler_by_step_size(v, x0, t_grid):  # the README's way: step_size, time_grid=grid
        h = float(abs(t_grid[1] - t_grid[0]))
        return ode_sampler("midpoint", step_size=h)(v, x0, t_grid)

    cases.append(("ODESolver.sample(method='midpoint', step_size=h, time_grid=grid)",
                  "solver midpoint", lambda: T.check_solver(sampler_by_step_size, "midpoint")))

    def end_points_only(v, x0, t_grid):  # flow_matching#67: the grid's ends, no step_size
        solver = ODESolver(velocity_model=v)
        return solver.sample(x_init=x0, step_size=None, method="midpoint",
                             time_grid=t_grid[[0, -1]])
    cases.append(("ODESolver.sample(method='midpoint', step_size=None, time_grid=[t0, t1])",
                  "solver midpoint", lambda: T.check_solver(end_points_only, "midpoint")))

    def meta_likelihood(exact, dtype=None):
        def ll(v, x1):
            torch.manual_seed(0)  # the Hutchinson probe is drawn from the global generator
            solver = ODESolver(velocity_model=v)
            _, log_p = solver.compute_likelihood(
                x_1=x1 if dtype is None else x1.to(dtype), log_p0=standard_normal_log_prob,
                step_size=0.02, method="midpoint", exact_divergence=exact)
            return log_p
        return ll

    cases.append(("ODESolver.compute_likelihood(exact_divergence=True), midpoint, 50 steps",
                  "likelihood exact", lambda: T.check_likelihood(meta_likelihood(True))))
    cases.append(("ODESolver.compute_likelihood(exact_divergence=False), midpoint, 50 steps",
                  "likelihood hutchinson",
                  lambda: T.check_likelihood(meta_likelihood(False), "hutchinson")))
    cases.append(("the same, x1 cast to float32", "likelihood hutchinson",
                  lambda: T.check_likelihood(meta_likelihood(False, torch.float32),
                                             "hutchinson")))
    return cases


# ---------------------------------------------------------------- torchcfm
def torchcfm_cases():
    import torch
    from torchcfm.conditional_flow_matching import (
        ConditionalFlowMatcher,
        ExactOptimalTransportConditionalFlowMatcher,
        TargetConditionalFlowMatcher,
        VariancePreservingConditionalFlowMatcher,
    )

    from fm_torch import conformance as T

    def matcher_sample(fm):
        def sample(x0, x1, t):
            torch.manual_seed(0)
            _, xt, ut = fm.sample_location_and_conditional_flow(x0, x1, _per_sample(t, x0))
            return xt, ut
        return sample

    return [
        ("ConditionalFlowMatcher(sigma=0)", "path condot",
         lambda: T.check_path(matcher_sample(ConditionalFlowMatcher(sigma=0.0)), "condot")),
        ("ConditionalFlowMatcher(sigma=0.1)", "path condot",
         lambda: T.check_path(matcher_sample(ConditionalFlowMatcher(sigma=0.1)), "condot")),
        ("ExactOptimalTransportConditionalFlowMatcher(sigma=0)", "path condot",
         lambda: T.check_path(matcher_sample(
             ExactOptimalTransportConditionalFlowMatcher(sigma=0.0)), "condot")),
        ("TargetConditionalFlowMatcher(sigma=1e-4)", "path sigma_min_ot(1e-4)",
         lambda: T.check_path(matcher_sample(TargetConditionalFlowMatcher(sigma=1e-4)),
                              "sigma_min_ot", sigma_min=1e-4)),
        ("VariancePreservingConditionalFlowMatcher(sigma=0)", "path cosine",
         lambda: T.check_path(matcher_sample(
             VariancePreservingConditionalFlowMatcher(sigma=0.0)), "cosine")),
    ]


def _cell(text):
    return text.replace("|", "\\|")


def run(cases_fn, library):
    rows = []
    try:
        cases = cases_fn()
    except Exception as e:  # noqa: BLE001 -- a missing or broken library becomes one row
        return [(library, "-", "-", f"could not be imported: {type(e).__name__}: {e}", "")]
    for what, check, fn in cases:
        try:
            report = fn()
        except Exception as e:  # noqa: BLE001
            rows.append((library, what, check, "error", f"{type(e).__name__}: {e}"))
            continue
        detail = "; ".join(report.findings + [f"note: {n}" for n in report.notes])
        rows.append((library, what, check, "pass" if report.passed else "FAIL", detail))
    return rows


def main(quick=False):
    notes = ensure_packages()
    import torch
    import torchdiffeq

    torch.set_num_threads(1)
    print(f"flow_matching {_version('flow_matching')}, torchcfm {_version('torchcfm')}, "
          f"torchdiffeq {getattr(torchdiffeq, '__version__', '?')}, torch {torch.__version__}; "
          "a scalar t is broadcast to shape (B,) by the adapters unless the row says "
          "'passed as given'.\n")
    for n in notes:
        print(f"- {n}")
    rows = run(meta_cases, "flow_matching") + run(torchcfm_cases, "torchcfm")
    print("| library | adapter | check | verdict | findings and notes |")
    print("|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(_cell(str(c)) for c in r) + " |")
    passed = sum(r[3] == "pass" for r in rows)
    print(f"\n{passed} of {len(rows)} pass.")
    return rows


if __name__ == "__main__":
    if SITE not in sys.path:
        sys.path.append(SITE)
    run_from_command_line(main, __doc__, "the same (nothing here is slow)")
