"""`fm-numpy train --data mnist` step time with and without OMP_NUM_THREADS=1 set by the user.

The default MNIST run cuts each batch into slices on threads (fm_numpy/models/threads.py).
Three ways to start it, each a fresh `fm-numpy train` process:
  user sets OMP_NUM_THREADS=1     the README's old advice
  nothing set                     threadpoolctl holds the BLAS at one thread in the slices
  nothing set, no threadpoolctl   the behaviour before (an import of it made to fail)
Step time = (wall of a long run - wall of a short run) / (difference in steps), so the
start-up (imports, MNIST loading) cancels; the three are run in turn, repetition by
repetition (benchmarks.common.interleaved), and the medians reported.

    python -m benchmarks.bench_blas_threads [--quick] [--reps 3] [--steps 60]
"""

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile

import numpy as np

from benchmarks.common import ROOT, interleaved

MARKDOWN = True
_BLAS_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _cpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines()
                    if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown CPU"


def _train(env, steps, work):
    out = tempfile.mkdtemp(dir=work)
    cmd = [sys.executable, "-m", "fm_numpy.cli", "train", "--data", "mnist", "--steps",
           str(steps), "--warmup", "0", "--ckpt-every", "100000", "--no-progress", "--out", out]
    subprocess.run(cmd, env=env, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    shutil.rmtree(out)


def arms(work):
    base = {k: v for k, v in os.environ.items() if k not in _BLAS_VARS}
    base["MPLBACKEND"] = "Agg"
    blocker = os.path.join(work, "no_threadpoolctl")
    os.makedirs(blocker, exist_ok=True)
    with open(os.path.join(blocker, "threadpoolctl.py"), "w") as f:
        f.write("raise ImportError('hidden for the benchmark')\n")
    no_tpc = dict(base, PYTHONPATH=os.pathsep.join(
        [blocker, ROOT, base.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    return {"OMP_NUM_THREADS=1 set by the user": dict(base, OMP_NUM_THREADS="1"),
            "nothing set (threadpoolctl)": base,
            "nothing set, no threadpoolctl (before)": no_tpc}


def main(quick=False, reps=None, steps=None):
    reps = reps or (1 if quick else 3)
    steps = steps or (6 if quick else 60)
    short = max(1, steps // 6)
    with tempfile.TemporaryDirectory() as work:
        envs = arms(work)
        fns = {}
        for name, env in envs.items():
            fns[(name, "long")] = lambda env=env: _train(env, steps, work)
            fns[(name, "short")] = lambda env=env: _train(env, short, work)
        times = interleaved(fns, reps, warmup=0)
    print(f"`fm-numpy train --data mnist` (ConvUNet, batch 32, default slices on threads), "
          f"{_cpu_model()}, {os.cpu_count()} CPUs; ms per step = (wall of {steps} steps - "
          f"wall of {short}) / {steps - short}, {reps} interleaved repetitions.")
    print()
    print("| start | ms per step, median | per repetition |")
    print("|---|---:|---|")
    for name in envs:
        per = (np.array(times[(name, "long")]) - np.array(times[(name, "short")])) / (
            steps - short) * 1e3
        print(f"| {name} | {np.median(per):.0f} | {', '.join(f'{p:.0f}' for p in per)} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6 steps, one repetition")
    parser.add_argument("--reps", type=int)
    parser.add_argument("--steps", type=int)
    a = parser.parse_args()
    main(a.quick, a.reps, a.steps)
