"""What the benchmark scripts share: where plots go, how they are saved and announced."""

import argparse
import os

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
