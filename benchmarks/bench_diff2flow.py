"""Diff2Flow on MNIST (issue 16): a DDPM U-Net as a flow, zero-shot and fine-tuned.

Not part of `make bench` (it needs a trained DDPM: about half an hour of CPU); run the
phases by hand, each writing runs/d2f/<phase>.json, then `report` for the tables and
docs/img/bench_diff2flow.png:

    fm-torch train-diffusion --data mnist --prediction v --schedule linear --base 16 \
        --mults 1,2,2 --steps 1500 --batch 64 --lr 2e-3 --ema-decay 0.995 --out runs/ddpm_v
    python -m benchmarks.bench_diff2flow zeroshot --ddpm runs/ddpm_v/ckpt.pt
    python -m benchmarks.bench_diff2flow finetune --run diff2flow --ddpm runs/ddpm_v/ckpt.pt
    python -m benchmarks.bench_diff2flow finetune --run naive --ddpm runs/ddpm_v/ckpt.pt
    python -m benchmarks.bench_diff2flow finetune --run scratch
    python -m benchmarks.bench_diff2flow report

zeroshot: the same noise x_T ~ N(0, I) (seeded; x_T is the diffusion state at step
N-1), sampled at equal NFE by DDIM (eta = 0, fm_torch.diffusion.ddim_sample) and by
the flow ODE of the wrapped model (DiffusionVelocity.flow_sample: uniform grid from
t_min to 1, euler / midpoint / heun), conditional (guidance w = 1), judged by the
project's MNIST judge (fm_torch.evaluate.mnist_metrics: FD, class accuracy). It also
checks DDIM == Euler on DDIM's flow-time grid on the trained U-Net.

finetune: `fm-torch train`'s loop (fm_torch.train.train) for the same steps, batch,
learning rate and data stream: Diff2Flow (--init-from DDPM --diff2flow), the naive
fine-tune (--init-from DDPM: the same weights fed (x_t, t) directly as a velocity net)
and flow matching from scratch. FD of the EMA weights every EVAL_EVERY steps.
"""

import argparse
import json
import os
import sys
import time

import torch

OUT = os.path.join("runs", "d2f")
NFES = (4, 8, 20, 50)
SAMPLERS = ("DDIM", "flow euler", "flow midpoint")  # heun too costly at n = 500 on 2 cores
PER_STEP = {"euler": 1, "midpoint": 2, "heun": 2}
FINETUNE = dict(steps=300, batch=64, lr=2e-3, ema_decay=0.995, seed=0)
EVAL_AT = (50, 100, 150, 200, 300)
EVAL = dict(n=500, method="midpoint", steps=5)  # 10 NFE per sample, guidance 1


def _judge():
    from fm_numpy.data import load_mnist
    from fm_torch.evaluate import load_or_train_classifier

    classifier, info = load_or_train_classifier(progress=False)
    return classifier, info, (load_mnist("train"), load_mnist("test")), {}


def _score(images, labels, judge):
    from fm_torch.evaluate import mnist_metrics

    classifier, info, reference, memo = judge
    m = mnist_metrics(images, labels, classifier, info, reference, memo=memo)
    return {k: m[k] for k in ("fd", "fd_floor", "class_accuracy", "n")}


def _to_images(x):
    return ((x[:, 0].clamp(-1, 1) + 1) / 2).float().cpu().numpy()  # (N, 28, 28)


def _save(name, result):
    from fm_numpy.io import save_json

    os.makedirs(OUT, exist_ok=True)
    save_json(os.path.join(OUT, f"{name}.json"), result)
    print(f"wrote {os.path.join(OUT, name + '.json')}", flush=True)


