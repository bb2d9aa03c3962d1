"""Sampler error and cost against NFE for every ODE method, with a closed-form oracle as truth.

Target: the 8gaussians mixture (fm_numpy.analytic.eight_gaussians_mixture, std 0.1)
under the CondOT path; its marginal velocity u_t(x) is known in closed form, so the only
error left is the solver's. The same x0 (seeded) is integrated from t=0 to t=1 by
  - fm_numpy: euler, midpoint, heun, rk4 on uniform grids of 1..256 steps, and SciPy's
    RK45 and DOP853 at rtol = atol = 1e-2 .. 1e-8;
  - fm_torch: torchdiffeq's dopri5 at the same tolerances (the torch oracle field),
and compared with a DOP853 solution at rtol = atol = 1e-11. Error: root mean square
over samples of |x_1 - x_1^ref|. Cost: wall time of the whole batch, median of several
repetitions with min and max. Also Liu et al.'s straightness S of the oracle flow
(fm_numpy.straightness), which says how far one Euler step is from exact.

    python -m benchmarks.bench_solvers [--quick]

Prints a markdown table and writes docs/img/bench_solvers.png (error vs NFE, log-log).
"""

import time

import numpy as np

from benchmarks.common import announce_plot, plot_path, run_from_command_line, save_figure
from fm_numpy.analytic import eight_gaussians_mixture
from fm_numpy.solvers import odeint
from fm_numpy.straightness import straightness

MARKDOWN = True  # benchmarks.run copies this module's output into docs/benchmarks.md as is
FIXED = ("euler", "midpoint", "heun", "rk4")


def _timed(reps, fn, *args, **kwargs):
    times, out = [], None
    for _ in range(reps):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        times.append(time.perf_counter() - start)
    return out, np.array(times)


def run(quick=False):
    n = 200 if quick else 1000
    reps = 1 if quick else 3
    steps_list = [1, 2, 4, 8, 16, 32] if quick else [1, 2, 4, 8, 16, 32, 64, 128, 256]
    tols = [1e-2, 1e-4, 1e-6] if quick else [1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8]
    field = eight_gaussians_mixture()
    x0 = np.random.default_rng(0).standard_normal((n, 2))  # (n, 2)
    ends = np.array([0.0, 1.0])
    x_ref = odeint(field, x0, ends, "DOP853", rtol=1e-11, atol=1e-11)[-1]  # (n, 2)

    def rms(x1):
        return float(np.sqrt(np.mean(np.sum((np.asarray(x1, np.float64) - x_ref) ** 2, axis=1))))

    rows = []
    for method in FIXED:
        for steps in steps_list:
            grid = np.linspace(0, 1, steps + 1)
            (xs, nfe), t = _timed(reps, odeint, field, x0, grid, method, return_nfe=True)
            rows.append(("fm_numpy", method, f"{steps} steps", nfe, rms(xs[-1]), t))
    for method in ("RK45", "DOP853"):
        for tol in tols:
            (xs, nfe), t = _timed(reps, odeint, field, x0, ends, method, return_nfe=True,
                                  rtol=tol, atol=tol)
            rows.append(("fm_numpy", method, f"tol {tol:.0e}", nfe, rms(xs[-1]), t))
    rows += _torch_rows(x0, ends, tols, reps, rms)
    s = straightness(field, x0, np.linspace(0, 1, 257), "rk4")
    return rows, s, n


def _torch_rows(x0, ends, tols, reps, rms):
    try:
        import torch

        from fm_torch.analytic import eight_gaussians_mixture as torch_mixture
        from fm_torch.solvers import odeint as torch_odeint
    except ImportError as e:  # fm_torch is optional for this benchmark
        print(f"(fm_torch rows skipped: {e})")
        return []
    field = torch_mixture()  # fm_torch's odeint keeps dopri5 inside [0, 1]

    x0_t = torch.from_numpy(x0)
    ends_t = torch.tensor(ends, dtype=torch.float64)
    rows = []
    for tol in tols:
        (xs, nfe), t = _timed(reps, torch_odeint, field, x0_t, ends_t, "dopri5",
                              return_nfe=True, rtol=tol, atol=tol)
        rows.append(("fm_torch", "dopri5", f"tol {tol:.0e}", nfe, rms(xs[-1].numpy()), t))
    grid = torch.linspace(0, 1, 33, dtype=torch.float64)
    (xs, nfe), t = _timed(reps, torch_odeint, field, x0_t, grid, "rk4", return_nfe=True)
    rows.append(("fm_torch", "rk4", "32 steps", nfe, rms(xs[-1].numpy()), t))
    return rows


def table(rows, s, n):
    lines = [
        f"Solvers on the 8gaussians oracle (CondOT, {n} samples, float64); error = RMS "
        "|x1 - x1_ref| against DOP853 at tol 1e-11; time = whole batch, median [min, max].",
        "",
        "| package | method | setting | NFE | RMS error | time ms |",
        "|---|---|---|---:|---:|---:|",
    ]
    for pkg, method, setting, nfe, err, t in rows:
        lines.append(f"| {pkg} | {method} | {setting} | {nfe} | {err:.2e} | "
                     f"{1e3 * np.median(t):.1f} [{1e3 * t.min():.1f}, {1e3 * t.max():.1f}] |")
    lines += [
        "",
        f"Straightness S of the oracle flow (Liu et al.; rk4 with 256 steps, then "
        f"{s['nfe_measure']} more evaluations): S = {s['straightness']:.4f} "
        f"(per-sample median {np.median(s['per_sample']):.4f}, max {s['per_sample'].max():.3f}).",
    ]
    for method in FIXED:
        errs = [(r[3], r[4]) for r in rows if r[0] == "fm_numpy" and r[1] == method]
        if len(errs) >= 3:  # observed order from the two finest grids still above round-off
            (n1, e1), (n2, e2) = errs[-3], errs[-2]
            lines.append(f"- {method}: observed order {np.log(e1 / e2) / np.log(n2 / n1):.2f} "
                         f"between NFE {n1} and {n2}")
    return "\n".join(lines)


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), dpi=80)
    keys = sorted({(r[0], r[1]) for r in rows}, key=lambda k: (k[0], k[1]))
    for pkg, method in keys:
        sel = [r for r in rows if (r[0], r[1]) == (pkg, method)]
        label = method if pkg == "fm_numpy" else f"{method} (torch)"
        style = "o-" if method in FIXED else "s--"
        err = [max(r[4], 1e-16) for r in sel]
        axes[0].loglog([r[3] for r in sel], err, style, ms=3, label=label)
        axes[1].loglog([1e3 * np.median(r[5]) for r in sel], err, style, ms=3, label=label)
    axes[0].set_xlabel("NFE")
    axes[1].set_xlabel("wall time, ms (whole batch)")
    for ax in axes:
        ax.set_ylabel("RMS error at t = 1")
        ax.grid(True, which="major", alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    axes[0].set_title("error vs NFE (8gaussians oracle)", fontsize=9)
    axes[1].set_title("error vs cost", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def main(quick=False, out_dir=None):
    """Run, print the markdown table, write the PNG; returns the rows."""
    rows, s, n = run(quick)
    print(table(rows, s, n))
    path = plot_path("bench_solvers", quick, out_dir)
    plot(rows, path)
    announce_plot(path, quick, "solver error vs NFE")
    return rows


if __name__ == "__main__":
    run_from_command_line(main, __doc__, "fewer grids and repetitions")
