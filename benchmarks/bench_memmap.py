"""Resident memory of training on a 2 GB .npy (issue 21): the file is memory-mapped, never
loaded whole.

    python -m benchmarks.bench_memmap [--gb 2] [--steps 300] [--dim 64] [--package numpy]

Writes runs/bench_memmap/big.npy (float32 (N, dim), a mixture of 4 Gaussians, written in
blocks through a memory map by this parent process), then trains in a fresh child process
through the real command line (`fm-numpy train --data big.npy`, or `fm-torch train`) and
reports the child's peak resident memory (ru_maxrss of the child, and VmHWM read by the
child itself at exit), its wall time, and the file's size. The child's peak counts every
page of the file it has mapped and touched (RssFile), so it is the honest number:
- opening: the NaN/Inf scan and the scaling's fit read the rows in blocks (RowView reads
  them with pread at their file offsets, so no mapped page stays in the process);
- training: each batch reads its B random rows the same way; the split's index arrays
  cost 16 bytes a row (the permutation 8, the training indices 8).
Not a test: it takes a minute or two and 2 GB of disk.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "runs", "bench_memmap")


def _write_file(path, gb, dim):
    n = int(gb * 2**30) // (4 * dim)
    if os.path.exists(path) and os.path.getsize(path) > n * 4 * dim:
        return n
    rng = np.random.default_rng(0)
    centres = 3 * rng.standard_normal((4, dim)).astype(np.float32)  # (4, dim)
    x = np.lib.format.open_memmap(path + ".tmp", mode="w+", dtype=np.float32, shape=(n, dim))
    block = 1 << 18
    for lo in range(0, n, block):
        k = min(block, n - lo)
        x[lo:lo + k] = centres[rng.integers(0, 4, k)] + rng.standard_normal(
            (k, dim), dtype=np.float32)
    x.flush()
    del x
    os.replace(path + ".tmp", path)
    return n


def _vmhwm_kb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return -1


def child(argv):
    """Run the CLI in this process, then print its peak memory as JSON."""
    package = argv[0]
    from importlib import import_module

    code = import_module(f"fm_{package}.cli").main(argv[1:])
    print(json.dumps({"exit": code, "vmhwm_mb": _vmhwm_kb() / 1024}))
    return code


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=2.0)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--package", choices=("numpy", "torch"), default="numpy")
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, "big.npy")
    t0 = time.perf_counter()
    n = _write_file(path, args.gb, args.dim)
    print(f"{path}: {os.path.getsize(path) / 2**30:.2f} GiB, ({n}, {args.dim}) float32, "
          f"written in {time.perf_counter() - t0:.0f} s")
    run = os.path.join(OUT, f"run_{args.package}")
    subprocess.run(["rm", "-rf", run], check=True)
    argv = [args.package, "train", "--data", path, "--steps", str(args.steps), "--batch",
            str(args.batch), "--ckpt-every", str(args.steps), "--out", run, "--no-progress"]
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_memmap", "--child", *argv],
                          cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"child failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
    print(f"fm-{args.package} train --data big.npy, {args.steps} steps of {args.batch}: "
          f"{wall:.0f} s wall; child peak resident memory {peak_mb:.0f} MiB (ru_maxrss), "
          f"VmHWM {report['vmhwm_mb']:.0f} MiB; file {os.path.getsize(path) / 2**20:.0f} MiB "
          f"({peak_mb / (os.path.getsize(path) / 2**20):.1%} of it)")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        sys.exit(child(sys.argv[2:]))
    main()
