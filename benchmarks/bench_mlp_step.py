"""One training step (x0 and t drawn, path sample, forward, loss, backward, Adam) on CPU.

Implementations, all float32, 2-D data, CondOT, Adam lr 1e-3:
  - fm_numpy: our MLP with its handwritten backward and our Adam (the fast kernels of
    fm_numpy.kernels on; "fm_numpy plain" is the same model with `fast = False`);
  - "fm_numpy, N kernel threads" (when the BLAS runs on N > 1 threads and
    FM_NUMPY_THREADS is unset): fm_numpy with its elementwise kernels on N threads too;
  - fm_torch: our torch MLP, torch.optim.Adam;
  - Meta: the model of Meta's 2-D notebook (flow_matching examples: x and t
    concatenated, Linear + Swish x 4, Linear out) trained through Meta's
    `flow_matching` AffineProbPath(CondOTScheduler), torch.optim.Adam.
Sizes: "bench" (hidden 256, depth 3, batch 512) and "notebook" (hidden 512, depth 4,
batch 4096: Meta's notebook). All run in one process with the same thread count
(torch.set_num_threads = the BLAS thread count), interleaved: each repetition times a
block of steps of every implementation in turn, the order reversed every other
repetition, so machine load hits all alike. Prints median [q25, q75] ms per step and the
ratios numpy/Meta and numpy/torch (goal <= 0.9), and writes bench_mlp_step.png. Then the
parts of the fm_numpy step at the notebook size (matrix products against elementwise work,
beside torch's kernels for the same shapes: benchmarks/mlp_step_parts.py).

Meta's package is installed for the benchmark only (benchmarks.bench_libraries.
ensure_packages: pip --no-deps into runs/bench/site); without it its rows say so.

    python -m benchmarks.bench_mlp_step [--quick]
"""

import functools
import os

import numpy as np

from benchmarks.common import (
    announce_plot,
    blas_threads,
    interleaved,
    plot_path,
    run_from_command_line,
    save_figure,
)
from benchmarks.mlp_step_parts import SIZES  # hidden, depth, batch

MARKDOWN = True
DIM, LR = 2, 1e-3


def numpy_stepper(hidden, depth, fast=True):
    from fm_numpy.models.mlp import MLP
    from fm_numpy.optim import Adam
    from fm_numpy.paths import AffinePath, CondOT

    model = MLP(DIM, hidden, depth, dtype=np.float32)
    model.fast = fast
    opt = Adam(model.params, lr=LR)
    opt.fast = fast
    path, rng = AffinePath(CondOT()), np.random.default_rng(1)

    def step(x1):
        x0 = rng.standard_normal(x1.shape, dtype=np.float32)  # (B, D)
        t = rng.random(x1.shape[0], dtype=np.float32)  # (B,)
        xt, ut = path.sample(x0, x1, t)
        diff = model.forward(xt, t)
        diff -= ut  # (B, D) v - ut
        loss = float(np.mean(diff * diff))
        diff *= 2.0 / diff.size  # dL/dv of the mean squared error
        opt.step(model.backward(diff))
        return loss

    return step


