"""Sampling speed side by side: per-call overhead at 20 NFE, and chunked vs one-pass batches.

1. Per call, 20 NFE (midpoint, 10 steps), the small MLP (256 x 3, 2-D), float32, at a
   batch of 16 points (where the solver's own overhead shows) and of 2000 (as in
   bench_libraries): fm_numpy.solvers.odeint, fm_torch.solvers.odeint (only_last and
   the whole trajectory), torchcfm's way (its examples: torchdiffeq.odeint in no_grad)
   and Meta's flow_matching ODESolver.sample (step_size 0.1), the same torch network
   for all torch rows. Interleaved repetitions in one process; median ms per call.
2. Many points: N points through a 512-wide MLP (depth 3, euler 4 steps), in one pass
   (odeint, only_last) against fm_numpy.sampling.sample_in_chunks with chunk 1024, and
   the torch twins. Interleaved; ratio chunked / one pass.

torchcfm and Meta's package are installed for the benchmark only (bench_libraries.
ensure_packages). Threads: the BLAS thread count for both frameworks.

    python -m benchmarks.bench_sampling [--quick]
"""


import numpy as np

from benchmarks.common import blas_threads, interleaved, run_from_command_line

MARKDOWN = True


def _interleave(fns, reps):
    return {k: np.array(v) for k, v in interleaved(fns, reps).items()}


def overhead_rows(batch, reps, notes):
    import torch

    from fm_numpy.models.mlp import MLP
    from fm_numpy.solvers import odeint as np_odeint
    from fm_torch.models.mlp import MLP as TorchMLP
    from fm_torch.solvers import odeint as torch_odeint

    np_model, model = MLP(2, 256, 3, dtype=np.float32), TorchMLP(2, 256, 3)
    x0 = torch.randn((batch, 2), generator=torch.Generator().manual_seed(0))
    x0_np, grid, grid_np = x0.numpy(), torch.linspace(0, 1, 11), np.linspace(0, 1, 11)
    fns = {
        "fm_numpy odeint": lambda: np_odeint(np_model, x0_np, grid_np, "midpoint",
                                             only_last=True),
        "fm_torch odeint (only_last)": lambda: torch_odeint(model, x0, grid, "midpoint",
                                                            only_last=True),
        "fm_torch odeint (trajectory)": lambda: torch_odeint(model, x0, grid, "midpoint")[-1],
    }
    try:
        import torchdiffeq

        def cfm():
            with torch.no_grad():
                return torchdiffeq.odeint(lambda t, x: model(x, t), x0, grid,
                                          method="midpoint")[-1]

        fns["torchcfm (torchdiffeq.odeint)"] = cfm
    except ImportError as e:
        notes.append(f"torchdiffeq: {e}")
    try:
        from flow_matching.solver import ODESolver
        from flow_matching.utils import ModelWrapper

        class Wrapped(ModelWrapper):
            def forward(self, x, t, **extras):
                return self.model(x, t)

        solver = ODESolver(velocity_model=Wrapped(model))
        fns["Meta ODESolver"] = lambda: solver.sample(
            x_init=x0, step_size=0.1, method="midpoint", time_grid=torch.tensor([0.0, 1.0]))
    except Exception as e:
        notes.append(f"Meta's flow_matching could not be set up ({type(e).__name__}: {e})")
    return _interleave(fns, reps)


def chunk_rows(n, reps):
    import torch

    from fm_numpy.models.mlp import MLP
    from fm_numpy.sampling import sample_in_chunks
    from fm_numpy.solvers import odeint as np_odeint
    from fm_torch.models.mlp import MLP as TorchMLP
    from fm_torch.sampling import sample_in_chunks as torch_chunks
    from fm_torch.solvers import odeint as torch_odeint

    np_model, model = MLP(2, 512, 3, dtype=np.float32), TorchMLP(2, 512, 3)
    x0 = torch.randn((n, 2), generator=torch.Generator().manual_seed(0))
    x0_np, grid, grid_np = x0.numpy(), torch.linspace(0, 1, 5), np.linspace(0, 1, 5)
    fns = {
        "fm_numpy one pass": lambda: np_odeint(np_model, x0_np, grid_np, only_last=True),
        "fm_numpy chunks of 1024": lambda: sample_in_chunks(np_model, x0_np, grid_np),
        "fm_torch one pass": lambda: torch_odeint(model, x0, grid, only_last=True),
        "fm_torch chunks of 1024": lambda: torch_chunks(model, x0, grid),
    }
    return _interleave(fns, reps)


def _table(times, ref):
    lines = ["| sampler | ms / call, median [q25, q75] | vs " + ref + " |", "|---|---|---:|"]
    for k, v in times.items():
        q25, q75 = np.percentile(v, [25, 75]) * 1e3
        ratio = np.median(v) / np.median(times[ref]) if ref in times else float("nan")
        lines.append(f"| {k} | {1e3 * np.median(v):.2f} [{q25:.2f}, {q75:.2f}] | {ratio:.2f} |")
    return lines


def main(quick=False, out_dir=None):
    import torch

    from benchmarks.peers import ensure_packages

    notes = ensure_packages()
    threads = blas_threads()  # what the BLAS runs on: torch gets as many
    torch.set_num_threads(threads)
    reps, n = (3, 4096) if quick else (15, 50_000)
    lines = [f"Sampling, float32, {threads} thread(s), interleaved repetitions in one process "
             f"(`python -m benchmarks.bench_sampling`).", ""]
    cfm = "torchcfm (torchdiffeq.odeint)"
    for batch in (16, 2000):
        times = overhead_rows(batch, reps * 2, notes)
        lines += [f"**20 NFE (midpoint, 10 steps), MLP 256x3, batch {batch}**, "
                  f"{reps * 2} repetitions:", "", *_table(times, cfm), ""]
    times = chunk_rows(n, max(3, reps // 3))
    lines += [f"**{n} points, MLP 512x3, euler 4 steps**, {max(3, reps // 3)} repetitions:", "",
              *_table(times, "fm_numpy one pass"), ""]
    for pkg in ("fm_numpy", "fm_torch"):
        r = np.median(times[f"{pkg} chunks of 1024"]) / np.median(times[f"{pkg} one pass"])
        lines.append(f"- {pkg}: chunks of 1024 / one pass = {r:.2f}")
    lines += [f"- note: {m}" for m in dict.fromkeys(notes)]
    print("\n".join(lines))


if __name__ == "__main__":
    run_from_command_line(main, __doc__, "fewer repetitions, 4096 points")
