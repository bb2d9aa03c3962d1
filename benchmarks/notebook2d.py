"""Meta's 2-D notebook recipe (facebookresearch/flow_matching, examples/2d_flow_matching.ipynb),
ours against theirs at equal steps, for bench_libraries.

Task: checkerboard / 0.45 (8 unit squares of a 4x4 board, scaled by 1/0.45, so the true
density is 0.45^2 / 8 on its support: log p = log(0.2025 / 8) = -3.6763), an MLP of 4
hidden layers of 512, batch 4096, Adam 1e-3, CondOT path, `ITERATIONS` steps. Both
trainers read the same data stream (one NumPy generator per seed) and draw their own
(x0, t). Measured on 50k samples (midpoint, 20 steps = 40 NFE, each library's own
solver): sliced W1 (256 random directions) against 50k fresh reference points, the
fraction of samples inside the 8 squares, and the exact log-likelihood (exact
divergence, midpoint 20 steps) of 2000 fresh data points.

Meta's network is the notebook's: Linear(2 + 1 -> 512), Swish, 3 x (Linear 512 -> 512,
Swish), Linear(512 -> 2), fed [x, t]. Ours is fm_torch.models.mlp.MLP(2, 512, 4) with a
recipe (`RECIPES`); "plain" is the recipe the issue measured (uniform t, constant lr,
no EMA, sinusoidal time features of 1000 t).
"""

import math
import time

import numpy as np

SCALE, TRUE_LOG_P = 0.45, math.log(0.45 ** 2 / 8)
BATCH, HIDDEN, DEPTH, LR, ITERATIONS = 4096, 512, 4, 1e-3, 2000
N_SAMPLES, N_PROJ, N_LIK, STEPS = 50_000, 256, 2000, 20

# Our recipes: MLP time input and training options (fm_torch.schedules / fm_torch.ema).
RECIPES = {
    "plain": dict(time_scale=1000.0),
    "t-scale 1": dict(time_scale=1.0),
    "t-features 2": dict(time_scale=1.0, time_features=2),
    "t2 cosine": dict(time_scale=1.0, time_features=2, lr_schedule="cosine"),
    "t2 cosine ema": dict(time_scale=1.0, time_features=2, lr_schedule="cosine",
                          ema_decay=0.99),
    "t2 linear": dict(time_scale=1.0, time_features=2, lr_schedule="linear"),
    "t2 logit-normal": dict(time_scale=1.0, time_features=2, time_sampling="logit-normal"),
    "t2 ema": dict(time_scale=1.0, time_features=2, ema_decay=0.99),
    "t2 logit-normal ema": dict(time_scale=1.0, time_features=2, time_sampling="logit-normal",
                                ema_decay=0.99),
}
# the project's recipe (docs/benchmarks.md, issue 13): 2 time features of raw t, the EMA
# 0.99 of fm-numpy train's 2-D default; it beat Meta's notebook on all three measures on
# every seed measured
RECIPES["default"] = RECIPES["t2 ema"]


def checkerboard(n, rng):
    """n points of checkerboard / 0.45, float32 (n, 2)."""
    from fm_numpy.data import sample_toy

    return (sample_toy("checkerboard", n, rng) / SCALE).astype(np.float32)


def inside_squares(x):
    """Fraction of points (N, 2) inside the 8 filled squares of the scaled board."""
    p = np.asarray(x, dtype=np.float64) * SCALE
    on_board = np.all((p >= -2) & (p < 2), axis=1)
    filled = (np.floor(p[:, 0]) + np.floor(p[:, 1])) % 2 == 0
    return float(np.mean(on_board & filled))


def sliced_w1(x, ref, n_proj=N_PROJ, seed=0):
    """Sliced Wasserstein-1: mean over random unit directions of W1 of the projections."""
    rng = np.random.default_rng(seed)
    theta = rng.standard_normal((2, n_proj))
    theta /= np.linalg.norm(theta, axis=0)  # (2, P) unit directions
    px = np.sort(np.asarray(x, np.float64) @ theta, axis=0)  # (N, P)
    pr = np.sort(np.asarray(ref, np.float64) @ theta, axis=0)  # (N, P)
    return float(np.mean(np.abs(px - pr)))


