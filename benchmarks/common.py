"""What the benchmark scripts share: where plots go, how they are saved and announced, how
candidates are timed against each other, and how many BLAS threads they ran on."""

import argparse
import os
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMG_DIR = os.path.join(ROOT, "docs", "img")  # full runs: the plots docs/benchmarks.md shows
QUICK_IMG_DIR = os.path.join(ROOT, "runs", "bench", "img")  # quick runs stay out of docs/


def plot_path(name, quick, out_dir=None):
    """docs/img/<name>.png for a full run, runs/bench/img/<name>.png for a quick one."""
    return os.path.join(out_dir or (QUICK_IMG_DIR if quick else IMG_DIR), f"{name}.png")


def save_figure(fig, path):
    """Write a matplotlib figure as PNG atomically and free it."""
    import matplotlib.pyplot as plt

    from fm_numpy.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def interleaved(fns, reps, warmup=1):
    """Seconds per call of each candidate, {name: [reps floats]}.

    Each repetition calls every candidate once, in the listed order on even repetitions and
    reversed on odd ones, so a load that comes and goes on a shared machine falls on all of
    them alike (timing one candidate after another would give it to whichever ran then).
    `warmup` untimed calls of each first (buffers, allocator, thread pools)."""
    times = {name: [] for name in fns}
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    for r in range(reps):
        for name in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return times


def blas_threads():
    """Threads of the BLAS numpy loaded, as the library itself reports them (threadpoolctl's
    threadpool_info; environment variables do not say what it chose), so torch can be set to
    the same count. Without threadpoolctl: the usable cores, OpenBLAS's own default."""
    import numpy  # noqa: F401  (load its BLAS before asking)

    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
            os.cpu_count() or 1)
    counts = [d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"]
    return max(counts, default=1)


def announce_plot(path, quick, caption):
    """A markdown image link for docs/benchmarks.md (full runs), a plain path otherwise."""
    if quick:
        print(f"\n(plot: {os.path.relpath(path, ROOT)})")
    else:
        print(f"\n![{caption}](img/{os.path.basename(path)})")


def run_from_command_line(main, doc, quick_help):
    """`python -m benchmarks.bench_x [--quick]`."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    main(quick=parser.parse_args().quick)
