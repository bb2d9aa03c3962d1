"""Few-step generation in 2-D: quality against NFE for independent, ot, reflow-2, MeanFlow.

For 8gaussians and checkerboard, four fm_numpy MLPs (256 x 3, batch 512, Adam 2e-3) are
trained for 1500 steps (quick: 60) by the training loop itself (fm_numpy.train.train,
one run folder each under runs/bench/fewstep/):
  - independent: flow matching on independent pairs (the teacher of reflow);
  - ot: minibatch exact OT pairs (`coupling="ot"`, blocks of 128);
  - reflow-2: a fresh student on 10,000 pairs (x0, ODE_teacher(x0)) (rk4, 20 steps);
  - meanflow: the average-velocity objective (meanflow_ratio 0.5, plain L2: norm_p 0).
Each is sampled from one seeded x0 batch with Euler at 1, 2, 4, 8, 40 NFE (MeanFlow:
K average-velocity steps) and scored by the energy distance to fresh data (V-statistic,
fm_numpy.metrics.energy_distance) beside its noise floor, plus Liu et al.'s straightness
S of the 40-step Euler path of the instantaneous velocity (fm_numpy.straightness).
Then the coupling cost: seconds of ot-class at MNIST batch 128 against a training step
(fm_numpy MLP 784-512x3, fm_torch U-Net base 32), and of ot (whole batch and blocks) and
sinkhorn at 2-D batch 4096 against a 2-D MLP training step.

    python -m benchmarks.bench_fewstep [--quick]

Prints markdown tables and writes docs/img/bench_fewstep.png (energy distance vs NFE).
"""

import os
import shutil
import time

import numpy as np

from benchmarks.common import ROOT, announce_plot, plot_path, run_from_command_line, save_figure

MARKDOWN = True
DATASETS = ("8gaussians", "checkerboard")
METHODS = ("independent", "ot", "reflow-2", "meanflow")
NFES = (1, 2, 4, 8, 40)
RUNS = os.path.join(ROOT, "runs", "bench", "fewstep")


def _train_all(name, steps, pairs, quick):
    from fm_numpy.reflow import reflow
    from fm_numpy.train import train

    common = dict(data=name, steps=steps, batch=512, hidden=256, depth=3, seed=0,
                  ckpt_every=steps)
    base = os.path.join(RUNS, ("quick-" if quick else "") + name)
    shutil.rmtree(base, ignore_errors=True)
    models, seconds = {}, {}
    for method, extra in (("independent", {}), ("ot", {"coupling": "ot", "coupling_block": 128}),
                          ("meanflow", {"objective": "meanflow", "meanflow_ratio": 0.5,
                                        "meanflow_norm_p": 0.0})):
        start = time.perf_counter()
        models[method], _ = train(os.path.join(base, method), progress=False, **common, **extra)
        seconds[method] = time.perf_counter() - start
    start = time.perf_counter()
    student = {k: v for k, v in common.items() if k not in ("data", "seed")}
    models["reflow-2"], _ = reflow(os.path.join(base, "independent", "model.npz"), pairs,
                                   os.path.join(base, "reflow-2"), seed=0, method="rk4",
                                   solver_steps=20, progress=False, **student)
    seconds["reflow-2"] = time.perf_counter() - start
    return models, seconds


def _sample(method, model, x0, nfe):
    from fm_numpy.meanflow import sample as meanflow_sample
    from fm_numpy.solvers import odeint

    if method == "meanflow":
        return meanflow_sample(model, x0, nfe)[-1]
    return odeint(model, x0, np.linspace(0, 1, nfe + 1), "euler")[-1]


