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

PATHS = {"written-out softmax": None, "fused (F.scaled_dot_product_attention)": 0}


def _step_fn(base, batch, bf16, threads, explicit_max):
    import torch

    from fm_torch.models.unet import UNet
    from fm_torch.objectives import flow_matching_loss
    from fm_torch.paths import AffinePath

    torch.manual_seed(0)
    model = UNet(channels=1, base=base, mults=(1, 2, 2), num_classes=10)
    if explicit_max is not None:  # this instance only: every sequence takes the fused path
        model.mid_attn.EXPLICIT_MAX_POSITIONS = explicit_max
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    g = torch.Generator().manual_seed(0)
    x1 = torch.rand((batch, 1, 28, 28), generator=g) * 2 - 1  # (B, 1, 28, 28)
    y = torch.randint(0, 10, (batch,), generator=g)  # (B,)
    path = AffinePath()

    def step():  # as fm_torch/loop.py: the objective's loss under autocast
        torch.set_num_threads(threads)
        x0 = torch.randn(x1.shape, generator=g)  # (B, 1, 28, 28)
        t = torch.rand(batch, generator=g)  # (B,)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = flow_matching_loss(model, path, x1, y, x0, t)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


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

    fns = {(path, n, bf16): _step_fn(base, batch, bf16, n, limit)
           for path, limit in PATHS.items() for n in threads for bf16 in (False, True)}
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
