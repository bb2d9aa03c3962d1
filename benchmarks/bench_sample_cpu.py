"""Guided MNIST sampling on a CPU: images integrated at a time, fp32 against bf16 autocast.

`fm-torch sample` and `fm-torch evaluate` integrate the U-Net's ODE a chunk of images at a
time. On a CPU the chunk decides whether the U-Net's activations stay in cache, and bf16
autocast (fm_torch.sampling.bf16_forward) decides the arithmetic. This times
fm_torch.sampling.sample (classifier-free guidance w = 1.2, midpoint) over the same images
for every (precision, chunk), interleaved, and reports seconds per image at 20 midpoint
steps (the time is linear in the steps: `--steps` fewer are timed and scaled), with each
row's speed against fp32 at the largest chunk. It also reports how far bf16's images are
from fp32's (same x0, same steps).

The U-Net is the README's full run (base 32, mults 1,2,2, one res block, 10 classes), its
weights from --model or, without one, seeded random ones (speed does not depend on them).

    python -m benchmarks.bench_sample_cpu [--model runs/mnist-full32/ckpt.pt] [--quick]
"""

import argparse
import sys

import numpy as np

from benchmarks.common import interleaved

MARKDOWN = True


def _model(path, quick):
    import torch

    if path:
        from fm_torch.train import load_model

        return load_model(path, ema=True)[0].eval()
    from fm_torch.models.unet import UNet

    torch.manual_seed(0)
    model = UNet(1, 8 if quick else 32, (1, 2) if quick else (1, 2, 2), 1, num_classes=10)
    with torch.no_grad():  # an untrained U-Net's last conv is zero: v would be 0
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model.eval()


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_sample_cpu")
    parser.add_argument("--model", help="an fm-torch MNIST ckpt.pt (EMA weights)")
    parser.add_argument("--n", type=int, default=500, help="images per timing (default 500)")
    parser.add_argument("--chunks", default="25,50,100,250,500",
                        help="images integrated at a time (default 25,50,100,250,500)")
    parser.add_argument("--steps", type=int, default=2,
                        help="midpoint steps timed, scaled to 20 (default 2)")
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions")
    parser.add_argument("--quick", action="store_true", help="a tiny U-Net, 20 images, once")
    args = parser.parse_args(argv)
    import torch

    from fm_torch.sampling import sample

    if args.quick:
        args.n, args.chunks, args.steps, args.reps = 20, "5,20", 1, 1
    chunks = [int(c) for c in args.chunks.split(",")]
    if args.n < 1 or args.steps < 1 or args.reps < 1 or min(chunks) < 1:
        parser.error("--n, --steps, --reps and every chunk must be positive")
    model = _model(args.model, args.quick)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn((args.n, 1, 28, 28), generator=g)  # (n, 1, 28, 28)
    y = torch.arange(args.n) % 10  # (n,)

    def run(bf16, chunk):
        return torch.cat([sample(model, x0[i:i + chunk], y[i:i + chunk], 1.2, "midpoint",
                                 args.steps, bf16=bf16)[-1] for i in range(0, args.n, chunk)])

    fns = {(bf16, c): (lambda bf16=bf16, c=c: run(bf16, c))
           for bf16 in (False, True) for c in chunks}
    seconds = {k: np.median(v) for k, v in interleaved(fns, args.reps).items()}
    per_image = {k: s / args.n * 20 / args.steps for k, s in seconds.items()}
    base = per_image[(False, max(chunks))]
    print(f"{args.n} images, guidance 1.2, midpoint (timed at {args.steps} steps, given at 20),"
          f" torch {torch.__version__}, {torch.get_num_threads()} threads, median of "
          f"{args.reps} interleaved; {'--model ' + args.model if args.model else 'random weights'}"
          "\n")
    print("| chunk | fp32 s/image | bf16 s/image | fp32 speed | bf16 speed |")
    print("|---:|---:|---:|---:|---:|")
    for c in chunks:
        f, b = per_image[(False, c)], per_image[(True, c)]
        print(f"| {c} | {f:.3f} | {b:.3f} | {base / f:.2f}x | {base / b:.2f}x |")
    images = {bf16: (run(bf16, max(chunks)).clamp(-1, 1) + 1) / 2 for bf16 in (False, True)}
    diff = (images[True] - images[False]).abs()  # (n, 1, 28, 28), pixels in [0, 1]
    print(f"\nbf16 against fp32, same x0 and steps, pixels in [0, 1]: mean |difference| "
          f"{diff.mean():.4f}, 99th percentile {diff.flatten().quantile(0.99):.4f}, "
          f"largest {diff.max():.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
