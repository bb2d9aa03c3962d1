"""fm-dual against Meta's `flow_matching` and `torchcfm` on one 2-D task, side by side.

Task: 8gaussians, CondOT path (torchcfm: ConditionalFlowMatcher(sigma=0), the same
path), one network for everyone: fm_torch's MLP(2, 256, 3) from the same seed, Adam lr
2e-3, batch 512. Each library supplies what it owns: the path sample (xt, ut) for the
loss and the ODE sampler (Meta: ODESolver with step_size; torchcfm's examples: plain
torchdiffeq.odeint). fm_numpy (manual backward, its own Adam) runs the same recipe.
  - time per training step: the runs train in interleaved blocks of steps (one block
    of each library in turn, so machine load hits all alike), median [q25, q75] per step;
  - sampling time at equal NFE (midpoint, 10 steps = 20 NFE, 2000 samples), median of
    interleaved repetitions;
  - quality at equal budget (same steps): energy distance between 2000 samples and
    2000 fresh data points, beside the noise floor (two fresh data sets).
Then Meta's own 2-D notebook recipe (checkerboard / 0.45, MLP 4 x 512, batch 4096, Adam
1e-3, 2000 iterations, 3 seeds; benchmarks/notebook2d.py): its MLP and ODESolver against
our default recipe, sliced W1, fraction inside the squares, exact log-likelihood.
Then the U-Net training step: ours (fm_torch.models.unet.UNet, base 32, mults 1,2,2,
attention at 7x7) against torchcfm's UNetModel (32 channels, 1 res block, as in its
MNIST example, which puts attention at 28x28; and with attention at 7x7), images/s.

The two packages are not dependencies of fm-dual: they are installed for this benchmark
only, `pip install --no-deps` from PyPI into runs/bench/site (plus POT, which torchcfm
imports), and put on sys.path; the venv is not touched. If one cannot be installed or
imported, its rows say so and the benchmark goes on.

    python -m benchmarks.bench_libraries [--quick]
"""

import time

import numpy as np

from benchmarks.common import announce_plot, plot_path, run_from_command_line, save_figure
from benchmarks.peers import ensure_packages

MARKDOWN = True
DATA, BATCH, HIDDEN, DEPTH, LR = "8gaussians", 512, 256, 3, 2e-3


# ------------------------------------------------------------- one trainer per library
class _TorchRun:
    """Our MLP and Adam; `pair(x0, x1)` gives (t, xt, ut) the library's way."""

    def __init__(self, name, pair, sampler):
        import torch

        from fm_torch.models.mlp import MLP

        self.name, self.pair, self.sampler = name, pair, sampler
        torch.manual_seed(0)
        self.model = MLP(2, HIDDEN, DEPTH, seed=0)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=LR)
        self.gen = torch.Generator().manual_seed(1)

    def step(self, x1):
        import torch

        x0 = torch.randn(x1.shape, generator=self.gen)  # (B, 2)
        t, xt, ut = self.pair(x0, x1, self.gen)
        loss = torch.mean((self.model(xt, t) - ut) ** 2)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.item()

    def sample(self, x0, steps):
        import torch

        with torch.no_grad():
            return self.sampler(self.model, x0, steps).numpy()


def _ours():
    import torch

    from fm_torch.paths import AffinePath, CondOT
    from fm_torch.solvers import odeint

    path = AffinePath(CondOT())

    def pair(x0, x1, gen):
        t = torch.rand(x1.shape[0], generator=gen)  # (B,)
        xt, ut = path.sample(x0, x1, t)
        return t, xt, ut

    def sampler(model, x0, steps):
        grid = torch.linspace(0, 1, steps + 1)
        return odeint(lambda x, t: model(x, t), x0, grid, "midpoint")[-1]

    return _TorchRun("fm_torch (ours)", pair, sampler)


def _meta():
    import torch
    from flow_matching.path import AffineProbPath
    from flow_matching.path.scheduler import CondOTScheduler
    from flow_matching.solver import ODESolver
    from flow_matching.utils import ModelWrapper

    path = AffineProbPath(scheduler=CondOTScheduler())

    def pair(x0, x1, gen):
        t = torch.rand(x1.shape[0], generator=gen)  # (B,)
        s = path.sample(x_0=x0, x_1=x1, t=t)
        return t, s.x_t, s.dx_t

    class Wrapped(ModelWrapper):
        def forward(self, x, t, **extras):
            return self.model(x, t)

    def sampler(model, x0, steps):
        solver = ODESolver(velocity_model=Wrapped(model))
        return solver.sample(x_init=x0, step_size=1.0 / steps, method="midpoint",
                             time_grid=torch.tensor([0.0, 1.0]))

    return _TorchRun("flow_matching (Meta)", pair, sampler)


