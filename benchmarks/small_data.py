"""Defaults on small image data (issue 21, section 2): a data set we did not make, an
independent judge, and the wall time of a default training run.

Data: scikit-learn's bundled `load_digits` (1797 labelled 8x8 images, 17 grey levels), read
straight from the CSV that the scikit-learn wheel ships (sklearn/datasets/data/digits.csv.gz;
install it beside the project, never into .venv: `pip install --target runs/peers/sklearn
scikit-learn`). A seeded 80/20 split is exported as PNG folders, one subfolder per class
(<out>/train/<class>/<i>.png, <out>/test/...), and as .npz (x (N, 8, 8) uint8, y (N,)).

Judge: multinomial logistic regression on the pixels / 255 (L2 1e-3, SciPy's L-BFGS), fitted
on the training split only, its accuracy on the held-out split reported beside the accuracy
it gives generated samples (each sample judged against the class it was generated for).

Generator: the training split read back from the PNG folder by fm_numpy.datafiles (the
reader `train --data DIR` uses), scaled to [-1, 1], trained by fm_numpy.train.train (the
real run folder, EMA weights in model.npz) or, for fm_torch, by a hand-built loop on the
U-Net of fm_torch.models.network_for (until fm_torch's loop takes a user's data), then
guided samples (midpoint, --sample-steps) per class. Wall time covers training and
sampling. Prints one JSON line and writes it, the grid PNG and the samples to --out.

    .venv/bin/python benchmarks/small_data.py --package numpy --out runs/small_data/np

Measured (2 December 2026, OMP_NUM_THREADS=1, nice 10, on the 2-core machine shared with
about 20 other processes, load 17-24: wall times are 7-13x the CPU times; an idle machine
runs the ConvUNet step on 2 threads): the judge scores 0.964 on the 359 held-out digits.
NumPy ConvUNet (width 32, 2 levels, 156 k parameters), EMA 0.999, cosine:
  600 steps of 64 (the defaults):  w = 1 0.957, w = 2 1.000, w = 3 1.000 (300 samples);
                                   99 CPU-s for training and the 3 x 300 samples
  1500 steps of 64:                w = 1 0.966, w = 2 1.000, w = 3 1.000 (500 samples); 194 CPU-s
`fm-numpy train --data runs/small_data/digits8/train --steps 600 --batch 64 --warmup 50
--ema-decay 0.999` then `fm-numpy sample --per-class 30 --guidance 2 --method midpoint`
(then --judge-samples on its s.npz): 92 CPU-s in all; 1.000 of its 300 samples judged
their class.
torch U-Net (base 32, 2 levels, 511 k), 600 steps of 64, --package torch: w = 1 0.943,
  w = 2 1.000, w = 3 1.000 (300 samples); 174 CPU-s (torch samples on 1 thread)
32 x 32 RGB (--size 32 --rgb, ConvUNet width 16, 3 levels, 94 k; judge 0.961), 600 steps
  of 32, 10 midpoint steps: w = 1 0.535, w = 2 0.830 (200 samples); 400 CPU-s. The grid
  shows 0, 3, 6, 8, 9 clearly, 1 and 4 as blobs, colours mixed within a digit: too few
  steps (19,200 images seen), and more do not fit the 5 minutes.
"""

import argparse
import gzip
import json
import os
import sys
import time

import numpy as np
from scipy.optimize import minimize

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fm_numpy.io import save_json, save_npz  # noqa: E402
from fm_numpy.png import write_png  # noqa: E402

SKLEARN_CSV = "runs/peers/sklearn/sklearn/datasets/data/digits.csv.gz"


def export_digits(out, csv=SKLEARN_CSV, seed=0, test_fraction=0.2, size=8, rgb=False):
    """PNG folders and .npz files of the digits' seeded train / test split; returns the
    arrays {"train": (x, y), "test": (x, y)} with x (N, 8, 8) uint8 (0..16 -> 0..255).

    size > 8 resizes them (cubic spline, scipy.ndimage.zoom) to size x size; rgb=True tints
    each with a seeded random colour, (N, size, size, 3): a larger, coloured variant of the
    same real data, for the cost and the quality of the defaults at 32 x 32 RGB."""
    with gzip.open(csv, "rt") as f:
        table = np.loadtxt(f, delimiter=",")  # (1797, 65): 64 pixels 0..16, the label
    x = table[:, :64].reshape(-1, 8, 8) / 16  # (N, 8, 8) in [0, 1]
    y = table[:, 64].astype(np.int64)  # (N,)
    if size != 8:
        from scipy.ndimage import zoom

        x = np.clip(zoom(x, (1, size / 8, size / 8), order=3), 0, 1)  # (N, size, size)
    if rgb:
        tint = np.random.default_rng(seed + 1).uniform(0.3, 1.0, (len(x), 1, 1, 3))
        x = x[..., None] * tint  # (N, size, size, 3)
    x = np.round(x * 255).astype(np.uint8)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(test_fraction * len(x)))
    splits = {"test": order[:n_test], "train": order[n_test:]}
    arrays = {}
    for split, idx in splits.items():
        arrays[split] = (x[idx], y[idx])
        save_npz(os.path.join(out, f"digits_{split}.npz"), x=x[idx], y=y[idx])
        for i in idx:
            folder = os.path.join(out, split, str(y[i]))
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, f"{i:04d}.png")
            if not os.path.exists(path):
                write_png(path, x[i])
    return arrays


