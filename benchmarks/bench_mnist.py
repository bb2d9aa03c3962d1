"""Judge metrics of a class-conditional MNIST U-Net against training steps, NFE and guidance.

A small U-Net is trained with fm_torch.train (CPU) in stages, resuming the same run, and
after each stage n samples (classes 0..9 in turn) are judged by fm_torch.evaluate: the
Frechet distance of the judge's features to the real test split, beside the floor
(n real training images vs the same test split), and the judge's class accuracy on the
samples (it asked for y; does the judge see y?). On the last checkpoint two sweeps:
sampling NFE (euler and midpoint, several grid sizes, w = 1) and guidance scale w.

    python -m benchmarks.bench_mnist [--quick]

The judge is the cached one of fm_torch.evaluate (trained on first use; its test accuracy
is printed). --quick trains a tiny U-Net for a few dozen steps and a small judge (the
numbers only show that the pipeline runs; they say nothing about quality).
Set FM_BENCH_MNIST_CKPT to a trained ckpt.pt to run the NFE and guidance sweeps on it
instead of the benchmark's own small model.
Prints markdown tables and writes docs/img/bench_mnist.png.
"""

import os
import shutil
import time

from benchmarks.common import ROOT, announce_plot, plot_path, run_from_command_line, save_figure

MARKDOWN = True
RUN_DIR = os.path.join(ROOT, "runs", "bench", "mnist")

# The stages resume one run with a longer horizon each time, so the learning rate must not
# depend on the horizon: a constant one (MNIST's default cosine refuses such a resume).
FULL = dict(
    model=dict(base=16, mults=[1, 2], res_blocks=1, batch=32, lr=2e-3, ema_decay=0.99,
               lr_schedule="constant"),
    stages=[100, 200, 400], n=300, judge=dict(steps=2000, width=32),
    nfe=[("euler", 5), ("euler", 10), ("midpoint", 5), ("midpoint", 10)],
    guidance=[0.0, 1.0, 2.0, 3.0], method=("midpoint", 5),
)
QUICK = dict(
    model=dict(base=8, mults=[1, 2], res_blocks=1, batch=16, lr=2e-3, ema_decay=0.9,
               lr_schedule="constant"),
    stages=[10, 20], n=100, judge=dict(steps=300, width=16),
    nfe=[("euler", 2), ("midpoint", 2)],
    guidance=[1.0, 2.0], method=("euler", 4),
)


def _reference():
    from fm_numpy.data import load_mnist

    return load_mnist("train"), load_mnist("test")


def run(quick=False):
    import torch

    from fm_torch.cli_evaluate import evaluate_checkpoint
    from fm_torch.evaluate import load_or_train_classifier
    from fm_torch.train import train

    cfg = QUICK if quick else FULL
    reference = _reference()
    judge, info = load_or_train_classifier(**cfg["judge"], progress=False, data=reference)
    out = RUN_DIR + ("-quick" if quick else "")
    if os.path.isdir(out):
        shutil.rmtree(out)  # a fresh run each time: stages are resumed from this run only
    method, steps = cfg["method"]
    memo = {}  # test-split statistics and floors, computed once
    done = {}  # (checkpoint, step, w, method, steps) -> metrics: no setting sampled twice

    def judge_ckpt(ckpt, **kw):
        args = dict(n=cfg["n"], guidance=1.0, method=method, steps=steps, seed=0,
                    classifier=judge, info=info, reference=reference, progress=False, memo=memo)
        args.update(kw)
        key = (ckpt, os.stat(ckpt).st_mtime_ns, args["guidance"], args["method"], args["steps"])
        if key not in done:
            done[key] = evaluate_checkpoint(ckpt, **args)
        return done[key]

    stage_rows, t_train = [], 0.0
    for k, s in enumerate(cfg["stages"]):
        start = time.perf_counter()
        train(out, resume=k > 0, progress=False, device="cpu", data="mnist", steps=s,
              ckpt_every=s, sample_every=10**9, **cfg["model"])
        t_train += time.perf_counter() - start
        m = judge_ckpt(os.path.join(out, "ckpt.pt"))
        stage_rows.append((s, t_train, m))
    ckpt = os.environ.get("FM_BENCH_MNIST_CKPT") or os.path.join(out, "ckpt.pt")
    nfe_rows = [(meth, st, judge_ckpt(ckpt, method=meth, steps=st)) for meth, st in cfg["nfe"]]
    guidance_rows = [(w, judge_ckpt(ckpt, guidance=w)) for w in cfg["guidance"]]
    params = sum(p.numel() for p in torch.load(
        ckpt, map_location="cpu", weights_only=True)["model"].values())
    return dict(cfg=cfg, info=info, stages=stage_rows, nfe=nfe_rows, guidance=guidance_rows,
                ckpt=ckpt, params=params)