@torch.no_grad()
def zeroshot(args):
    from fm_torch.diffusion import ddim_sample, scale_from_flow_time
    from fm_torch.solvers import odeint
    from fm_torch.train import load_model
    from fm_torch.train_diffusion import GuidedDiffusionModel

    v, ckpt = load_model(args.ddpm)  # DiffusionVelocity of the EMA weights
    judge = _judge()
    g = torch.Generator().manual_seed(0)
    y = torch.arange(args.n) % 10
    x_T = torch.randn((args.n, 1, 28, 28), generator=g)
    model = GuidedDiffusionModel(v.timestep_model, y, 1.0)
    partial = os.path.join(OUT, "zeroshot_partial.json")  # rows so far: a rerun continues
    rows = []
    if os.path.exists(partial):
        with open(partial) as f:
            rows = json.load(f)
    for nfe in NFES:
        for name in SAMPLERS:
            if any(r["sampler"] == name and r["nfe"] == nfe for r in rows):
                continue
            start = time.perf_counter()
            if name == "DDIM":
                x1 = ddim_sample(model, x_T, v.alphas_cumprod, nfe, v.prediction, y)
            else:
                method = name.split()[1]
                if nfe % PER_STEP[method]:
                    continue
                x1 = v.flow_sample(x_T, y, 1.0, method, nfe // PER_STEP[method])[-1]
            seconds = time.perf_counter() - start
            row = dict(sampler=name, nfe=nfe, seconds=seconds, **_score(_to_images(x1), y, judge))
            rows.append(row)
            print(row, flush=True)
            _save("zeroshot_partial", rows)
    # DDIM is Euler on DDIM's flow-time grid: on the trained U-Net, float32
    x_small = x_T[:50]
    ddim = ddim_sample(GuidedDiffusionModel(v.timestep_model, y[:50], 1.0), x_small,
                       v.alphas_cumprod, 20, v.prediction, y[:50])
    euler = odeint(lambda x, t: v(x, t, y[:50]), x_small / float(scale_from_flow_time(v.t_min)),
                   v.flow.time_grid(20), "euler")[-1]
    gap = float((ddim - euler).abs().max())
    _save("zeroshot", {"rows": rows, "ddim_vs_euler_max_abs_gap_nfe20": gap,
                       "ddpm_step": int(ckpt["step"]), "config": ckpt["config"],
                       "t_min": v.t_min})


def _settings(run, ddpm, lr=None):
    from fm_torch.train_diffusion import apply_init_from

    base = dict(data="mnist", base=16, mults=[1, 2, 2], sample_every=10_000, ckpt_every=50,
                **{k: v for k, v in FINETUNE.items() if k != "steps"})
    if lr is not None:
        base["lr"] = lr
    if run == "scratch":
        return base
    return apply_init_from(ddpm, run == "diff2flow", base)


@torch.no_grad()
def _evaluate(model, judge):
    from fm_torch.cli_evaluate import sample_images

    start = time.perf_counter()
    images, labels, nfe = sample_images(model, EVAL["n"], 1.0, EVAL["method"], EVAL["steps"])
    return dict(nfe=nfe, sample_seconds=time.perf_counter() - start,
                **_score(images, labels, judge))


def _step0_model(run, settings):
    """The model a run starts from (its step 0): what load_model would give."""
    from fm_torch.train import build_model, resolve_config
    from fm_torch.train_diffusion import load_init_weights, velocity_view

    config = resolve_config(**settings)
    torch.manual_seed(config["seed"])
    model = build_model(config)
    if config["init_from"] is not None:
        load_init_weights(model, config)
    return velocity_view(config, model).eval()


def finetune(args):
    from fm_torch.train import load_model, train

    torch.set_num_threads(1)
    settings = _settings(args.run, args.ddpm, args.lr)
    name = args.run if args.lr is None else f"{args.run}_lr{args.lr:g}"
    out = os.path.join(OUT, name)
    judge = _judge()
    curve = [dict(step=0, train_seconds=0.0, **_evaluate(_step0_model(args.run, settings), judge))]
    print(curve[-1], flush=True)
    train_seconds = 0.0
    for i, step in enumerate(EVAL_AT):
        start = time.perf_counter()
        train(out, resume=i > 0, progress=False, steps=step, **settings)
        train_seconds += time.perf_counter() - start
        model, _ = load_model(os.path.join(out, "ckpt.pt"))
        curve.append(dict(step=step, train_seconds=train_seconds, **_evaluate(model, judge)))
        print(curve[-1], flush=True)
    _save(f"finetune_{name}", {"run": name, "curve": curve, "settings": settings,
                                   "eval": EVAL})


def report(args):
    import matplotlib

    from benchmarks.common import save_figure

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, NullLocator, ScalarFormatter

    with open(os.path.join(OUT, "zeroshot.json")) as f:
        zs = json.load(f)
    runs = {}
    for run in ("diff2flow", "naive", "scratch", "diff2flow_lr0.0005", "naive_lr0.0005"):
        path = os.path.join(OUT, f"finetune_{run}.json")
        if os.path.exists(path):
            with open(path) as f:
                runs[run] = json.load(f)
    print("| sampler | " + " | ".join(f"NFE {n}" for n in NFES) + " |")
    print("|---|" + "---|" * len(NFES))
    for name in SAMPLERS:
        cells = []
        for nfe in NFES:
            row = [r for r in zs["rows"] if r["sampler"] == name and r["nfe"] == nfe]
            cells.append(f"{row[0]['fd']:.2f} / {row[0]['class_accuracy']:.3f}" if row else "-")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"\nFD floor {zs['rows'][0]['fd_floor']:.2f} (n = {zs['rows'][0]['n']}); "
          f"DDIM vs Euler on DDIM's grid, NFE 20, float32: max |gap| "
          f"{zs['ddim_vs_euler_max_abs_gap_nfe20']:.2e}\n")
    print("| run | " + " | ".join(f"step {c['step']}" for c in next(iter(runs.values()))["curve"])
          + " | train s |")
    print("|---|" + "---|" * (len(EVAL_AT) + 2))
    for run, r in runs.items():
        print(f"| {run} | " + " | ".join(f"{c['fd']:.2f}" for c in r["curve"])
              + f" | {r['curve'][-1]['train_seconds']:.0f} |")

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for name, style in zip(SAMPLERS, ("k-o", "C0-s", "C1-^"), strict=True):
        rows = sorted((r for r in zs["rows"] if r["sampler"] == name), key=lambda r: r["nfe"])
        axes[0].plot([r["nfe"] for r in rows], [r["fd"] for r in rows], style, label=name)
        axes[1].plot([r["nfe"] for r in rows], [r["class_accuracy"] for r in rows], style,
                     label=name)
    axes[0].axhline(zs["rows"][0]["fd_floor"], color="gray", ls=":", label="FD floor")
    for ax, what in ((axes[0], "FD (judge features)"), (axes[1], "class accuracy")):
        ax.set_xscale("log")
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticks(NFES, [str(n) for n in NFES])
        ax.set_xlabel("NFE")
        ax.set_ylabel(what)
        ax.legend(fontsize=8)
    for ax in (axes[0], axes[2]):
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
    axes[0].set_yticks([15, 20, 30, 50, 100, 150])
    axes[2].set_yticks([30, 50, 100, 200, 500, 1000, 1500])
    axes[0].set_title("zero-shot: DDPM (v-pred) sampled")
    for run, style in (("diff2flow", "C3-o"), ("naive", "C4-s"), ("scratch", "C5-^"),
                       ("diff2flow_lr0.0005", "C3--."), ("naive_lr0.0005", "C4--.")):
        if run in runs:
            c = runs[run]["curve"]
            axes[2].plot([p["step"] for p in c], [p["fd"] for p in c], style, label=run)
    axes[2].set_xlabel("fine-tune step (batch 64)")
    axes[2].set_ylabel(f"FD (n={EVAL['n']}, midpoint {2 * EVAL['steps']} NFE)")
    axes[2].set_title("flow-matching fine-tune")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join("docs", "img", "bench_diff2flow.png")
    save_figure(fig, path)
    print(f"\nwrote {path}")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_diff2flow")
    sub = p.add_subparsers(dest="phase", required=True)
    z = sub.add_parser("zeroshot")
    z.add_argument("--ddpm", required=True)
    z.add_argument("-n", type=int, default=500)
    f = sub.add_parser("finetune")
    f.add_argument("--run", required=True, choices=("diff2flow", "naive", "scratch"))
    f.add_argument("--ddpm")
    f.add_argument("--lr", type=float, help="another learning rate (default 2e-3 for all)")
    sub.add_parser("report")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    {"zeroshot": zeroshot, "finetune": finetune, "report": report}[args.phase](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