def quality(quick):
    from fm_numpy.data import sample_toy
    from fm_numpy.metrics import energy_distance, noise_floor
    from fm_numpy.straightness import straightness

    # quick: the plumbing only (the test suite runs it), not figures worth reading
    steps, pairs, n = (60, 1000, 500) if quick else (1500, 10000, 2000)
    results, floors, times = {}, {}, {}
    for name in DATASETS:
        models, times[name] = _train_all(name, steps, pairs, quick)
        x0 = np.random.default_rng(1).standard_normal((n, 2)).astype(np.float32)  # (n, 2)
        data = sample_toy(name, n, np.random.default_rng(2))
        floors[name] = noise_floor(energy_distance, lambda m, r, name=name: sample_toy(name, m, r),
                                   n, repeats=3, rng=3)
        for method in METHODS:
            model = models[method]
            ed = {k: energy_distance(_sample(method, model, x0, k), data) for k in NFES}
            s = straightness(lambda x, t, model=model: model(x, t), x0[:1000],
                             np.linspace(0, 1, 41), "euler")["straightness"]
            results[name, method] = (ed, s)
    return results, floors, times, steps, pairs, n


def _step_seconds(fn, reps):
    fn()  # warm-up (buffers, BLAS)
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps


def coupling_cost(quick):
    """Rows (setting, coupling, coupling seconds, step seconds, share)."""
    import torch

    import fm_numpy.coupling as npc
    import fm_torch.coupling as thc
    from fm_numpy.models.mlp import MLP
    from fm_numpy.optim import Adam
    from fm_numpy.paths import AffinePath

    rng = np.random.default_rng(0)
    reps = 2 if quick else 5
    rows = []

    def numpy_step(model, opt, x0, x1, t, y=None):
        xt, ut = AffinePath().sample(x0, x1, t)
        diff = model.forward(xt, t, y) - ut
        opt.step(model.backward(diff * (2.0 / diff.size)))

    # MNIST batch 128, ot-class on the flattened images, 10 classes
    x1 = rng.uniform(-1, 1, (128, 784)).astype(np.float32)
    x0 = rng.standard_normal((128, 784)).astype(np.float32)
    y = rng.integers(0, 10, 128)
    t = rng.random(128).astype(np.float32)
    cpl = _step_seconds(lambda: npc.ot_class_assignment(x0, x1, y), reps)
    mlp = MLP(784, 512, 3, 32, 10, seed=0)
    opt = Adam(mlp.params, lr=1e-3)
    step = _step_seconds(lambda: numpy_step(mlp, opt, x0, x1, t, y), reps)
    rows.append(("MNIST B=128, fm_numpy MLP 512x3", "ot-class", cpl, step))
    from fm_torch.models.unet import UNet

    unet = UNet(1, 32, (1, 2, 2), 1, 32, 10)
    topt = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    tx0, tx1 = torch.from_numpy(x0).reshape(128, 1, 28, 28), torch.from_numpy(x1).reshape(
        128, 1, 28, 28)
    ty, tt = torch.from_numpy(y), torch.from_numpy(t)

    def torch_step():
        xt = tt[:, None, None, None] * tx1 + (1 - tt[:, None, None, None]) * tx0
        loss = torch.mean((unet(xt, tt, ty) - (tx1 - tx0)) ** 2)
        topt.zero_grad()
        loss.backward()
        topt.step()

    cpl_t = _step_seconds(lambda: thc.ot_class_assignment(tx0, tx1, ty), reps)
    rows.append(("MNIST B=128, fm_torch U-Net base 32", "ot-class",
                 cpl_t, _step_seconds(torch_step, 1 if quick else 2)))
    # 2-D batch 4096 against the 2-D MLP (256 x 3) step
    from fm_numpy.data import sample_toy

    B = 4096
    x1 = sample_toy("8gaussians", B, rng)
    x0 = rng.standard_normal((B, 2)).astype(np.float32)
    t = rng.random(B).astype(np.float32)
    mlp = MLP(2, 256, 3, 32, seed=0)
    opt = Adam(mlp.params, lr=2e-3)
    step = _step_seconds(lambda: numpy_step(mlp, opt, x0, x1, t), reps)
    settings = [("ot", dict(block=64)), ("ot", dict(block=128)), ("ot", dict(block=256)),
                ("sinkhorn", dict(block=256))]
    if not quick:
        settings.insert(0, ("ot", dict(block=None)))
    for name, kw in settings:
        fn = (lambda kw=kw: npc.assignment(x0, x1, **kw)) if name == "ot" else (
            lambda kw=kw: npc.sinkhorn_coupling(x0, x1, rng.random(B), **kw))
        cpl = _step_seconds(fn, 1 if kw["block"] is None else reps)
        perm = fn()
        cost = float(np.mean(np.sum((x0[perm] - x1) ** 2, axis=1)))
        label = f"{name}, " + ("whole batch" if kw["block"] is None else f"blocks of {kw['block']}")
        rows.append((f"2-D B=4096, fm_numpy MLP 256x3 (pair cost {cost:.3f})", label, cpl, step))
    indep = float(np.mean(np.sum((x0 - x1) ** 2, axis=1)))
    return rows, indep