def table(res):
    cfg, info = res["cfg"], res["info"]
    method, steps = cfg["method"]
    mdl = cfg["model"]
    lines = [
        f"U-Net base {mdl['base']}, mults {mdl['mults']}, {res['params'] / 1e6:.2f} M "
        f"parameters, batch {mdl['batch']}, AdamW {mdl['lr']:g}, EMA {mdl['ema_decay']} (CPU). "
        f"Judge: the project's CNN ({info['steps']} steps, width {info['width']}), "
        f"test accuracy {info['test_accuracy']:.4f}. n = {cfg['n']} samples per row; "
        "FD floor = n real training images vs the test split.",
        "",
        f"Against training steps ({method}, {steps} steps, w = 1):",
        "",
        "| training steps | train s (cumulative) | FD | FD floor | class accuracy |",
        "|---:|---:|---:|---:|---:|",
    ]
    for s, sec, m in res["stages"]:
        lines.append(f"| {s} | {sec:.0f} | {m['fd']:.2f} | {m['fd_floor']:.2f} | "
                     f"{m['class_accuracy']:.3f} |")
    lines += ["", f"Against sampling NFE (checkpoint {os.path.relpath(res['ckpt'], ROOT)}, "
              "w = 1):", "", "| method | steps | NFE | FD | class accuracy | sampling s |",
              "|---|---:|---:|---:|---:|---:|"]
    for meth, st, m in res["nfe"]:
        lines.append(f"| {meth} | {st} | {m['nfe']} | {m['fd']:.2f} | "
                     f"{m['class_accuracy']:.3f} | {m['sample_seconds']:.1f} |")
    lines += ["", f"Against guidance w ({method}, {steps} steps; w = 0 unconditional, "
              "1 conditional):", "", "| w | model calls | FD | class accuracy |",
              "|---:|---:|---:|---:|"]
    for w, m in res["guidance"]:
        lines.append(f"| {w:g} | {m['model_calls']} | {m['fd']:.2f} | "
                     f"{m['class_accuracy']:.3f} |")
    return "\n".join(lines)


def plot(res, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    fig, axes = plt.subplots(1, 3, figsize=(10, 3), dpi=80)
    s = [r[0] for r in res["stages"]]
    axes[0].plot(s, [r[2]["fd"] for r in res["stages"]], "o-", label="FD")
    axes[0].axhline(res["stages"][-1][2]["fd_floor"], color="gray", ls="--", label="floor")
    axes[0].set_xlabel("training steps")
    axes[0].set_ylabel("FD (judge features)")
    axes[0].legend(fontsize=7)
    for meth in sorted({r[0] for r in res["nfe"]}):
        sel = [r for r in res["nfe"] if r[0] == meth]
        axes[1].plot([r[2]["nfe"] for r in sel], [r[2]["fd"] for r in sel], "o-", label=meth)
    axes[1].set_xlabel("NFE")
    axes[1].set_ylabel("FD")
    axes[1].legend(fontsize=7)
    w = [r[0] for r in res["guidance"]]
    axes[2].plot(w, [r[1]["fd"] for r in res["guidance"]], "o-", label="FD")
    ax2 = axes[2].twinx()
    ax2.plot(w, [r[1]["class_accuracy"] for r in res["guidance"]], "s--", color="tab:red")
    ax2.set_ylabel("class accuracy", color="tab:red")
    axes[2].set_xlabel("guidance w")
    axes[2].set_ylabel("FD")
    fig.tight_layout()
    save_figure(fig, path)


def main(quick=False, out_dir=None):
    res = run(quick)
    print(table(res))
    path = plot_path("bench_mnist", quick, out_dir)
    plot(res, path)
    announce_plot(path, quick, "MNIST judge metrics")
    return res


if __name__ == "__main__":
    run_from_command_line(main, __doc__, "a tiny run: pipeline check only")
