"""`make demo`: flow matching end to end on a CPU in a few minutes.

1. fm_numpy: the NumPy MLP learns a 2-D toy set (8 Gaussians); samples, trajectories,
   the learned field and an animation of the particles flowing are written. Where the
   machine has a second core this runs in a process of its own, beside part 2.
2. fm_torch: a small class-conditional U-Net (base width 16, about 0.2 M parameters)
   learns MNIST for 800 AdamW steps of 64 images (about one epoch) with label dropout
   and an EMA of its weights, on the usable cores but one, in the precision `fm-torch train`
   picks for this CPU (fp32, or bf16 autocast where the CPU has native bf16 and a probe
   finds it faster); then a 10x10 grid (one row per class, guidance 1.75, midpoint,
   20 steps), a trajectory strip (t = 0, 0.1, ..., 1) and the grid forming (a GIF).

    python -m benchmarks.demo            # writes runs/demo/..., prints the paths
    python -m benchmarks.demo --quick    # a few steps only, to check the plumbing

The settings for a full run (longer, or on a GPU): README.md, "Full training".
"""

import argparse
import glob
import math
import os
import shutil
import subprocess
import sys
import time

OUT = os.path.join("runs", "demo")

# The CLI's default model (hidden 256, depth 3, batch 512) for 4000 of its 6000 default
# steps: about 50 s on one core, with clean modes (1200 steps of a 128-wide MLP left
# visible bridges between them).
NUMPY_TRAIN = ["--data", "8gaussians", "--steps", "4000"]
STEPS = 800
TORCH_TRAIN = ["--data", "mnist", "--base", "16", "--mults", "1,2,2", "--batch", "64",
               "--lr", "2e-3", "--ema-decay", "0.995", "--ckpt-every", "200",
               "--sample-every", "400", "--lr-schedule", "cosine"]  # steps, warm-up: --steps
# the guidance of the grid: at this budget w = 1.75 gave the best FD with accuracy >= 0.98
# (docs/benchmarks.md, "Recipes at the demo budget": FD 23.7 = 2.19x floor, accuracy 0.986;
# w = 2: 34.6, 0.992; w = 1.5: 17.8, 0.963)
GUIDANCE = 1.75
QUICK = {"numpy": ["--steps", "50"],
         "torch": ["--steps", "10", "--warmup", "2", "--sample-every", "10", "--n-train", "640"]}


def _run(main, argv, what):
    start = time.perf_counter()
    print(f"\n== {what}\n$ {' '.join(argv)}", flush=True)
    rc = main(argv)
    if rc:
        sys.exit(f"demo: {what} failed with exit status {rc}")
    return time.perf_counter() - start


def _fresh(folder):
    if os.path.isdir(folder):
        shutil.rmtree(folder)  # the demo's own output folder: start over, never resume


