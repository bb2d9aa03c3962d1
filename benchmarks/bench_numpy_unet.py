"""Images per second of fm_numpy's U-Net (the default `fm-numpy train --data mnist`
network, fm_numpy/models/convnet.py) on this CPU, on 1 thread and on batch slices in
threads (fm_numpy/models/threads.py).

Training: forward, dL/dv, backward and one Adam step at the default batch of 32. Sampling:
one velocity evaluation of a chunk of 100 images. The thread counts are timed in turn,
repetition by repetition, so a change of load hits them alike; medians, and the ratio of
each count's time to one thread's (median of the per-repetition ratios).

    python -m benchmarks.bench_numpy_unet [--quick]
"""

import functools
import os
import statistics

import numpy as np

from benchmarks.common import blas_threads, interleaved
from fm_numpy.models.convnet import ConvUNet
from fm_numpy.models.threads import ThreadedModel
from fm_numpy.optim import Adam

MARKDOWN = True


def _cores():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def bench(threads_list, batch=32, chunk=100, reps=7):
    model = ConvUNet(784, hidden=16, depth=3, time_features=32, num_classes=10, seed=0)
    opt = Adam(model.params, lr=1e-4)
    nets = {k: ThreadedModel(model, k) if k > 1 else model for k in threads_list}
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 784)).astype(np.float32)  # (B, 784)
    t = rng.random(batch).astype(np.float32)  # (B,)
    y = rng.integers(0, 11, batch)  # (B,) 10 = null class
    xs = rng.standard_normal((chunk, 784)).astype(np.float32)  # (chunk, 784)
    ts, ys = rng.random(chunk).astype(np.float32), rng.integers(0, 11, chunk)

    def train_step(net):
        diff = net.forward(x, t, y) - x  # (B, 784)
        diff *= 2.0 / diff.size  # dL/dv
        opt.step(net.backward(diff))

    def evaluate(net):
        net.forward(xs, ts, ys)

    fns = {(k, what): functools.partial(fn, net) for what, fn in
           (("train", train_step), ("eval", evaluate)) for k, net in nets.items()}
    return interleaved(fns, reps), model.num_parameters  # warm-up: buffers, thread pools


def main(quick=False):
    cores = _cores() or 1
    threads_list = sorted({1, 2, min(4, cores)})
    times, params = bench(threads_list, reps=3 if quick else 7)
    print(f"fm_numpy ConvUNet 16-32-32 ({params:,} parameters), float32, {cores} usable cores, "
          f"BLAS threads outside the slices {blas_threads()}; median of "
          f"{len(times[(1, 'train')])} interleaved repetitions.")
    print()
    print("| threads | train step ms (batch 32) | train img/s | vs 1 thread | "
          "eval ms (100 images) | eval img/s | vs 1 thread |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for k in threads_list:
        row = [str(k)]
        for what, n in (("train", 32), ("eval", 100)):
            med = statistics.median(times[(k, what)])
            ratio = statistics.median(a / b for a, b in zip(times[(k, what)],
                                                             times[(1, what)], strict=True))
            row += [f"{1e3 * med:.1f}", f"{n / med:.0f}", f"{ratio:.2f}"]
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    import sys

    main(quick="--quick" in sys.argv[1:])