def meta_mlp(seed):
    """The notebook's network: [x, t] -> 4 x (Linear, Swish) -> Linear."""
    import torch
    from torch import nn

    class Swish(nn.Module):
        def forward(self, x):
            return x * torch.sigmoid(x)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            widths = [3] + [HIDDEN] * DEPTH
            layers = []
            for a, b in zip(widths[:-1], widths[1:], strict=True):
                layers += [nn.Linear(a, b), Swish()]
            self.main = nn.Sequential(*layers, nn.Linear(HIDDEN, 2))

        def forward(self, x, t):
            t = t.reshape(-1, 1).expand(x.shape[0], 1).to(x.dtype)
            return self.main(torch.cat([x, t], dim=1))

    torch.manual_seed(seed)
    return Net()


class MetaTrainer:
    """Meta's path, network and ODESolver, Adam at constant lr (the notebook)."""

    name = "flow_matching (Meta)"

    def __init__(self, seed):
        import torch
        from flow_matching.path import AffineProbPath
        from flow_matching.path.scheduler import CondOTScheduler

        self.model = meta_mlp(seed)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=LR)
        self.path = AffineProbPath(scheduler=CondOTScheduler())
        self.gen = torch.Generator().manual_seed(seed + 1)

    def step(self, x1):
        import torch

        x0 = torch.randn(x1.shape, generator=self.gen)  # (B, 2)
        t = torch.rand(x1.shape[0], generator=self.gen)  # (B,)
        s = self.path.sample(x_0=x0, x_1=x1, t=t)
        loss = torch.mean((self.model(s.x_t, s.t) - s.dx_t) ** 2)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.item()

    def _wrapped(self):
        from flow_matching.utils import ModelWrapper

        class Wrapped(ModelWrapper):
            def forward(self, x, t, **extras):
                return self.model(x, t)

        return Wrapped(self.model)

    def sample(self, x0):
        import torch
        from flow_matching.solver import ODESolver

        with torch.no_grad():
            return ODESolver(velocity_model=self._wrapped()).sample(
                x_init=x0, step_size=1.0 / STEPS, method="midpoint",
                time_grid=torch.tensor([0.0, 1.0]))

    def log_likelihood(self, x1):
        import torch
        from flow_matching.solver import ODESolver

        def log_p0(x):
            return -0.5 * (x ** 2).sum(dim=1) - math.log(2 * math.pi)

        solver = ODESolver(velocity_model=self._wrapped())
        _, log_p = solver.compute_likelihood(
            x_1=x1, method="midpoint", step_size=1.0 / STEPS, exact_divergence=True,
            log_p0=log_p0, time_grid=torch.tensor([1.0, 0.0]))
        return log_p.detach()


