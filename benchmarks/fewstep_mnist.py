"""Few-step MNIST with the NumPy MLP (not part of `make bench`: minutes of CPU per model).

Three fm_numpy MLPs (784-512x3, class-conditional, batch 128, Adam 1e-3, the same steps)
are trained by fm_numpy.train.train: flow matching (independent pairs), ot-class
couplings, and MeanFlow. Each is sampled for n images (labels i mod 10, no guidance) at
1, 2, 4 NFE (Euler; MeanFlow: average-velocity steps) and FM also at 40 NFE (midpoint,
20 steps), and judged by fm_torch.evaluate.mnist_metrics (judge FD with its floor, class
accuracy with the judge's own test accuracy).

    python -m benchmarks.fewstep_mnist [--steps 1500] [-n 1000]
"""

import argparse
import os
import time

import numpy as np

from benchmarks.common import ROOT

RUNS = os.path.join(ROOT, "runs", "bench", "fewstep-mnist")


def _images(method, model, n, nfe):
    from fm_numpy.meanflow import sample as meanflow_sample
    from fm_numpy.solvers import odeint

    x0 = np.random.default_rng(1).standard_normal((n, 784)).astype(np.float32)
    y = np.arange(n) % 10
    if method == "meanflow":
        x1 = meanflow_sample(model, x0, nfe, y)[-1]
    elif nfe == 40:
        x1 = odeint(lambda x, t: model(x, t, y), x0, np.linspace(0, 1, 21), "midpoint")[-1]
    else:
        x1 = odeint(lambda x, t: model(x, t, y), x0, np.linspace(0, 1, nfe + 1), "euler")[-1]
    return np.clip((x1.reshape(n, 28, 28) + 1) / 2, 0, 1), y


def main(argv=None):
    from fm_numpy.train import train
    from fm_torch.evaluate import mnist_metrics

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("-n", type=int, default=1000)
    args = parser.parse_args(argv)
    memo = {}
    print(f"fm_numpy MLP 784-512x3, {args.steps} steps of batch 128; {args.n} images judged\n")
    print("| method | NFE | FD | FD floor | class accuracy | judge test accuracy | train s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for method, extra in (("fm", {}), ("ot-class", {"coupling": "ot-class"}),
                          ("meanflow", {"objective": "meanflow"})):
        out = os.path.join(RUNS, method)
        start = time.perf_counter()
        resume = os.path.exists(os.path.join(out, "checkpoint.npz"))
        model, _ = train(out, resume=resume, progress=False, data="mnist", arch="mlp",
                         steps=args.steps, ckpt_every=500, **extra)
        seconds = time.perf_counter() - start
        for nfe in (1, 2, 4) + ((40,) if method == "fm" else ()):
            images, y = _images(method, model, args.n, nfe)
            m = mnist_metrics(images, y, memo=memo)
            print(f"| {method} | {nfe} | {m['fd']:.2f} | {m['fd_floor']:.2f} | "
                  f"{m['class_accuracy']:.3f} | {m['class_accuracy_floor']:.3f} | "
                  f"{seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
