"""The issue-24 table on this CPU: U-Net training images/s on 1 and 2 threads, fp32 and
bf16 autocast, for the demo's width (base 16) and the full run's (base 32).

Each step: fm_torch.objectives.flow_matching_loss under torch.autocast(cpu, bfloat16) or
not (the loss in float32 either way), backward, AdamW (batch 128 by default). The
variants are interleaved (benchmarks.common.interleaved: a load that comes and goes hits
them alike); the thread count is set before each call. Prints a markdown table of
medians and what fm_torch.cpu.choose_cpu_settings would pick here.

    python -m benchmarks.bench_cpu_precision [--reps 7] [--batch 128] [--quick]
"""

import argparse
import statistics
import sys


def _step_fn(base, batch, bf16, threads, fused_attention=False):
    """One training step of the U-Net as a callable; fused_attention: its attention always
    calls F.scaled_dot_product_attention (benchmarks/bench_attention.py)."""
    import torch

    from fm_torch.models.unet import UNet
    from fm_torch.objectives import flow_matching_loss
    from fm_torch.paths import AffinePath

    torch.manual_seed(0)
    model = UNet(channels=1, base=base, mults=(1, 2, 2), num_classes=10)
    if fused_attention:  # this instance only: no sequence takes the written-out softmax
        model.mid_attn.EXPLICIT_MAX_POSITIONS = 0
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
            loss = flow_matching_loss(model, path, x1, y, x0, t)  # float32 even in bf16
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_cpu_precision")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--bases", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--quick", action="store_true", help="batch 8, 2 repetitions, base 8")
    args = parser.parse_args(argv)
    reps, batch, bases = (2, 8, [8]) if args.quick else (args.reps, args.batch, args.bases)
    import torch

    from benchmarks.common import interleaved
    from fm_torch.cpu import choose_cpu_settings, cpu_flags, native_bf16, usable_cores

    threads = sorted({1, usable_cores()})
    fns = {(base, n, bf16): _step_fn(base, batch, bf16, n)
           for base in bases for n in threads for bf16 in (False, True)}
    seconds = interleaved(fns, reps)
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    bf16_flags = sorted({"avx512_bf16", "amx_bf16"} & cpu_flags()) or ["none"]
    print(f"{model}, {usable_cores()} usable cores, native bf16: {native_bf16()} "
          f"({', '.join(bf16_flags)}); torch {torch.__version__}; batch {batch}, medians of "
          f"{reps} interleaved steps; images/s")
    head = [f"{n} thread{'s' if n > 1 else ''} {p}" for n in threads for p in ("fp32", "bf16")]
    print("| U-Net | " + " | ".join(head) + " |")
    print("|---|" + "---:|" * len(head))
    for base in bases:
        cells = [f"{batch / statistics.median(seconds[(base, n, bf16)]):.0f}"
                 for n in threads for bf16 in (False, True)]
        print(f"| base {base} | " + " | ".join(cells) + " |")
    print(f"fm-torch train would pick: {choose_cpu_settings()['why']} (without the probe)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
