"""`make demo`: flow matching end to end on a CPU in a few minutes.

1. fm_torch: a small class-conditional U-Net (base width 16, about 0.2 M parameters)
   learns MNIST for 800 AdamW steps of 128 images (1.7 epochs) with label dropout
   and an EMA of its weights, alone on all the usable cores, in the precision `fm-torch
   train` picks for this CPU (fp32, or bf16 autocast where the CPU has native bf16 and a
   probe finds it faster); then a 10x10 grid (one row per class, guidance 1.55, midpoint,
   20 steps), a trajectory strip (t = 0, 0.1, ..., 1) and the grid forming (a GIF).
2. fm_numpy: the NumPy MLP learns a 2-D toy set (8 Gaussians); samples, trajectories,
   the learned field and an animation of the particles flowing are written. Where the
   machine has a second core this runs in a process of its own, beside the U-Net's grid.

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
# Batch 128 rather than 64: on two spinning threads a step of 128 images gives about 1.2-1.5x
# the images per second of a step of 64, and 800 steps of 128 (2x the images of the old
# 800 of 64) judged better than 1300 of 64 (docs/benchmarks.md, "The demo's quality at its
# budget"). No progress grids during the run (--sample-every past its end): the demo's own
# grid follows it.
TORCH_TRAIN = ["--data", "mnist", "--base", "16", "--mults", "1,2,2", "--batch", "128",
               "--lr", "2e-3", "--ema-decay", "0.995", "--ckpt-every", "250",
               "--lr-schedule", "cosine"]  # steps, warm-up, --sample-every: from --steps
# the guidance of the grid: the demo's own run here gave FD 1.31x the floor with accuracy
# 0.979 at w = 1.5, 1.44x and 0.982 at 1.55, 1.60x and 0.981 at 1.6 (n = 1000; both goals
# at 1.55 only, by less than the judge's noise: docs/benchmarks.md, "The demo's quality")
GUIDANCE = 1.55
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


def _training_env(environ=os.environ):
    """The environment of the U-Net's training process: OMP_WAIT_POLICY=ACTIVE unless the
    user chose a policy (call before fm_torch is imported, which sets PASSIVE otherwise).

    fm_torch's own default is PASSIVE, which keeps two threads from collapsing beside a
    busy core but gives back most of the second thread's gain on a quiet one. The demo
    trains with nothing else running, so its training process spins (docs/benchmarks.md,
    "The demo's time"). It is a process of its own because a spinning libgomp thread keeps
    spinning after its last parallel region, until its process ends: in the demo's own
    process it would take the core the NumPy part runs on next."""
    if any(k in environ for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")):
        return dict(environ)
    return dict(environ, OMP_WAIT_POLICY="ACTIVE")


def _run_process(argv, what, env):
    """`python -m fm_torch.cli ARGV` in a child process with `env` (its output shown); seconds."""
    start = time.perf_counter()
    print(f"\n== {what}\n$ {' '.join(argv)}", flush=True)
    rc = subprocess.call([sys.executable, "-m", "fm_torch.cli", *argv], env=env)
    if rc:
        sys.exit(f"demo: {what} failed with exit status {rc}")
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.demo")
    parser.add_argument("--quick", action="store_true", help="a few steps, to test the plumbing")
    parser.add_argument("--out", default=OUT, help="output folder (default runs/demo)")
    parser.add_argument("--steps", type=int, default=STEPS,
                        help=f"U-Net training steps of 128 images (default {STEPS}; warm-up 1/16)")
    parser.add_argument("--guidance", type=float, default=GUIDANCE,
                        help=f"guidance w of the grid (default {GUIDANCE:g}; measured "
                             "choices for longer runs: docs/benchmarks.md)")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be a positive integer, got {args.steps}")
    if not math.isfinite(args.guidance):  # said now, not after minutes of training
        parser.error(f"--guidance must be a finite number, got {args.guidance}")
    horizon = ["--steps", str(args.steps), "--warmup", str(max(1, args.steps // 16)),
               "--sample-every", str(args.steps + 1)]
    train_env = _training_env()  # before fm_torch is imported: it sets PASSIVE
    from fm_torch.cpu import usable_cores

    # The whole CPU, one part after the other: the U-Net trains alone on all the usable
    # cores, with spinning OpenMP waits; then the NumPy part runs in a process of its own on
    # one core while the U-Net draws its grid on the others (docs/benchmarks.md, "The
    # demo's time": threads that share a core with another process wait at each of a
    # step's barriers, so the training never runs beside the NumPy process).
    cores = usable_cores()
    start = time.perf_counter()
    times = {}
    if cores > 1:
        print(f"demo: the U-Net trains alone on {cores} threads, OMP_WAIT_POLICY="
              f"{train_env.get('OMP_WAIT_POLICY', 'unset')}; on a busy machine run the demo "
              "with OMP_WAIT_POLICY=PASSIVE")

    numpy_dir = os.path.join(args.out, "numpy_8gaussians")
    numpy_jobs = [
        (["train", *NUMPY_TRAIN, "--out", numpy_dir, *(QUICK["numpy"] if args.quick else [])],
         "fm-numpy: MLP on 8 Gaussians"),
        (["sample", "--model", os.path.join(numpy_dir, "model.npz"), "--method", "rk4",
          "--steps", "20", "-n", "4000", "--out", os.path.join(numpy_dir, "samples.npz"),
          "--animate", os.path.join(args.out, "numpy_flow.gif")],
         "fm-numpy: sample (rk4, 20 steps)")]
    numpy_log = os.path.join(args.out, "numpy.log")
    background = None
    try:
        # 1. torch U-Net on MNIST, alone on the machine
        from fm_torch.cli import main as fm_torch_main

        mnist_dir = os.path.join(args.out, "mnist")
        _fresh(mnist_dir)
        times["torch train"] = _run_process([
            "train", *TORCH_TRAIN, *horizon, "--threads", str(cores), "--out", mnist_dir,
            *(QUICK["torch"] if args.quick else [])], "fm-torch: class-conditional U-Net on MNIST",
            train_env)

        # 2. NumPy MLP on a 2-D set, in the background where there is a second core
        _fresh(numpy_dir)
        if cores > 1:
            background = _start_numpy(numpy_jobs, numpy_log)
        else:
            from fm_numpy.cli import main as fm_numpy_main

            times["numpy"] = sum(_run(fm_numpy_main, argv, what) for argv, what in numpy_jobs)

        import torch

        torch.set_num_threads(max(1, cores - 1))  # the cores the NumPy process leaves
        grid = os.path.join(args.out, "mnist_grid.png")
        times["torch sample"] = _run(fm_torch_main, [
            "sample", "--model", os.path.join(mnist_dir, "ckpt.pt"),
            "--guidance", f"{args.guidance:g}", "--method", "midpoint", "--steps", "20",
            "--per-class", "10", "--out", grid,
            "--npz", os.path.join(args.out, "mnist_samples.npz"),
            "--animate", os.path.join(args.out, "mnist_forming.gif")],
            f"fm-torch: 10x10 grid, guidance {args.guidance:g}, midpoint 20 steps")

        if background is not None:
            times["numpy (beside the grid)"] = _finish_numpy(background, numpy_log)
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