class OurTrainer:
    """fm_torch's MLP, path, solver and likelihood with a recipe from RECIPES."""

    def __init__(self, seed, recipe="default", **overrides):
        import torch

        from fm_torch.ema import EMA
        from fm_torch.models.mlp import MLP
        from fm_torch.paths import AffinePath, CondOT
        from fm_torch.schedules import LRSchedule, TimeSampler

        options = dict(RECIPES[recipe], **overrides)
        self.name = f"fm_torch (ours, {recipe})"
        self.model = MLP(2, HIDDEN, DEPTH, options.get("time_features", 32), seed=seed,
                         time_scale=options["time_scale"])
        self.opt = torch.optim.Adam(self.model.parameters(), lr=LR)
        self.lr = LRSchedule(options.get("lr_schedule", "constant"), LR,
                             options.get("iterations", ITERATIONS), options.get("warmup", 0))
        self.time = TimeSampler(options.get("time_sampling", "uniform"))
        decay = options.get("ema_decay")
        self.ema = EMA(self.model, decay) if decay else None
        self.path = AffinePath(CondOT())
        self.gen = torch.Generator().manual_seed(seed + 1)
        self.n = 0

    def step(self, x1):
        import torch

        from fm_torch.schedules import set_lr

        x0 = torch.randn(x1.shape, generator=self.gen)  # (B, 2)
        t = self.time.sample(x1.shape[0], self.gen)  # (B,)
        xt, ut = self.path.sample(x0, x1, t)
        loss = torch.mean((self.model(xt, t) - ut) ** 2)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        set_lr(self.opt, self.lr(self.n))
        self.opt.step()
        self.n += 1
        if self.ema is not None:
            self.ema.update(self.model)
        return loss.item()

    @property
    def net(self):
        return self.ema.model if self.ema is not None else self.model

    def sample(self, x0):
        import torch

        from fm_torch.solvers import odeint

        with torch.no_grad():
            grid = torch.linspace(0, 1, STEPS + 1)
            return odeint(lambda x, t: self.net(x, t), x0, grid, "midpoint")[-1]

    def log_likelihood(self, x1):
        from fm_torch.likelihood import log_likelihood

        return log_likelihood(lambda x, t: self.net(x, t), x1, method="midpoint", steps=STEPS)


def run(trainers, seed, iterations=ITERATIONS, n_samples=N_SAMPLES, n_lik=N_LIK, log=print,
        batch=BATCH):
    """Train every trainer on one data stream (interleaved in blocks) and measure each.

    Returns {name: {"sw1", "inside", "log_lik", "s_per_step"}}."""
    import torch

    rng = np.random.default_rng(10_000 + seed)
    seconds = {tr.name: 0.0 for tr in trainers}
    block = 100
    for b0 in range(0, iterations, block):
        batches = [torch.from_numpy(checkerboard(batch, rng))
                   for _ in range(min(block, iterations - b0))]
        for tr in trainers:
            start = time.perf_counter()
            for x1 in batches:
                loss = tr.step(x1)
            seconds[tr.name] += time.perf_counter() - start
        log(f"seed {seed} step {b0 + len(batches)}: " + ", ".join(
            f"{tr.name} {seconds[tr.name]:.0f} s" for tr in trainers) + f" (last loss {loss:.3f})")
    eval_rng = np.random.default_rng(20_000 + seed)
    ref = checkerboard(n_samples, eval_rng)
    x_lik = torch.from_numpy(checkerboard(n_lik, eval_rng).astype(np.float64))
    x0 = torch.randn((n_samples, 2), generator=torch.Generator().manual_seed(30_000 + seed))
    results = {}
    for tr in trainers:
        x1 = tr.sample(x0).numpy()
        net = getattr(tr, "net", tr.model)
        net.double()
        log_p = tr.log_likelihood(x_lik)
        net.float()
        results[tr.name] = {"sw1": sliced_w1(x1, ref), "inside": inside_squares(x1),
                            "log_lik": float(log_p.mean()),
                            "s_per_step": seconds[tr.name] / iterations}
    return results


def medians(per_seed):
    """{name: {metric: median over seeds}} of a list of run() results."""
    names = per_seed[0].keys()
    return {n: {k: float(np.median([r[n][k] for r in per_seed])) for k in per_seed[0][n]}
            for n in names}


