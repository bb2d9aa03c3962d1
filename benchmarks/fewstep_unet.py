"""Few-step MNIST with the torch U-Net (issue 12; not part of `make bench`: it took about an
hour on the 2-core machine beside other jobs, most of it reflow's 10,000 teacher solves).

Four class-conditional U-Nets at `make demo`'s budget and recipe (base 16, mults 1,2,2,
800 AdamW steps of 64, lr 2e-3, warm-up 50 + cosine, EMA 0.995, label dropout 0.1), each
trained by fm_torch.train.train with seed 0:
  - fm: flow matching, independent pairs (the demo model);
  - ot-class: exact minibatch assignment inside each class (fm_torch.coupling);
  - meanflow: the average velocity u(z, r, t) (fm_torch.meanflow, torch.func.jvp);
  - reflow: 2-rectified flow, a fresh student on `--pairs` (x0, ODE(x0)) pairs of the fm
    model (midpoint, 10 steps, guidance 2, labels i mod 10), fm_torch.reflow.reflow. The
    guidance is in the pairs, so the student is sampled unguided (w = 1): one network
    evaluation per step where the others take two.
Each is sampled for n images (labels i mod 10, seed 0) at K = 1, 2, 4 steps (Euler; MeanFlow
takes average-velocity steps) with guidance 2 (reflow: 1), and fm also by midpoint 20 steps
(40 NFE, the demo's sampler), and judged by fm_torch.evaluate (judge FD with its floor at
that n, class accuracy). Writes runs/bench/fewstep-unet/results.json and
docs/img/fewstep_unet.png (FD against NFE).

    python -m benchmarks.fewstep_unet [--pairs 5000] [-n 1000] [--quick]
"""

import argparse
import json
import os
import time

from benchmarks.common import ROOT

RUNS = os.path.join(ROOT, "runs", "bench", "fewstep-unet")
RECIPE = {"data": "mnist", "base": 16, "mults": [1, 2, 2], "steps": 800, "batch": 64,
          "lr": 2e-3, "ema_decay": 0.995, "ckpt_every": 200, "sample_every": 10**9,
          "lr_schedule": "cosine", "warmup": 50, "seed": 0}
METHODS = (("fm", {}), ("ot-class", {"coupling": "ot-class"}),
           ("meanflow", {"objective": "meanflow"}), ("reflow", {}))
NFES = (1, 2, 4)


def _train(runs, name, extra, recipe, pairs, progress):
    from fm_torch.reflow import reflow
    from fm_torch.train import train

    out = os.path.join(runs, name)
    resume = os.path.exists(os.path.join(out, "ckpt.pt"))
    start = time.perf_counter()
    if name == "reflow":
        reflow(os.path.join(runs, "fm", "ckpt.pt"), pairs, out, seed=0, method="midpoint",
               solver_steps=10, guidance=2.0, resume=resume, progress=progress, device="cpu",
               **{k: v for k, v in recipe.items() if k not in ("data", "seed")})
    else:
        train(out, resume=resume, progress=progress, device="cpu", **recipe, **extra)
    return os.path.join(out, "ckpt.pt"), time.perf_counter() - start


def _plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    from fm_numpy.io import atomic_path

    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=110)
    for method in dict.fromkeys(r["method"] for r in rows):
        pts = [(r["nfe"], r["fd"]) for r in rows if r["method"] == method and r["nfe"] in NFES]
        ax.plot(*zip(*pts, strict=True), marker="o", label=method)
    fm40 = [r for r in rows if r["method"] == "fm" and r["nfe"] == 40]
    if fm40:
        ax.axhline(fm40[0]["fd"], color="gray", ls="--", label="fm, midpoint 40 NFE")
        ax.axhline(2 * fm40[0]["fd"], color="gray", ls=":", label="2x that (goal at 1 NFE)")
    ax.axhline(rows[0]["fd_floor"], color="black", lw=0.8, label="real-data floor")
    ax.set(xscale="log", yscale="log", xlabel="NFE (steps)", ylabel="judge FD",
           title="MNIST U-Net at the demo budget: FD against NFE")
    ax.set_xticks(NFES, [str(k) for k in NFES])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def main(argv=None):
    import torch

    from fm_numpy.io import atomic_path
    from fm_torch.cli_evaluate import evaluate_checkpoint
    from fm_torch.evaluate import load_or_train_classifier

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5000, help="reflow pairs")
    parser.add_argument("-n", type=int, default=1000, help="images judged per setting")
    parser.add_argument("--quick", action="store_true", help="a few steps, to test the plumbing")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--plot-only", action="store_true",
                        help="redraw the plot from results.json, train nothing")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    recipe = dict(RECIPE)
    if args.quick:
        recipe.update(steps=6, warmup=2, ckpt_every=3)
        args.pairs, args.n = min(args.pairs, 64), min(args.n, 100)
    runs = RUNS + "-quick" if args.quick else RUNS  # never resumed into each other
    png = os.path.join(runs if args.quick else os.path.join(ROOT, "docs", "img"),
                       "fewstep_unet.png")
    if args.plot_only:
        with open(os.path.join(runs, "results.json")) as f:
            _plot(json.load(f)["rows"], png)
        return
    classifier, info = load_or_train_classifier(progress=True)
    memo, rows = {}, []
    os.makedirs(runs, exist_ok=True)
    print(f"U-Net base 16, {recipe['steps']} steps of {recipe['batch']}; {args.n} images "
          f"judged; reflow on {args.pairs} pairs\n")
    print("| method | sampler | NFE | network evaluations | FD | FD floor | class accuracy "
          "| train s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, extra in METHODS:
        ckpt, seconds = _train(runs, name, extra, recipe, args.pairs, progress=True)
        guidance = 1.0 if name == "reflow" else 2.0
        settings = [("euler", k) for k in NFES] + ([("midpoint", 20)] if name == "fm" else [])
        for method, steps in settings:
            m = evaluate_checkpoint(ckpt, n=args.n, guidance=guidance, method=method,
                                    steps=steps, classifier=classifier, info=info, memo=memo,
                                    progress=False)
            sampler = ("average-velocity" if name == "meanflow" else method) + f" x{steps}"
            row = {"method": name, "sampler": sampler, "nfe": m["nfe"],
                   "model_calls": m["model_calls"], "fd": m["fd"], "fd_floor": m["fd_floor"],
                   "class_accuracy": m["class_accuracy"], "guidance": guidance,
                   "train_seconds": seconds, "n": args.n}
            rows.append(row)
            print(f"| {name} | {sampler} | {row['nfe']} | {row['model_calls']} | "
                  f"{row['fd']:.2f} | {row['fd_floor']:.2f} | {row['class_accuracy']:.3f} | "
                  f"{seconds:.0f} |", flush=True)
        with atomic_path(os.path.join(runs, "results.json")) as tmp, open(tmp, "w") as f:
            json.dump({"recipe": recipe, "pairs": args.pairs, "rows": rows}, f, indent=1)
    _plot(rows, png)
    print(f"\nwrote {png} and {os.path.join(runs, 'results.json')}")


if __name__ == "__main__":
    main()
