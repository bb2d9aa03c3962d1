"""The U-Net's self-attention on a CPU: the written-out softmax against torch's fused kernel.

fm_torch.models.unet.SelfAttention computes softmax(q k^T / sqrt(d)) v itself on a CPU for
short sequences, and calls F.scaled_dot_product_attention elsewhere. This measures why:
the demo U-Net's training step (flow_matching_loss, backward, AdamW) with its attention on
each path, fp32 and bf16 autocast, on 1 thread and on the usable cores, interleaved
(benchmarks.common.interleaved). Prints images/s and the ratio of the two paths.

    python -m benchmarks.bench_attention [--reps 7] [--batch 128] [--base 16] [--quick]

Threads spin or sleep as the environment says (OMP_WAIT_POLICY; fm_torch sets PASSIVE
unless it is set), like a run of `fm-torch train` in that environment.
"""

import argparse
import os
import statistics
import sys

from benchmarks.bench_cpu_precision import _step_fn

PATHS = {"written-out softmax": False, "fused (F.scaled_dot_product_attention)": True}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_attention")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--base", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="batch 8, 2 repetitions, base 8")
    args = parser.parse_args(argv)
    reps, batch, base = (2, 8, 8) if args.quick else (args.reps, args.batch, args.base)
    from fm_torch.cpu import usable_cores  # fm_torch before torch: the OpenMP wait policy

    threads = sorted({1, usable_cores()})
    import torch

    from benchmarks.common import interleaved

    fns = {(path, n, bf16): _step_fn(base, batch, bf16, n, fused)
           for path, fused in PATHS.items() for n in threads for bf16 in (False, True)}
    seconds = interleaved(fns, reps)
    print(f"torch {torch.__version__}, base {base}, batch {batch}, OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}; medians of {reps} interleaved "
          "training steps; images/s")
    head = [f"{n} thread{'s' if n > 1 else ''} {p}" for n in threads for p in ("fp32", "bf16")]
    print("| attention | " + " | ".join(head) + " |")
    print("|---|" + "---:|" * len(head))
    rate = {k: batch / statistics.median(v) for k, v in seconds.items()}
    for path in PATHS:
        cells = [f"{rate[(path, n, bf16)]:.0f}" for n in threads for bf16 in (False, True)]
        print(f"| {path} | " + " | ".join(cells) + " |")
    written, fused = list(PATHS)
    cells = [f"{rate[(written, n, bf16)] / rate[(fused, n, bf16)]:.2f}x"
             for n in threads for bf16 in (False, True)]
    print("| written-out / fused | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