def _start_numpy(jobs, log):
    """The fm-numpy commands, one after the other, in a child process (output to `log`)."""
    script = ("import sys, time; from fm_numpy.cli import main; start = time.perf_counter()\n"
              f"for argv in {[argv for argv, _ in jobs]!r}:\n"
              "    print('$ fm-numpy', *argv, flush=True)\n"
              "    rc = main(argv)\n"
              "    if rc: sys.exit(rc)\n"
              "print(f'seconds {time.perf_counter() - start:.3f}')\n")
    os.makedirs(os.path.dirname(log) or ".", exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    print(f"\n== fm-numpy (MLP on 8 Gaussians, then rk4 samples) in the background; log {log}",
          flush=True)
    with open(log, "w") as f:
        return subprocess.Popen([sys.executable, "-c", script], stdout=f, stderr=subprocess.STDOUT,
                                env=env)


def _finish_numpy(job, log):
    """Wait for the background fm-numpy process; its seconds (exit on failure, with its log)."""
    rc = job.wait()
    with open(log) as f:
        text = f.read()
    if rc:
        sys.exit(f"demo: the fm-numpy part failed with exit status {rc}:\n{text[-2000:]}")
    lines = [line for line in text.splitlines() if line.startswith(("$ ", "wrote", "seconds"))]
    print("\n== fm-numpy, done in the background:\n   " + "\n   ".join(lines))
    return float(lines[-1].split()[1])


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.demo")
    parser.add_argument("--quick", action="store_true", help="a few steps, to test the plumbing")
    parser.add_argument("--out", default=OUT, help="output folder (default runs/demo)")
    parser.add_argument("--steps", type=int, default=STEPS,
                        help=f"U-Net training steps of 64 images (default {STEPS}; warm-up 1/16)")
    parser.add_argument("--guidance", type=float, default=GUIDANCE,
                        help=f"guidance w of the grid (default {GUIDANCE:g}; measured "
                             "choices for longer runs: docs/benchmarks.md)")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be a positive integer, got {args.steps}")
    if not math.isfinite(args.guidance):  # said now, not after minutes of training
        parser.error(f"--guidance must be a finite number, got {args.guidance}")
    horizon = ["--steps", str(args.steps), "--warmup", str(max(1, args.steps // 16))]
    from fm_torch.cpu import usable_cores

    # The whole CPU, by processes rather than threads: the NumPy part runs in a process of
    # its own on one core while the U-Net trains on the others (docs/benchmarks.md, "The
    # demo's time": on 2 cores, U-Net threads that share their cores with the NumPy process
    # wait at each of the step's barriers, and the demo took longer than one after the other).
    cores = usable_cores()
    threads = max(1, cores - 1)
    start = time.perf_counter()
    times = {}

    # 1. NumPy MLP on a 2-D set (in the background where there is a second core)
    numpy_dir = os.path.join(args.out, "numpy_8gaussians")
    _fresh(numpy_dir)
    numpy_jobs = [
        (["train", *NUMPY_TRAIN, "--out", numpy_dir, *(QUICK["numpy"] if args.quick else [])],
         "fm-numpy: MLP on 8 Gaussians"),
        (["sample", "--model", os.path.join(numpy_dir, "model.npz"), "--method", "rk4",
          "--steps", "20", "-n", "4000", "--out", os.path.join(numpy_dir, "samples.npz"),
          "--animate", os.path.join(args.out, "numpy_flow.gif")],
         "fm-numpy: sample (rk4, 20 steps)")]
    numpy_log = os.path.join(args.out, "numpy.log")
    background = _start_numpy(numpy_jobs, numpy_log) if cores > 1 else None
    if background is None:
        from fm_numpy.cli import main as fm_numpy_main

        times["numpy"] = sum(_run(fm_numpy_main, argv, what) for argv, what in numpy_jobs)

    try:
        # 2. torch U-Net on MNIST
        from fm_torch.cli import main as fm_torch_main

        mnist_dir = os.path.join(args.out, "mnist")
        _fresh(mnist_dir)
        times["torch train"] = _run(fm_torch_main, [
            "train", *TORCH_TRAIN, *horizon, "--threads", str(threads), "--out", mnist_dir,
            *(QUICK["torch"] if args.quick else [])], "fm-torch: class-conditional U-Net on MNIST")
        grid = os.path.join(args.out, "mnist_grid.png")
        times["torch sample"] = _run(fm_torch_main, [
            "sample", "--model", os.path.join(mnist_dir, "ckpt.pt"),
            "--guidance", f"{args.guidance:g}", "--method", "midpoint", "--steps", "20",
            "--per-class", "10", "--out", grid,
            "--npz", os.path.join(args.out, "mnist_samples.npz"),
            "--animate", os.path.join(args.out, "mnist_forming.gif")],
            f"fm-torch: 10x10 grid, guidance {args.guidance:g}, midpoint 20 steps")

        if background is not None:
            times["numpy (beside the U-Net)"] = _finish_numpy(background, numpy_log)
    finally:  # an interrupted or failed U-Net part leaves no NumPy process behind
        if background is not None and background.poll() is None:
            background.kill()
    total = time.perf_counter() - start
    print("\n== timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in times.items())
          + f"; total {total:.0f}")
    print("== pictures:")
    pngs = sorted(glob.glob(os.path.join(numpy_dir, "*.png")))
    pngs += [grid, os.path.join(args.out, "mnist_grid_trajectory.png")]
    pngs += [os.path.join(args.out, "numpy_flow.gif"), os.path.join(args.out, "mnist_forming.gif")]
    pngs += sorted(glob.glob(os.path.join(mnist_dir, "samples_*.png")))
    for path in pngs:
        print(f"   {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