def _torchcfm():
    import torch
    import torchdiffeq
    from torchcfm.conditional_flow_matching import ConditionalFlowMatcher

    fm = ConditionalFlowMatcher(sigma=0.0)

    def pair(x0, x1, gen):  # torchcfm draws t with the global generator
        return fm.sample_location_and_conditional_flow(x0, x1)

    def sampler(model, x0, steps):
        grid = torch.linspace(0, 1, steps + 1)
        return torchdiffeq.odeint(lambda t, x: model(x, t), x0, grid, method="midpoint")[-1]

    return _TorchRun("torchcfm", pair, sampler)


class _NumpyRun:
    name = "fm_numpy (ours)"

    def __init__(self):
        from fm_numpy.models.mlp import MLP
        from fm_numpy.optim import Adam
        from fm_numpy.paths import AffinePath, CondOT

        self.model = MLP(2, HIDDEN, DEPTH, seed=0, dtype=np.float32)
        self.opt = Adam(self.model.params, lr=LR)
        self.path = AffinePath(CondOT())
        self.rng = np.random.default_rng(1)

    def step(self, x1):
        x1 = x1.numpy()
        x0 = self.rng.standard_normal(x1.shape).astype(np.float32)  # (B, 2)
        t = self.rng.uniform(0, 1, x1.shape[0]).astype(np.float32)  # (B,)
        xt, ut = self.path.sample(x0, x1, t)
        diff = self.model.forward(xt, t) - ut  # (B, 2)
        loss = float(np.mean(diff * diff))
        self.opt.step(self.model.backward(diff * (2.0 / diff.size)))
        return loss

    def sample(self, x0, steps):
        from fm_numpy.solvers import odeint

        return odeint(lambda x, t: self.model.forward(x, t), x0.numpy(),
                      np.linspace(0, 1, steps + 1), "midpoint")[-1]


