"""Images per second of the MNIST U-Net on this CPU: training steps and sampling.

Training: forward, flow-matching loss, backward, AdamW step at batch 64. Sampling: one
velocity evaluation of 100 images (no autograd); images/s of a full sample is this
rate divided by the NFE (20-step midpoint with guidance: 80). Median of repeated
timings after a warm-up, for the demo's width (16) and the default width (32).

    python -m benchmarks.bench_unet [--quick]
"""

import statistics

import torch

from benchmarks.common import interleaved
from fm_torch.models.unet import UNet
from fm_torch.paths import AffinePath
from fm_torch.train import flow_matching_loss

CONFIGS = [dict(base=16, mults=(1, 2, 2)), dict(base=32, mults=(1, 2, 2))]


def _median_seconds(fn, reps):
    return statistics.median(interleaved({"fn": fn}, reps)["fn"])


def bench(config, batch=64, n_sample=100, reps=5):
    torch.manual_seed(0)
    model = UNet(**config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    path = AffinePath()
    g = torch.Generator().manual_seed(0)
    x1 = torch.rand((batch, 1, 28, 28), generator=g) * 2 - 1
    y = torch.randint(0, 10, (batch,), generator=g)

    def train_step():
        x0 = torch.randn(x1.shape, generator=g)
        t = torch.rand(batch, generator=g)
        loss = flow_matching_loss(model, path, x1, y, x0, t)
        opt.zero_grad()
        loss.backward()
        opt.step()

    x = torch.randn((n_sample, 1, 28, 28), generator=g)
    y_sample = torch.arange(n_sample) % 10

    @torch.no_grad()
    def evaluate():
        model(x, 0.5, y_sample)

    train_s = _median_seconds(train_step, reps)
    eval_s = _median_seconds(evaluate, reps)
    return model.num_parameters(), batch / train_s, n_sample / eval_s


def main(quick=False):
    reps = 2 if quick else 7
    default_threads = torch.get_num_threads()
    print(f"U-Net images/s on CPU, torch {torch.__version__}, median of {reps}")
    print("| base | mults | params | threads | train img/s (batch 64) | model evals img/s "
          "| sampled img/s (midpoint 20, guidance: 80 evals) |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for threads in sorted({1, default_threads}):
        torch.set_num_threads(threads)
        for config in CONFIGS[:1] if quick else CONFIGS:
            params, train_rate, eval_rate = bench(config, reps=reps)
            print(f"| {config['base']} | {','.join(map(str, config['mults']))} | {params:,} | "
                  f"{threads} | {train_rate:.0f} | {eval_rate:.0f} | {eval_rate / 80:.1f} |",
                  flush=True)
    torch.set_num_threads(default_threads)


if __name__ == "__main__":
    import sys

    main(quick="--quick" in sys.argv[1:])
