"""From diffusion to flow (issue #9): a trained toy DDPM sampled by DDIM and by its flow ODE.

An epsilon-prediction DDPM (fm_numpy's MLP fed t = k / 1000 through
fm_numpy.diffusion.TimestepModel, trained with fm_numpy.diffusion.ddpm_loss) learns the
2-D "moons" set, once with Stable Diffusion's scaled-linear schedule (t_min = 0.064) and
once with DDPM's linear one (t_min = 0.0063). From the same noise x_T (seeded) it is
sampled, at equal NFE (network evaluations), by
  - DDIM, eta = 0 (fm_numpy.diffusion.ddim_sample), which is Euler on DDIM's own grid
    of flow times (checked here to rounding);
  - the wrapped CondOT flow ODE (fm_numpy.diffusion.DiffusionToFlow + fm_numpy.solvers.odeint)
    with euler, midpoint and rk4 on a uniform grid from t_min to 1, started at
    x = x_T / s(t_min), as tests/test_diffusion.py does;
and scored by the energy distance to fresh data (fm_numpy.metrics.energy_distance),
read against its noise floor (fm_numpy.metrics.noise_floor: two fresh data sets of the
same size), and by the RMS distance of the samples to the exact solution of the same ODE
(DOP853 at tol 1e-6), which isolates the sampler's error from the network's.

Then Diff2Flow's fine-tune: the flow-matching loss E|v(xt, t) - (x1 - x0)|^2 over
t ~ U(t_min, t_max) of the wrapped pretrained DDPM against a fresh velocity MLP, before
and after the same number of Adam steps on the same batches (the wrapped DDPM trained
through DiffusionToFlow.backward, the fresh MLP directly), and the energy distance of
each after training (rk4, 20 NFE).

    python -m benchmarks.bench_diffusion [--quick]

Prints markdown tables and writes docs/img/bench_diffusion.png (runs/bench/img/ with --quick).
"""

import time

import numpy as np

from benchmarks.common import announce_plot, plot_path, run_from_command_line, save_figure
from fm_numpy.data import sample_toy
from fm_numpy.diffusion import (
    DiffusionToFlow,
    TimestepModel,
    alphas_cumprod,
    ddim_sample,
    ddpm_loss,
    linear_betas,
    scale_from_flow_time,
    scaled_linear_betas,
)
from fm_numpy.metrics import energy_distance, noise_floor
from fm_numpy.models.mlp import MLP
from fm_numpy.optim import Adam
from fm_numpy.paths import AffinePath
from fm_numpy.solvers import odeint

MARKDOWN = True  # benchmarks.run copies this module's output into docs/benchmarks.md as is
TOY = "moons"
SCHEDULES = {"SD scaled-linear": scaled_linear_betas, "DDPM linear": linear_betas}
NET = dict(hidden=64, depth=3, time_features=32)  # tests/test_diffusion.py's toy DDPM
SAMPLERS = ("DDIM", "flow euler", "flow midpoint", "flow rk4")
EVALS_PER_STEP = {"flow euler": 1, "flow midpoint": 2, "flow rk4": 4}
QUICK = dict(train_steps=1000, n=1000, nfe=(8, 20, 40), reps=1, floor_repeats=3,
             finetune_steps=(0, 50, 200), ref_tol=1e-5)
FULL = dict(train_steps=4000, n=3000, nfe=(4, 8, 20, 40, 100), reps=3, floor_repeats=5,
            finetune_steps=(0, 100, 300, 1000, 2000), ref_tol=1e-6)
BATCH = 256
LR_DDPM, LR_FINETUNE, LR_SCRATCH = 2e-3, 5e-4, 2e-3


def _progress(iterable, desc):
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, desc=desc, leave=False, disable=None)  # silent when not a terminal


def _timed(reps, fn, *args, **kwargs):
    times, out = [], None
    for _ in range(reps):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        times.append(time.perf_counter() - start)
    return out, np.array(times)


def train_ddpm(abar, steps, seed=0):
    """The toy DDPM of tests/test_diffusion.py: L_simple, Adam 2e-3, batch 256, float32."""
    net = MLP(2, **NET, seed=seed, dtype=np.float32)
    model = TimestepModel(net)
    opt = Adam(net.params, lr=LR_DDPM)
    rng = np.random.default_rng(seed)
    for _ in _progress(range(steps), "DDPM"):
        x1 = sample_toy(TOY, BATCH, rng, dtype=np.float32)
        x0 = rng.standard_normal(x1.shape).astype(np.float32)
        k = rng.integers(0, len(abar), BATCH)
        _, d_out = ddpm_loss(model, x0, x1, k, abar)
        opt.step(net.backward(d_out))
    return net