# ------------------------------------------------------------------------ benchmark
def compare_2d(quick, notes):
    import torch

    from fm_numpy.data import sample_toy
    from fm_numpy.metrics import energy_distance, noise_floor

    steps, block = (100, 50) if quick else (1000, 100)
    n_eval, reps = (500, 2) if quick else (2000, 5)
    runs = []
    for make in (_ours, _NumpyRun, _meta, _torchcfm):
        try:
            runs.append(make())
        except Exception as e:  # ImportError, or a changed API
            notes.append(f"{make.__name__.strip('_')}: could not be set up "
                         f"({type(e).__name__}: {e})")
    pool = torch.from_numpy(sample_toy(DATA, steps * BATCH, rng=0).astype(np.float32))
    times = {r.name: [] for r in runs}
    losses = {r.name: [] for r in runs}
    for b0 in range(0, steps, block):
        order = runs if (b0 // block) % 2 == 0 else runs[::-1]
        for r in order:
            start = time.perf_counter()
            for k in range(b0, min(b0 + block, steps)):
                losses[r.name].append(r.step(pool[k * BATCH:(k + 1) * BATCH]))
            times[r.name].append((time.perf_counter() - start) / block)
    x0 = torch.randn((n_eval, 2), generator=torch.Generator().manual_seed(7))
    data = sample_toy(DATA, n_eval, rng=123)
    floor = noise_floor(energy_distance, lambda n, g: sample_toy(DATA, n, g), n_eval, 5, rng=9)
    sample_t, x1 = {r.name: [] for r in runs}, {}
    for rep in range(reps):  # interleaved like the training blocks
        for r in (runs if rep % 2 == 0 else runs[::-1]):
            start = time.perf_counter()
            x1[r.name] = r.sample(x0, 10)  # midpoint, 10 steps, 20 NFE
            sample_t[r.name].append(time.perf_counter() - start)
    rows = [(r.name, np.array(times[r.name]), np.array(sample_t[r.name]),
             energy_distance(x1[r.name], data), float(np.mean(losses[r.name][-block:])))
            for r in runs]
    return rows, floor, steps, n_eval


def compare_unet(quick, notes):
    import torch

    from fm_torch.models.unet import UNet

    B, reps = (8, 2) if quick else (32, 3)
    models = {"fm_torch UNet (ours)": (UNet(1, 32, (1, 2, 2), 1, 32, num_classes=10), False)}
    try:
        from torchcfm.models.unet import UNetModel

        common = dict(dim=(1, 28, 28), num_channels=32, num_res_blocks=1, num_classes=10,
                      class_cond=True)
        # as in torchcfm's MNIST example: attention_resolutions "16" -> 28 // 16 = 1, i.e.
        # self-attention at full 28x28 resolution
        models["torchcfm UNetModel (MNIST example)"] = (UNetModel(**common), True)
        # attention only at 7x7 (28 // 7 = 4), like ours
        models["torchcfm UNetModel, attention at 7x7"] = (
            UNetModel(**common, attention_resolutions="7"), True)
    except Exception as e:
        notes.append(f"torchcfm UNetModel: not available ({type(e).__name__}: {e})")
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn((B, 1, 28, 28), generator=g)
    x0 = torch.randn((B, 1, 28, 28), generator=g)
    y = torch.randint(0, 10, (B,), generator=g)
    t = torch.rand(B, generator=g)
    xt = t[:, None, None, None] * x1 + (1 - t[:, None, None, None]) * x0
    ut = x1 - x0
    opts = {k: torch.optim.Adam(m.parameters(), lr=1e-3) for k, (m, _) in models.items()}

    def step(name):
        model, t_first = models[name]
        v = model(t, xt, y) if t_first else model(xt, t, y)
        loss = torch.mean((v - ut) ** 2)
        opts[name].zero_grad(set_to_none=True)
        loss.backward()
        opts[name].step()

    for name in models:
        step(name)  # warm-up
    times = {name: [] for name in models}
    for r in range(reps):
        for name in (list(models) if r % 2 == 0 else list(models)[::-1]):
            start = time.perf_counter()
            step(name)
            times[name].append(time.perf_counter() - start)
    return [(name, sum(p.numel() for p in models[name][0].parameters()),
             B / np.array(times[name])) for name in models], B


def table(rows, floor, steps, n_eval, unet_rows, batch, notes):
    ours = next((r for r in rows if r[0] == "fm_torch (ours)"), None)
    lines = [
        f"Same 2-D task ({DATA}, CondOT, MLP {HIDDEN}x{DEPTH}, batch {BATCH}, Adam {LR:g}, "
        f"{steps} steps) trained through each library's path and sampled with its ODE "
        f"solver (midpoint, 20 NFE, {n_eval} samples). Step times from interleaved blocks.",
        "",
        "| library | ms / training step, median [q25, q75] | step time vs fm_torch "
        "| sampling ms (20 NFE) | energy distance | final loss |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, step_t, sample_t, ed, loss in rows:
        ratio = np.median(step_t) / np.median(ours[1]) if ours else float("nan")
        q25, q75 = np.percentile(step_t, [25, 75]) * 1e3
        lines.append(f"| {name} | {1e3 * np.median(step_t):.2f} [{q25:.2f}, {q75:.2f}] | "
                     f"{ratio:.2f} | {1e3 * np.median(sample_t):.1f} | {ed:.4f} | {loss:.3f} |")
    lines += ["", f"Energy-distance noise floor (two fresh data sets of {n_eval}): "
              f"{floor[0]:.4f} +- {floor[1]:.4f}.", "",
              f"U-Net training step (forward, backward, Adam), batch {batch}, 28x28, CPU:", "",
              "| model | parameters | images / s, median [min, max] |", "|---|---:|---:|"]
    for name, params, ips in unet_rows:
        lines.append(f"| {name} | {params / 1e6:.2f} M | {np.median(ips):.1f} "
                     f"[{ips.min():.1f}, {ips.max():.1f}] |")
    if notes:
        lines += [""] + [f"- note: {n}" for n in notes]
    return "\n".join(lines)


def plot(rows, floor, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    fig, axes = plt.subplots(1, 3, figsize=(10, 3), dpi=80)
    names = [r[0] for r in rows]
    axes[0].boxplot([1e3 * r[1] for r in rows], tick_labels=names)
    axes[0].set_ylabel("ms / training step")
    axes[1].bar(names, [1e3 * np.median(r[2]) for r in rows])
    axes[1].set_ylabel("sampling ms (20 NFE)")
    axes[2].bar(names, [r[3] for r in rows])
    axes[2].axhline(floor[0], color="gray", ls="--", label="noise floor")
    axes[2].legend(fontsize=7)
    axes[2].set_ylabel("energy distance")
    for ax in axes:
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def notebook_2d(quick, notes):
    """Meta's notebook recipe against ours (benchmarks/notebook2d.py); markdown or a note."""
    from benchmarks import notebook2d

    seeds, settings = ((0,), dict(iterations=30, batch=512, n_samples=5000, n_lik=200)) if (
        quick) else ((0, 1, 2), {})
    try:
        per_seed = notebook2d.compare(seeds, log=lambda s: None, **settings)
    except Exception as e:  # ImportError, or a changed API
        notes.append(f"notebook comparison failed ({type(e).__name__}: {e})")
        return ""
    return notebook2d.table(per_seed, seeds, settings.get("iterations", notebook2d.ITERATIONS),
                            settings.get("batch", notebook2d.BATCH))


def main(quick=False, out_dir=None):
    notes = ensure_packages()
    rows, floor, steps, n_eval = compare_2d(quick, notes)
    notebook = notebook_2d(quick, notes)
    unet_rows, batch = compare_unet(quick, notes)
    print(table(rows, floor, steps, n_eval, unet_rows, batch, notes))
    if notebook:
        print("\n" + notebook)
    path = plot_path("bench_libraries", quick, out_dir)
    plot(rows, floor, path)
    announce_plot(path, quick, "library comparison")
    return rows


if __name__ == "__main__":
    run_from_command_line(main, __doc__, "fewer steps and repetitions")