def torch_stepper(hidden, depth):
    import torch

    from fm_torch.models.mlp import MLP
    from fm_torch.paths import AffinePath, CondOT

    model = MLP(DIM, hidden, depth, dtype=torch.float32)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    path, gen = AffinePath(CondOT()), torch.Generator().manual_seed(1)

    def step(x1):
        x1 = torch.from_numpy(x1)
        x0 = torch.randn(x1.shape, generator=gen)  # (B, D)
        t = torch.rand(x1.shape[0], generator=gen)  # (B,)
        xt, ut = path.sample(x0, x1, t)
        loss = torch.mean((model(xt, t) - ut) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    return step


def meta_stepper(hidden, depth):
    """Meta's notebook recipe; raises ImportError when flow_matching is not installed."""
    import torch
    from flow_matching.path import AffineProbPath
    from flow_matching.path.scheduler import CondOTScheduler
    from torch import nn

    class Swish(nn.Module):
        def forward(self, x):
            return torch.sigmoid(x) * x

    class NotebookMLP(nn.Module):  # the notebook's architecture: [x, t] -> (Linear, Swish)^depth
        def __init__(self):
            super().__init__()
            widths = [DIM + 1] + [hidden] * depth
            layers = []
            for i in range(depth):
                layers += [nn.Linear(widths[i], widths[i + 1]), Swish()]
            self.main = nn.Sequential(*layers, nn.Linear(hidden, DIM))

        def forward(self, x, t):
            return self.main(torch.cat([x, t.reshape(-1, 1).expand(x.shape[0], 1)], dim=1))

    torch.manual_seed(0)
    model = NotebookMLP()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    path, gen = AffineProbPath(scheduler=CondOTScheduler()), torch.Generator().manual_seed(1)

    def step(x1):
        x1 = torch.from_numpy(x1)
        x0 = torch.randn(x1.shape, generator=gen)  # (B, D)
        t = torch.rand(x1.shape[0], generator=gen)  # (B,)
        s = path.sample(t=t, x_0=x0, x_1=x1)
        loss = torch.pow(model(s.x_t, s.t) - s.dx_t, 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    return step


def with_kernel_threads(step, threads):
    """`step` with fm_numpy's elementwise kernels on `threads` threads (FM_NUMPY_THREADS,
    read by fm_numpy.kernels at each call; one thread is their default)."""

    def run(x1):
        before = os.environ.get("FM_NUMPY_THREADS")
        os.environ["FM_NUMPY_THREADS"] = str(threads)
        try:
            return step(x1)
        finally:
            if before is None:
                del os.environ["FM_NUMPY_THREADS"]
            else:
                os.environ["FM_NUMPY_THREADS"] = before

    return run


def make_steppers(hidden, depth, notes):
    steppers = {"fm_numpy": numpy_stepper(hidden, depth),
                "fm_numpy plain": numpy_stepper(hidden, depth, fast=False),
                "fm_torch": torch_stepper(hidden, depth)}
    threads = blas_threads()
    if threads > 1 and "FM_NUMPY_THREADS" not in os.environ:  # torch spreads its SiLU too
        steppers[f"fm_numpy, {threads} kernel threads"] = with_kernel_threads(
            numpy_stepper(hidden, depth), threads)
    try:
        steppers["Meta flow_matching"] = meta_stepper(hidden, depth)
    except Exception as e:  # not installed, or a changed API
        notes.append(f"Meta's flow_matching could not be set up ({type(e).__name__}: {e})")
    return steppers


def run(size, reps, steps_per_rep, notes):
    from fm_numpy.data import sample_toy

    hidden, depth, batch = SIZES[size]
    steppers = make_steppers(hidden, depth, notes)
    x1s = [sample_toy("8gaussians", batch, np.random.default_rng(k), dtype=np.float32)
           for k in range(steps_per_rep)]
    for step in steppers.values():  # warm-up: buffers, allocator, BLAS threads
        for x1 in x1s[:3]:
            step(x1)

    def steps(step):
        for x1 in x1s:
            step(x1)

    times = interleaved({name: functools.partial(steps, step) for name, step in
                         steppers.items()}, reps, warmup=0)
    return {k: np.array(v) / steps_per_rep for k, v in times.items()}


def _ratio(times, a, b):
    if a not in times or b not in times:
        return "n/a"
    per_rep = times[a] / times[b]
    return (f"{np.median(times[a]) / np.median(times[b]):.3f} (per repetition: median "
            f"{np.median(per_rep):.3f}, q25 {np.percentile(per_rep, 25):.3f}, "
            f"q75 {np.percentile(per_rep, 75):.3f})")


def report(results, threads, reps, steps_per_rep):
    lines = [f"One MLP training step, dim {DIM}, float32, {threads} thread(s), "
             f"{reps} interleaved repetitions of {steps_per_rep} steps per implementation "
             f"(`python -m benchmarks.bench_mlp_step`).", ""]
    for size, times in results.items():
        hidden, depth, batch = SIZES[size]
        lines += [f"**{size} size**: hidden {hidden}, depth {depth}, batch {batch}", "",
                  "| implementation | ms / step, median [q25, q75] | min ms |", "|---|---|---:|"]
        for k, v in times.items():
            q25, q75 = np.percentile(v, [25, 75]) * 1e3
            lines.append(f"| {k} | {1e3 * np.median(v):.2f} [{q25:.2f}, {q75:.2f}] "
                         f"| {1e3 * v.min():.2f} |")
        lines += ["", f"- fm_numpy / Meta: {_ratio(times, 'fm_numpy', 'Meta flow_matching')}"
                      " (goal <= 0.9)",
                  f"- fm_numpy / fm_torch: {_ratio(times, 'fm_numpy', 'fm_torch')} (goal <= 0.9)",
                  f"- fm_numpy / fm_numpy plain: {_ratio(times, 'fm_numpy', 'fm_numpy plain')}"]
        for k in times:
            if k.startswith("fm_numpy, "):
                lines += [f"- {k} / Meta: {_ratio(times, k, 'Meta flow_matching')}",
                          f"- {k} / fm_torch: {_ratio(times, k, 'fm_torch')}"]
        lines.append("")
    return "\n".join(lines)


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.5), dpi=80)
    for ax, (size, times) in zip(np.atleast_1d(axes), results.items(), strict=True):
        ax.boxplot([1e3 * times[k] for k in times], tick_labels=list(times))
        ax.set_ylabel("ms per training step")
        hidden, depth, batch = SIZES[size]
        ax.set_title(f"{size}: {hidden}x{depth}, batch {batch}", fontsize=9)
        ax.tick_params(axis="x", labelrotation=20, labelsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def main(quick=False, out_dir=None):
    """Run both sizes (quick: fewer repetitions), print the tables, write the PNG.

    Returns {size: {implementation: median seconds per step}}.
    """
    import torch

    from benchmarks.peers import ensure_packages

    notes = ensure_packages()
    threads = blas_threads()  # what the BLAS runs on: torch gets as many
    torch.set_num_threads(threads)
    # (repetitions, steps per repetition); quick: the plumbing only (the notebook size's
    # batch of 4096 costs about a second a step for each of four libraries)
    plan = {"bench": (2, 3), "notebook": (1, 1)} if quick else {"bench": (20, 20),
                                                                "notebook": (15, 3)}
    results = {size: run(size, *plan[size], notes) for size in SIZES}
    for size in SIZES:
        print(report({size: results[size]}, threads, *plan[size]))
    from benchmarks import mlp_step_parts

    hidden, depth, batch = SIZES["notebook"]  # where the time goes at the notebook size
    print(f"Parts of the fm_numpy step at the notebook size ({threads} thread(s), medians of "
          f"{1 if quick else 9} interleaved repetitions, `python -m benchmarks.mlp_step_parts`):\n")
    print(mlp_step_parts.report(mlp_step_parts.measure(hidden, depth, batch, 1 if quick else 9),
                                float(np.median(results["notebook"]["fm_numpy"]))))
    for n in dict.fromkeys(notes):
        print(f"- note: {n}")
    path = plot_path("bench_mlp_step", quick, out_dir)
    plot(results, path)
    announce_plot(path, quick, "MLP training step")
    return {s: {k: float(np.median(v)) for k, v in r.items()} for s, r in results.items()}


if __name__ == "__main__":
    run_from_command_line(main, __doc__, "fewer repetitions")
