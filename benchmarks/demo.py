"""`make demo`: flow matching end to end on 2 CPU cores in well under 10 minutes.

1. fm_numpy: the NumPy MLP learns a 2-D toy set (8 Gaussians); samples, trajectories
   and the learned field are plotted.
2. fm_torch: a small class-conditional U-Net (base width 16, about 0.2 M parameters)
   learns MNIST for 800 AdamW steps of 64 images (about one epoch) with label dropout
   and an EMA of its weights; then a 10x10 grid (one row per class, guidance 1.75,
   midpoint, 20 steps) and a trajectory strip (t = 0, 0.1, ..., 1) are sampled.

    python -m benchmarks.demo            # writes runs/demo/..., prints the paths
    python -m benchmarks.demo --quick    # a few steps only, to check the plumbing

The settings for a full run (longer, or on a GPU) are in docs and in the report:
    fm-torch train --data mnist --base 32 --mults 1,2,2 --steps 20000 --batch 128 \
        --lr 1e-3 --bf16 --compile --out runs/mnist
"""

import argparse
import glob
import os
import shutil
import sys
import time

OUT = os.path.join("runs", "demo")

# The CLI's default model (hidden 256, depth 3, batch 512) for 4000 of its 6000 default
# steps: about 50 s on one core, with clean modes (1200 steps of a 128-wide MLP left
# visible bridges between them).
NUMPY_TRAIN = ["--data", "8gaussians", "--steps", "4000"]
TORCH_TRAIN = ["--data", "mnist", "--base", "16", "--mults", "1,2,2", "--steps", "800",
               "--batch", "64", "--lr", "2e-3", "--ema-decay", "0.995", "--ckpt-every", "200",
               "--sample-every", "400", "--lr-schedule", "cosine", "--warmup", "50"]
# the guidance of the grid: at this budget w = 1.75 gave the best FD with accuracy >= 0.98
# (docs/benchmarks.md, "Recipes at the demo budget": FD 23.7 = 2.19x floor, accuracy 0.986;
# w = 2: 34.6, 0.992; w = 1.5: 17.8, 0.963)
GUIDANCE = "1.75"
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


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.demo")
    parser.add_argument("--quick", action="store_true", help="a few steps, to test the plumbing")
    parser.add_argument("--out", default=OUT, help="output folder (default runs/demo)")
    args = parser.parse_args(argv)
    # One intra-op thread: measured on the 2-core machine, 2 threads ran the U-Net step 12x
    # slower than 1 whenever another process held a core (benchmarks/bench_unet.py).
    threads = 1
    import torch

    torch.set_num_threads(threads)
    start = time.perf_counter()
    times = {}

    # 1. NumPy MLP on a 2-D set
    from fm_numpy.cli import main as fm_numpy_main

    numpy_dir = os.path.join(args.out, "numpy_8gaussians")
    _fresh(numpy_dir)
    times["numpy train"] = _run(fm_numpy_main, ["train", *NUMPY_TRAIN, "--out", numpy_dir,
                                                *(QUICK["numpy"] if args.quick else [])],
                                "fm-numpy: MLP on 8 Gaussians")
    times["numpy sample"] = _run(fm_numpy_main, [
        "sample", "--model", os.path.join(numpy_dir, "model.npz"), "--method", "rk4",
        "--steps", "20", "-n", "4000", "--out", os.path.join(numpy_dir, "samples.npz"),
        "--animate", os.path.join(args.out, "numpy_flow.gif")],
        "fm-numpy: sample (rk4, 20 steps)")

    # 2. torch U-Net on MNIST
    from fm_torch.cli import main as fm_torch_main

    mnist_dir = os.path.join(args.out, "mnist")
    _fresh(mnist_dir)
    times["torch train"] = _run(fm_torch_main, [
        "train", *TORCH_TRAIN, "--threads", str(threads), "--out", mnist_dir,
        *(QUICK["torch"] if args.quick else [])], "fm-torch: class-conditional U-Net on MNIST")
    grid = os.path.join(args.out, "mnist_grid.png")
    times["torch sample"] = _run(fm_torch_main, [
        "sample", "--model", os.path.join(mnist_dir, "ckpt.pt"), "--guidance", GUIDANCE,
        "--method", "midpoint", "--steps", "20", "--per-class", "10", "--out", grid,
        "--npz", os.path.join(args.out, "mnist_samples.npz"),
        "--animate", os.path.join(args.out, "mnist_forming.gif")],
        f"fm-torch: 10x10 grid, guidance {GUIDANCE}, midpoint 20 steps")

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