def copy_mlp(net):
    """A second MLP with the same configuration and a copy of net's parameters."""
    twin = MLP(net.dim, hidden=net.hidden, depth=net.depth, time_features=net.time_features,
               seed=net.seed, dtype=net.dtype)
    for name, p in net.params.items():
        twin.params[name][...] = p
    return twin


def sample(name, model, v, x_T, x_start, abar, nfe):
    """x at t = 1 from one noise batch by one sampler with `nfe` network evaluations."""
    if name == "DDIM":
        return ddim_sample(model, x_T, abar, nfe)
    steps = nfe // EVALS_PER_STEP[name]
    return odeint(v, x_start, np.linspace(v.t_min, 1, steps + 1), name.split()[1])[-1]


def sampling_rows(label, net, abar, cfg, data, x_T):
    """(schedule, sampler, NFE, energy distance, RMS to the exact ODE, times) per setting."""
    model = TimestepModel(net)
    v = DiffusionToFlow(model, abar, "epsilon")
    x_start = (x_T / scale_from_flow_time(v.t_min)).astype(np.float32)  # x_T at step N-1
    # the field has a kink at every table time (k(t) is piecewise linear): many evaluations
    xs, ref_nfe = odeint(v, x_start, np.array([v.t_min, 1.0]), "DOP853",
                         rtol=cfg["ref_tol"], atol=cfg["ref_tol"], return_nfe=True)
    x_exact = xs[-1]

    def rms(x1):
        return float(np.sqrt(np.mean(np.sum((x1.astype(np.float64) - x_exact) ** 2, axis=1))))

    rows = [(label, "noise x_T itself", 0, energy_distance(x_T, data), None, None)]
    for nfe in cfg["nfe"]:
        for name in SAMPLERS:
            x1, times = _timed(cfg["reps"], sample, name, model, v, x_T, x_start, abar, nfe)
            rows.append((label, name, nfe, energy_distance(x1, data), rms(x1), times))
    # DDIM is Euler on DDIM's flow-time grid (docs/diffusion.md): the same numbers
    nfe = cfg["nfe"][len(cfg["nfe"]) // 2]
    euler_on_ddim_grid = odeint(v, x_start, v.time_grid(nfe), "euler")[-1]
    gap = float(np.max(np.abs(euler_on_ddim_grid - ddim_sample(model, x_T, abar, nfe))))
    return rows, (label, nfe, gap, v.t_min, ref_nfe)


def finetune(label, net, abar, cfg, seed=1):
    """FM-loss curves of Diff2Flow (the wrapped DDPM) and of a fresh velocity MLP.

    Both take the same batches (xt, ut, t) of the CondOT path, t ~ U(t_min, t_max), and
    the same number of Adam steps; the loss is evaluated on one fixed held-out batch.
    """
    path = AffinePath()
    tuned = copy_mlp(net)  # the sampling rows keep the pretrained DDPM
    v = DiffusionToFlow(TimestepModel(tuned), abar, "epsilon")
    scratch = MLP(2, **NET, seed=seed, dtype=np.float32)
    fresh_eps = DiffusionToFlow(TimestepModel(MLP(2, **NET, seed=seed, dtype=np.float32)),
                                abar, "epsilon")

    def batch(rng, n):
        x1 = sample_toy(TOY, n, rng, dtype=np.float32)
        x0 = rng.standard_normal(x1.shape).astype(np.float32)
        t = rng.uniform(v.t_min, v.t_max, n)  # flow times with a diffusion counterpart
        xt, ut = path.sample(x0, x1, t.astype(np.float32))
        return xt, ut, t

    xt_eval, ut_eval, t_eval = batch(np.random.default_rng(13), 4096)

    def fm_loss(field):
        return float(np.mean((field(xt_eval, t_eval) - ut_eval) ** 2))

    initial_fresh_eps = fm_loss(fresh_eps)
    opt_tuned = Adam(tuned.params, lr=LR_FINETUNE)
    opt_scratch = Adam(scratch.params, lr=LR_SCRATCH)
    rng = np.random.default_rng(100)
    curve = [(0, fm_loss(v), fm_loss(scratch))]
    last = max(cfg["finetune_steps"])
    every = max(1, last // 40)
    for step in _progress(range(1, last + 1), "fine-tune"):
        xb, ub, tb = batch(rng, BATCH)
        dv = 2 * (v(xb, tb) - ub) / ub.size  # dL/dv of the FM loss
        opt_tuned.step(v.backward(dv))
        dv = 2 * (scratch(xb, tb) - ub) / ub.size
        opt_scratch.step(scratch.backward(dv))
        if step % every == 0 or step in cfg["finetune_steps"]:
            curve.append((step, fm_loss(v), fm_loss(scratch)))
    return dict(label=label, curve=curve, fresh_eps=initial_fresh_eps, v=v, scratch=scratch)


def run(quick=False):
    cfg = QUICK if quick else FULL
    n = cfg["n"]
    x_T = np.random.default_rng(11).standard_normal((n, 2)).astype(np.float32)
    data = sample_toy(TOY, n, 12)
    floor = noise_floor(energy_distance, lambda m, r: sample_toy(TOY, m, r), n,
                        repeats=cfg["floor_repeats"], rng=14)
    rows, checks, tunes, train_s = [], [], [], {}
    for label, betas in SCHEDULES.items():
        abar = alphas_cumprod(betas())
        start = time.perf_counter()
        net = train_ddpm(abar, cfg["train_steps"])
        train_s[label] = time.perf_counter() - start
        r, c = sampling_rows(label, net, abar, cfg, data, x_T)
        rows += r
        checks.append(c)
        tune = finetune(label, net, abar, cfg)
        x_start = (x_T / scale_from_flow_time(tune["v"].t_min)).astype(np.float32)
        grid = np.linspace(tune["v"].t_min, 1, 20 // 4 + 1)
        tune["ed"] = {name: energy_distance(odeint(field, x_start, grid, "rk4")[-1], data)
                      for name, field in (("Diff2Flow", tune["v"]), ("scratch", tune["scratch"]))}
        tunes.append(tune)
    return dict(cfg=cfg, rows=rows, checks=checks, tunes=tunes, floor=floor, train_s=train_s)


def _ms(times):
    if times is None:
        return "-"
    return f"{1e3 * np.median(times):.1f} [{1e3 * times.min():.1f}, {1e3 * times.max():.1f}]"


def table(res):
    cfg, (floor_mean, floor_std) = res["cfg"], res["floor"]
    n = cfg["n"]
    lines = [
        f"Toy DDPM on `{TOY}`: epsilon-prediction MLP (hidden {NET['hidden']}, depth "
        f"{NET['depth']}, float32), {cfg['train_steps']} Adam steps (lr {LR_DDPM:g}, batch "
        f"{BATCH}) per schedule ("
        + ", ".join(f"{k}: {s:.1f} s" for k, s in res["train_s"].items()) + "). "
        f"{n} samples from one seeded x_T; energy distance (V-statistic) to {n} fresh data "
        f"points; noise floor (two fresh data sets of {n}, {cfg['floor_repeats']} pairs) "
        f"**{floor_mean:.4f} +- {floor_std:.4f}**. RMS = root mean square distance of the "
        f"samples to the exact solution of the wrapped flow ODE (DOP853, tol "
        f"{cfg['ref_tol']:.0e}), i.e. the sampler's own error. Flow samplers: uniform grid "
        "from t_min to 1 with NFE / (1, 2, 4) steps for euler / midpoint / rk4. Time: whole "
        f"batch, median [min, max] of {cfg['reps']}.",
        "",
        "| schedule | sampler | NFE | energy distance | RMS to exact ODE | time ms |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for label, name, nfe, ed, rms, times in res["rows"]:
        rms = "-" if rms is None else f"{rms:.2e}"
        lines.append(f"| {label} | {name} | {nfe} | {ed:.4f} | {rms} | {_ms(times)} |")
    lines.append("")
    for label, nfe, gap, t_min, ref_nfe in res["checks"]:
        lines.append(f"- {label} (t_min = {t_min:.4f}): Euler on DDIM's flow-time grid vs "
                     f"DDIM at {nfe} steps, max |difference| = {gap:.1e} (DDIM is Euler); "
                     f"the exact-ODE reference took {ref_nfe} evaluations.")
    for label in SCHEDULES:
        best = {}
        for lab, name, nfe, ed, _, _ in res["rows"]:
            if lab == label and nfe and (nfe not in best or ed < best[nfe][1]):
                best[nfe] = (name, ed)
        lines.append(f"- {label}, lowest energy distance per NFE: " + "; ".join(
            f"{nfe}: {name} {ed:.4f}" for nfe, (name, ed) in sorted(best.items()))
            + f" (gaps under the floor's spread, {floor_std:.4f}, are noise).")
    lines += [
        "",
        "Diff2Flow fine-tune: flow-matching loss E|v(xt, t) - (x1 - x0)|^2 on one held-out "
        "batch of 4096 (t ~ U(t_min, t_max); the loss has an irreducible part, so 0 is out "
        f"of reach). Diff2Flow = the pretrained DDPM wrapped by DiffusionToFlow, Adam "
        f"{LR_FINETUNE:g}, gradients through DiffusionToFlow.backward; scratch = a fresh "
        f"velocity MLP of the same size, Adam {LR_SCRATCH:g}; same batches of {BATCH}. "
        "Energy distance after the last step: rk4, 20 NFE, same x_T.",
        "",
        "| schedule | steps | FM loss Diff2Flow | FM loss scratch | ratio |",
        "|---|---:|---:|---:|---:|",
    ]
    for tune in res["tunes"]:
        for step, loss_tuned, loss_scratch in tune["curve"]:
            if step in cfg["finetune_steps"]:
                lines.append(f"| {tune['label']} | {step} | {loss_tuned:.4f} | "
                             f"{loss_scratch:.4f} | {loss_tuned / loss_scratch:.3f} |")
    lines.append("")
    for tune in res["tunes"]:
        last = tune["curve"][-1][0]
        lines.append(
            f"- {tune['label']}: a fresh epsilon-MLP wrapped the same way starts at FM loss "
            f"{tune['fresh_eps']:.3f}; after {last} steps energy distance Diff2Flow "
            f"{tune['ed']['Diff2Flow']:.4f}, scratch {tune['ed']['scratch']:.4f} "
            f"(floor {floor_mean:.4f}).")
    return "\n".join(lines)


def plot(res, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), dpi=80)
    floor_mean, floor_std = res["floor"]
    styles = dict(zip(SCHEDULES, ("-", "--"), strict=True))
    colors = dict(zip(SAMPLERS, ("k", "tab:blue", "tab:orange", "tab:green"), strict=True))
    for label in SCHEDULES:
        for name in SAMPLERS:
            sel = [r for r in res["rows"] if r[0] == label and r[1] == name]
            nfe = [r[2] for r in sel]
            axes[0].semilogx(nfe, [r[3] for r in sel], "o" + styles[label], ms=3,
                             color=colors[name], label=f"{name} ({label})")
            axes[1].loglog(nfe, [max(r[4], 1e-12) for r in sel], "o" + styles[label], ms=3,
                           color=colors[name])
    axes[0].axhspan(floor_mean - floor_std, floor_mean + floor_std, color="grey", alpha=0.3,
                    label="noise floor")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("NFE")
    axes[0].set_ylabel("energy distance to data")
    axes[0].set_title(f"{TOY}: DDIM vs flow ODE of one DDPM", fontsize=9)
    axes[0].legend(fontsize=6, ncol=2)
    axes[1].set_xlabel("NFE")
    axes[1].set_ylabel("RMS to the exact flow ODE solution")
    axes[1].set_title("sampler error (solid SD, dashed DDPM-linear)", fontsize=9)
    for tune in res["tunes"]:
        steps, tuned, scratch = (np.array(c) for c in zip(*tune["curve"], strict=True))
        axes[2].plot(steps, tuned, styles[tune["label"]], color="tab:red",
                     label=f"Diff2Flow ({tune['label']})")
        axes[2].plot(steps, scratch, styles[tune["label"]], color="tab:purple",
                     label=f"scratch ({tune['label']})")
    axes[2].set_yscale("log")
    axes[2].set_xlabel("Adam steps")
    axes[2].set_ylabel("flow-matching loss (held out)")
    axes[2].set_title("fine-tune: pretrained DDPM vs fresh MLP", fontsize=9)
    axes[2].legend(fontsize=6)
    for ax in axes:
        ax.grid(True, which="major", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def main(quick=False, out_dir=None):
    """Run, print the markdown tables, write the PNG; returns the results."""
    res = run(quick)
    print(table(res))
    path = plot_path("bench_diffusion", quick, out_dir)
    plot(res, path)
    announce_plot(path, quick, "DDIM vs flow ODE, and the Diff2Flow fine-tune")
    return res


if __name__ == "__main__":
    run_from_command_line(main, __doc__, "fewer steps, samples and NFEs")