class Judge:
    """p(c | x) = softmax(x W + b)_c on pixels / 255, L2 `l2`; fitted by L-BFGS."""

    def __init__(self, x, y, num_classes, l2=1e-3):
        f = self.features(x)  # (N, P)
        N, P = f.shape
        onehot = np.eye(num_classes)[y]  # (N, K)

        def loss_grad(theta):
            W, b = theta[:P * num_classes].reshape(P, num_classes), theta[P * num_classes:]
            z = f @ W + b  # (N, K)
            z -= z.max(axis=1, keepdims=True)
            p = np.exp(z)
            p /= p.sum(axis=1, keepdims=True)  # (N, K)
            loss = -np.mean(np.sum(onehot * np.log(p + 1e-300), axis=1)) + l2 * np.sum(W * W)
            dz = (p - onehot) / N  # (N, K)
            return loss, np.concatenate([(f.T @ dz + 2 * l2 * W).ravel(), dz.sum(axis=0)])

        theta0 = np.zeros(P * num_classes + num_classes)
        res = minimize(loss_grad, theta0, jac=True, method="L-BFGS-B",
                       options={"maxiter": 2000})
        self.W = res.x[:P * num_classes].reshape(P, num_classes)
        self.b = res.x[P * num_classes:]

    @staticmethod
    def features(x):
        return np.asarray(x, dtype=np.float64).reshape(len(x), -1) / 255.0  # (N, P)

    def predict(self, x):
        return np.argmax(self.features(x) @ self.W + self.b, axis=1)  # (N,)