def plot(results, floors, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(DATASETS), figsize=(10, 4), sharey=False)
    for ax, name in zip(axes, DATASETS, strict=True):
        for method in METHODS:
            ed, _ = results[name, method]
            ax.plot(NFES, [ed[k] for k in NFES], marker="o", label=method)
        ax.axhline(floors[name][0], color="gray", ls="--", lw=1, label="noise floor")
        ax.axhline(2 * results[name, "independent"][0][40], color="tab:blue", ls=":", lw=1,
                   label="2 x independent @ 40 NFE")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(NFES, [str(k) for k in NFES])
        ax.set_xlabel("NFE (Euler steps; MeanFlow: average-velocity steps)")
        ax.set_ylabel("energy distance to data")
        ax.set_title(name)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def main(quick=False):
    start = time.perf_counter()
    results, floors, times, steps, pairs, n = quality(quick)
    print(f"fm_numpy MLP 256x3, {steps} training steps of batch 512 per model, reflow-2 on "
          f"{pairs} rk4-20 pairs of the independent model; {n} samples from one seeded x0, "
          f"energy distance to {n} fresh data points (floor: two fresh data sets, mean +- std "
          f"of 3); S = straightness of the 40-step Euler path.\n")
    for name in DATASETS:
        floor = floors[name]
        print(f"**{name}** (noise floor {floor[0]:.4f} +- {floor[1]:.4f})\n")
        print("| method | " + " | ".join(f"ED @ {k} NFE" for k in NFES) + " | S | train s |")
        print("|---|" + "---:|" * (len(NFES) + 2))
        for method in METHODS:
            ed, s = results[name, method]
            cells = " | ".join(f"{ed[k]:.4f}" for k in NFES)
            print(f"| {method} | {cells} | {s:.4f} | {times[name][method]:.0f} |")
        best = min(METHODS, key=lambda m: results[name, m][0][1])
        goal = 2 * results[name, "independent"][0][40]
        one = results[name, best][0][1]
        print(f"\nGoal (1 NFE within 2x of independent @ 40 NFE = {goal:.4f}): best at 1 NFE is "
              f"{best} with {one:.4f}: {'met' if one <= goal else 'not met'} "
              f"(ratio {one / results[name, 'independent'][0][40]:.2f}x).\n")
    rows, indep = coupling_cost(quick)
    print(f"Coupling cost (seconds per call, mean of repetitions; 2-D independent pair cost "
          f"{indep:.3f}):\n")
    print("| setting | coupling | coupling s | network step s | coupling / (step + coupling) "
          "| coupling / step |")
    print("|---|---|---:|---:|---:|---:|")
    for setting, name, cpl, step in rows:
        print(f"| {setting} | {name} | {cpl:.4f} | {step:.4f} | {100 * cpl / (cpl + step):.1f}% "
              f"| {100 * cpl / step:.1f}% |")
    path = plot_path("bench_fewstep", quick)
    plot(results, floors, path)
    announce_plot(path, quick, "energy distance against NFE, 2-D few-step methods")
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    run_from_command_line(main, __doc__, "400 training steps, 1000 samples")
