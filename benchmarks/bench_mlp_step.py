"""One training step (forward, loss, backward, Adam) of the NumPy MLP vs the torch MLP on CPU.

2-D data, hidden 256, depth 3, batch 512, float32, CondOT targets. Both run in one
process with the same thread count (torch.set_num_threads = the BLAS thread count),
interleaved: each repetition times a block of steps of one, then of the other. Prints
median and interquartile range per step and the ratio numpy/torch (goal <= 1.0), and
writes benchmarks/results/bench_mlp_step.png.

    python -m benchmarks.bench_mlp_step [--quick]
"""

import argparse
import os
import time

import numpy as np

from fm_numpy.mlp import MLP
from fm_numpy.optim import Adam

DIM, HIDDEN, DEPTH, BATCH = 2, 256, 3, 512


def _blas_threads():
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        if os.environ.get(var):
            return int(os.environ[var])
    try:
        from threadpoolctl import threadpool_info

        return int(threadpool_info()[0]["num_threads"])
    except Exception:  # threadpoolctl is optional; OpenBLAS defaults to the core count
        return os.cpu_count() or 1


def _batches(n, seed=0):
    rng = np.random.default_rng(seed)
    x1 = rng.standard_normal((n, BATCH, DIM)).astype(np.float32)
    x0 = rng.standard_normal((n, BATCH, DIM)).astype(np.float32)
    t = rng.uniform(0, 1, (n, BATCH)).astype(np.float32)
    xt = t[..., None] * x1 + (1 - t[..., None]) * x0
    return xt, t, x1 - x0


def numpy_stepper():
    model = MLP(DIM, HIDDEN, DEPTH, dtype=np.float32)
    opt = Adam(model.params, lr=1e-3)

    def step(xt, t, ut):
        v = model.forward(xt, t)
        diff = v - ut  # (B, D)
        loss = float(np.mean(diff * diff))
        diff *= 2.0 / diff.size  # dL/dv of the mean squared error
        opt.step(model.backward(diff))
        return loss

    return step


def torch_stepper():
    import torch

    from fm_torch.models.mlp import MLP as TorchMLP

    model = TorchMLP(DIM, HIDDEN, DEPTH, dtype=torch.float32)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(xt, t, ut):
        xt, t, ut = torch.from_numpy(xt), torch.from_numpy(t), torch.from_numpy(ut)
        loss = torch.mean((model(xt, t) - ut) ** 2)
        opt.zero_grad(set_to_none=False)
        loss.backward()
        opt.step()
        return loss.item()

    return step


def run(reps, steps_per_rep, threads):
    import torch

    torch.set_num_threads(threads)
    xt, t, ut = _batches(steps_per_rep)
    steppers = {"numpy": numpy_stepper(), "torch": torch_stepper()}
    for step in steppers.values():  # warm-up: buffers, allocator, BLAS threads
        for k in range(min(10, steps_per_rep)):
            step(xt[k], t[k], ut[k])
    times = {name: [] for name in steppers}
    for r in range(reps):
        order = list(steppers) if r % 2 == 0 else list(steppers)[::-1]
        for name in order:
            start = time.perf_counter()
            for k in range(steps_per_rep):
                steppers[name](xt[k], t[k], ut[k])
            times[name].append((time.perf_counter() - start) / steps_per_rep)
    return {k: np.array(v) for k, v in times.items()}


def report(times, threads):
    med = {k: float(np.median(v)) for k, v in times.items()}
    lines = [f"MLP training step: dim {DIM}, hidden {HIDDEN}, depth {DEPTH}, batch {BATCH}, "
             f"float32, {threads} thread(s), {len(times['numpy'])} interleaved repetitions",
             f"{'impl':<8}{'median ms':>12}{'q25 ms':>10}{'q75 ms':>10}{'min ms':>10}"]
    for k, v in times.items():
        q25, q75 = np.percentile(v, [25, 75])
        lines.append(f"{k:<8}{1e3 * med[k]:>12.3f}{1e3 * q25:>10.3f}{1e3 * q75:>10.3f}"
                     f"{1e3 * v.min():>10.3f}")
    ratios = times["numpy"] / times["torch"]
    lines.append(f"ratio numpy/torch: median of medians {med['numpy'] / med['torch']:.3f}, "
                 f"per-repetition ratios q25 {np.percentile(ratios, 25):.3f} "
                 f"median {np.median(ratios):.3f} q75 {np.percentile(ratios, 75):.3f} "
                 f"(goal <= 1.0)")
    return "\n".join(lines)


def plot(times, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.boxplot([1e3 * times[k] for k in times], tick_labels=list(times))
    ax.set_ylabel("ms per training step")
    ratio = np.median(times["numpy"]) / np.median(times["torch"])
    ax.set_title(f"MLP step, batch {BATCH}, hidden {HIDDEN}x{DEPTH}: numpy/torch = {ratio:.2f}")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(quick=False, out_dir=None):
    """Run the benchmark (quick: fewer repetitions), print the table, write the PNG.

    Returns the median seconds per step of each implementation.
    """
    threads = _blas_threads()
    reps, steps = (6, 10) if quick else (30, 20)
    times = run(reps, steps, threads)
    print(report(times, threads))
    out_dir = out_dir or os.path.join(os.path.dirname(__file__), "results")
    plot(times, os.path.join(out_dir, "bench_mlp_step.png"))
    return {k: float(np.median(v)) for k, v in times.items()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    main(quick=parser.parse_args().quick)