def grid_png(path, images, per_row, zoom=4):
    """Tile uint8 images (N, H, W [, C]) into rows of `per_row`, each pixel zoom x zoom."""
    N, H, W = images.shape[:3]
    rows = -(-N // per_row)
    canvas = np.full((rows * (H + 1), per_row * (W + 1), *images.shape[3:]), 255, np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, per_row)
        canvas[r * (H + 1):r * (H + 1) + H, c * (W + 1):c * (W + 1) + W] = img
    write_png(path, canvas.repeat(zoom, axis=0).repeat(zoom, axis=1))


def generate_numpy(args, train_dir, num_classes, labels, run):
    from fm_numpy.data import AffineScaling, ArraySource
    from fm_numpy.datafiles import read_data
    from fm_numpy.models import load_model
    from fm_numpy.models.sizing import default_sizes
    from fm_numpy.solvers import ClassifierFreeGuidance, odeint
    from fm_numpy.train import train

    found = read_data(train_dir)
    x = np.asarray(found.x)
    x = x.transpose(0, 3, 1, 2) if found.layout == "NHWC" else x  # (N, C, H, W) or (N, H, W)
    source = ArraySource(x, found.y, AffineScaling(2 / 255, -1.0))
    sizes = default_sizes(source.shape, "convnet")  # train's own defaults are the MLP's
    sizes.update({k: v for k, v in (("hidden", args.hidden), ("depth", args.depth)) if v})
    train(run, progress=False, data=source, arch="convnet", steps=args.steps,
          batch=args.batch, lr=args.lr, ema_decay=args.ema, ckpt_every=args.steps,
          warmup=args.warmup, lr_schedule="cosine", **sizes)
    model = load_model(os.path.join(run, "model.npz"))  # EMA weights
    x0 = np.random.default_rng(1).standard_normal((len(labels), model.dim)).astype(np.float32)
    out = {}
    for w in args.guidance:
        field = ClassifierFreeGuidance(model, labels, w)
        x1 = odeint(field, x0, np.linspace(0, 1, args.sample_steps + 1), "midpoint")[-1]
        out[w] = source.scaling.decode(x1).reshape(len(labels), *source.shape)
    return out, model.num_parameters, dict(model.config)


def generate_torch(args, train_dir, num_classes, labels, run):
    import torch

    from fm_numpy.datafiles import read_data
    from fm_torch.ema import EMA
    from fm_torch.models import network_for
    from fm_torch.solvers import ClassifierFreeGuidance, odeint

    found = read_data(train_dir)
    x = np.asarray(found.x, np.float32) * (2 / 255) - 1  # (N, H, W) or (N, H, W, C)
    x = torch.from_numpy(x.transpose(0, 3, 1, 2) if x.ndim == 4 else x[:, None])  # (N, C, H, W)
    y = torch.from_numpy(found.y)
    torch.manual_seed(args.seed)
    sizes = {"base": args.hidden} if args.hidden else {}
    model = network_for(tuple(x.shape[1:]), num_classes, **sizes)
    ema = EMA(model, args.ema)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    g = torch.Generator().manual_seed(args.seed)
    for step in range(args.steps):
        warm = min(1.0, (step + 1) / args.warmup) if args.warmup else 1.0
        for group in opt.param_groups:  # warm-up, then cosine decay to 0
            group["lr"] = args.lr * warm * 0.5 * (1 + np.cos(np.pi * step / args.steps))
        idx = torch.randint(0, len(x), (args.batch,), generator=g)
        x1, yb = x[idx], y[idx]
        t = torch.rand(args.batch, generator=g)
        x0 = torch.randn(x1.shape, generator=g)
        yb = torch.where(torch.rand(args.batch, generator=g) < 0.1, num_classes, yb)
        xt = t[:, None, None, None] * x1 + (1 - t[:, None, None, None]) * x0
        loss = ((model(xt, t, yb) - (x1 - x0)) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update(model)
    x0 = torch.randn((len(labels), *x.shape[1:]), generator=torch.Generator().manual_seed(1))
    out = {}
    with torch.no_grad():
        for w in args.guidance:
            field = ClassifierFreeGuidance(ema.model, torch.from_numpy(labels), w)
            grid = torch.linspace(0, 1, args.sample_steps + 1)
            x1 = odeint(field, x0, grid, "midpoint")[-1]
            out[w] = (x1.numpy() + 1) * (255 / 2)  # (N, C, H, W)
    return out, sum(p.numel() for p in model.parameters()), dict(model.config)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--package", choices=("numpy", "torch"), default="numpy")
    p.add_argument("--data-out", default=None, help="default runs/small_data/digits<size>[rgb]")
    p.add_argument("--out", default=None)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--hidden", type=int, default=None, help="base width (default: the rule)")
    p.add_argument("--depth", type=int, default=None)
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0, 3.0])
    p.add_argument("--sample-steps", type=int, default=20)
    p.add_argument("--per-class", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=8, help="resize the digits to size x size")
    p.add_argument("--rgb", action="store_true", help="tint each digit with a random colour")
    p.add_argument("--judge-samples", default=None,
                   help="only judge this samples .npz (images, labels) of `fm-numpy sample`")
    args = p.parse_args(argv)
    if args.judge_samples:  # the CLI's own samples: images (N, H, W[, C]) uint8, labels
        arrays = export_digits(args.data_out or f"runs/small_data/digits{args.size}"
                               f"{'rgb' * args.rgb}", size=args.size, rgb=args.rgb)
        (x_tr, y_tr), (x_te, y_te) = arrays["train"], arrays["test"]
        judge = Judge(x_tr, y_tr, int(y_tr.max()) + 1)
        with np.load(args.judge_samples, allow_pickle=False) as f:
            images, labels = f["images"], f["labels"].astype(np.int64)
        print(json.dumps({"judge_held_out_accuracy": float(np.mean(judge.predict(x_te) == y_te)),
                          "n": len(labels),
                          "accuracy": float(np.mean(judge.predict(images) == labels))}))
        return
    out = args.out or f"runs/small_data/{args.package}"
    if os.path.exists(os.path.join(out, "run")):
        p.error(f"{out}/run exists; choose another --out")
    args.data_out = args.data_out or f"runs/small_data/digits{args.size}{'rgb' * args.rgb}"
    arrays = export_digits(args.data_out, size=args.size, rgb=args.rgb)
    (x_tr, y_tr), (x_te, y_te) = arrays["train"], arrays["test"]
    K = int(y_tr.max()) + 1
    judge = Judge(x_tr, y_tr, K)
    held_out = float(np.mean(judge.predict(x_te) == y_te))
    labels = np.repeat(np.arange(K), args.per_class)  # (N,)
    generate = generate_numpy if args.package == "numpy" else generate_torch
    start, cpu = time.perf_counter(), time.process_time()
    images, params, config = generate(args, os.path.join(args.data_out, "train"), K, labels,
                                      os.path.join(out, "run"))
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    result = {"package": args.package, "n_train": len(x_tr), "n_test": len(x_te),
              "judge_held_out_accuracy": held_out, "parameters": int(params),
              "network": config, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
              "settings": {k: v for k, v in vars(args).items() if k not in ("data_out",)},
              "accuracy": {}}
    for w, img in images.items():
        img = np.clip(np.round(img), 0, 255).astype(np.uint8)  # (N, C, H, W)
        img = img[:, 0] if img.shape[1] == 1 else img.transpose(0, 2, 3, 1)  # as x_tr
        result["accuracy"][str(w)] = float(np.mean(judge.predict(img) == labels))
        save_npz(os.path.join(out, f"samples_w{w:g}.npz"), images=img, labels=labels)
        pick = np.concatenate([np.flatnonzero(labels == c)[:10] for c in range(K)])
        grid_png(os.path.join(out, f"grid_w{w:g}.png"), img[pick], per_row=10)
    real = np.concatenate([x_te[y_te == c][:10] for c in range(K)])
    grid_png(os.path.join(out, "grid_real.png"), real, per_row=10)
    save_json(os.path.join(out, "result.json"), result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
