"""Bits per dim of MNIST test images in fp32 against bf16 autocast (issue 24, item 4).

`fm-torch train` may train in bf16 autocast on a CPU with native bf16; sampling and
likelihoods stay fp32 unless the numbers agree. This measures that for the likelihood:
the same test images, the same dequantisation noise and Hutchinson probes, the same
adaptive solver (dopri5, rtol = atol = 1e-5 by default), once with the network in fp32 and
once with its forward pass under torch.autocast(bfloat16) (the ODE state and the
divergence sums stay float32). Prints bpd per precision, the per-image differences, and
the seconds per image.

    python -m benchmarks.bench_bpd_precision --model runs/demo/mnist/ckpt.pt --n 100
    python -m benchmarks.bench_bpd_precision --quick    # 2 images, a tiny random U-Net, tol 1e-3
"""

import argparse
import statistics
import sys
import time


def bits_per_dim_of(model, images, bf16, rtol, atol, seed=0):
    """(bpd per image (n,) float64 NumPy, seconds): fm_torch.likelihood.mnist_log_likelihood
    of `images` (n, 28, 28) in [0, 1] with the null class, the network in fp32 or bf16."""
    import torch

    from fm_torch.likelihood import mnist_log_likelihood
    from fm_torch.sampling import bf16_forward

    v = bf16_forward(model) if bf16 else model  # bf16: its output back in the state's float32

    start = time.perf_counter()
    _, bpd = mnist_log_likelihood(v, images, rng=seed, flatten=False, dtype=torch.float32,
                                  method="dopri5", rtol=rtol, atol=atol,
                                  divergence="hutchinson", seed=seed)  # (n,)
    return bpd.double().numpy(), time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_bpd_precision")
    parser.add_argument("--model", help="an fm-torch MNIST ckpt.pt (EMA weights are used)")
    parser.add_argument("--n", type=int, default=100, help="first n test images (default 100)")
    parser.add_argument("--batch", type=int, default=20, help="images per solve (default 20)")
    parser.add_argument("--rtol", type=float, default=1e-5)
    parser.add_argument("--atol", type=float, default=1e-5)
    parser.add_argument("--quick", action="store_true", help="2 images, a tiny random U-Net")
    args = parser.parse_args(argv)
    import numpy as np
    import torch

    from fm_numpy.data import load_mnist

    if args.quick:
        from fm_torch.models.unet import UNet

        torch.manual_seed(0)
        model, n, batch = UNet(channels=1, base=8, mults=(1, 2), num_classes=10), 2, 2
        args.rtol = args.atol = 1e-3  # a random field is stiff: the plumbing, not the figure
        for p in model.parameters():  # an untrained U-Net's last conv is zero: v would be 0
            p.data.add_(0.01 * torch.randn_like(p))
    elif args.model:
        from fm_torch.train import load_model

        model, _ = load_model(args.model, ema=True)
        n, batch = args.n, args.batch
    else:
        parser.error("give --model CKPT (or --quick)")
    if n < 1 or batch < 1:
        parser.error(f"--n and --batch must be positive, got {n} and {batch}")
    model = model.float().eval()
    images = load_mnist("test")[0][:n]  # (n, 28, 28) in [0, 1]
    bpd, seconds = {}, {}
    for name, bf16 in (("fp32", False), ("bf16", True)):
        parts, seconds[name] = [], 0.0
        for i in range(0, n, batch):
            values, s = bits_per_dim_of(model, images[i:i + batch], bf16, args.rtol, args.atol,
                                        seed=i)
            parts.append(values)
            seconds[name] += s
        bpd[name] = np.concatenate(parts)  # (n,)
    diff = bpd["bf16"] - bpd["fp32"]  # (n,)
    print(f"{n} test images, dopri5 rtol {args.rtol:g} atol {args.atol:g}, Hutchinson, "
          f"threads {torch.get_num_threads()}")
    print("| precision | bpd (mean) | standard error | s per image |")
    print("|---|---:|---:|---:|")
    for name in bpd:
        se = statistics.stdev(bpd[name]) / n ** 0.5 if n > 1 else float("nan")
        print(f"| {name} | {bpd[name].mean():.4f} | {se:.4f} | {seconds[name] / n:.2f} |")
    print(f"bf16 - fp32: mean {diff.mean():+.4f} bpd, largest |difference| on one image "
          f"{np.abs(diff).max():.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