def table(per_seed, seeds, iterations, batch):
    """Markdown: one row per seed and library, then the medians, beside the truth."""
    lines = [f"Meta's 2-D notebook recipe: checkerboard / 0.45, MLP {DEPTH} x {HIDDEN}, batch "
             f"{batch}, Adam {LR:g}, {iterations} iterations, the same data stream for both; "
             f"midpoint {STEPS} steps ({2 * STEPS} NFE), each library's solver. Sliced W1 "
             f"({N_PROJ} directions) of the samples against fresh reference points, fraction "
             f"inside the 8 squares, mean exact log-likelihood of fresh data points "
             f"(truth {TRUE_LOG_P:.3f}).", "",
             "| seed | library | sliced W1 | inside squares | log-likelihood | s / step |",
             "|---|---|---:|---:|---:|---:|"]
    for seed, res in zip(seeds, per_seed, strict=False):
        for name, m in res.items():
            lines.append(f"| {seed} | {name} | {m['sw1']:.4f} | {m['inside']:.4f} | "
                         f"{m['log_lik']:.4f} | {m['s_per_step']:.3f} |")
    for name, m in medians(per_seed).items():
        lines.append(f"| median | {name} | **{m['sw1']:.4f}** | **{m['inside']:.4f}** | "
                     f"**{m['log_lik']:.4f}** | {m['s_per_step']:.3f} |")
    return "\n".join(lines)


def earlier_meta(path, seeds, iterations, batch):
    """{seed: Meta's results} from an earlier compare() json with the same settings.

    Meta's run is deterministic (seeded torch generator and initialisation, one thread, the
    seed's data stream), so its numbers for a seed can be reused while recipes are tried."""
    import json

    with open(path) as f:
        old = json.load(f)
    if (old["iterations"], old["batch"]) != (iterations, batch):
        raise SystemExit(f"{path}: ran {old['iterations']} iterations of {old['batch']}, "
                         f"not {iterations} of {batch}")
    found = {s: r[MetaTrainer.name] for s, r in zip(old["seeds"], old["results"], strict=True)}
    missing = [s for s in seeds if s not in found]
    if missing:
        raise SystemExit(f"{path}: no Meta results for seeds {missing}")
    return found


def compare(seeds=(0, 1, 2), iterations=ITERATIONS, batch=BATCH, recipes=("default",),
            n_samples=N_SAMPLES, n_lik=N_LIK, log=print, json_path=None, meta_from=None):
    """Meta's notebook against our recipes, seed by seed; results so far go to json_path.

    meta_from: an earlier json whose Meta results are reused instead of training Meta."""
    import json

    reused = earlier_meta(meta_from, seeds, iterations, batch) if meta_from else {}
    per_seed = []
    for seed in seeds:
        trainers = ([] if reused else [MetaTrainer(seed)]) + [
            OurTrainer(seed, r, iterations=iterations) for r in recipes]
        res = run(trainers, seed, iterations, n_samples, n_lik, log, batch)
        per_seed.append({MetaTrainer.name: reused[seed], **res} if reused else res)
        if json_path:
            from fm_numpy.io import atomic_path

            with atomic_path(json_path) as tmp, open(tmp, "w") as f:
                json.dump({"seeds": list(seeds[:len(per_seed)]), "iterations": iterations,
                           "batch": batch, "results": per_seed}, f, indent=1)
    return per_seed


def main(argv=None):
    import argparse

    import torch

    parser = argparse.ArgumentParser(prog="python -m benchmarks.notebook2d",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--iterations", type=int, default=ITERATIONS)
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--recipes", default="default", help=f"of {', '.join(RECIPES)}")
    parser.add_argument("--n-samples", type=int, default=N_SAMPLES)
    parser.add_argument("--n-lik", type=int, default=N_LIK)
    parser.add_argument("--json", help="write the results (after every seed) to this file")
    parser.add_argument("--meta-from", help="reuse Meta's results from an earlier --json file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from benchmarks.peers import ensure_packages

    notes = ensure_packages()
    if notes:
        raise SystemExit("; ".join(notes))
    seeds = tuple(int(s) for s in args.seeds.split(","))
    per_seed = compare(seeds, args.iterations, args.batch, tuple(args.recipes.split(",")),
                       args.n_samples, args.n_lik, json_path=args.json, meta_from=args.meta_from,
                       log=lambda s: print(s, flush=True))
    print(table(per_seed, seeds, args.iterations, args.batch))


if __name__ == "__main__":
    main()
