"""`fm-numpy`: train a flow-matching MLP and sample from it, NumPy only (plots need matplotlib).

    fm-numpy train --data 8gaussians --out runs/8g
    fm-numpy sample --model runs/8g/model.npz --method rk4 --steps 20 -n 10000 --out s.npz

Each subcommand is one `add_<name>_parser(subparsers)` function that registers its
arguments and sets `func`; add a new one to SUBCOMMANDS. Every ValueError, and an
OSError about a path given (missing, not allowed), becomes one line `fm-numpy: error: ...`
and exit status 2 (bad input); an I/O fault (a full disk, a quota) one line and exit 1.
"""

import argparse
import errno
import json
import os
import sys

import numpy as np

from fm_numpy.schedules import add_recipe_arguments, recipe_settings

PROG = "fm-numpy"


# ---------------------------------------------------------------------- plots
# matplotlib's object API (a Figure with no pyplot): the global backend a notebook or
# script chose is left alone, and nothing is kept in pyplot's figure registry.
# matplotlib is optional: without it the commands skip their plots with one line.
def plots_available(prog=PROG):
    """True when matplotlib imports; else one line on stderr and False."""
    try:
        import matplotlib.figure  # noqa: F401
    except ImportError:
        sys.stderr.write(f"{prog}: matplotlib is not installed; plots skipped "
                         "(pip install 'fm-dual[plot]')\n")
        return False
    return True


def _figure(**kwargs):
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def save_png(fig, path, **kwargs):
    """fig as a PNG at path, written atomically (a temporary file renamed over path)."""
    from fm_numpy.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", **kwargs)


def plot_loss(losses, path):
    """loss.csv as a curve (raw and a 100-step running mean), log scale."""
    steps = np.array([s for s, _ in losses])
    values = np.array([v for _, v in losses])
    fig = _figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.plot(steps, values, lw=0.5, alpha=0.4, label="loss")
    if len(values) >= 100:
        smooth = np.convolve(values, np.ones(100) / 100, mode="valid")
        ax.plot(steps[99:], smooth, lw=1.5, label="running mean (100)")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("mean (v - ut)^2")
    ax.legend()
    fig.tight_layout()
    save_png(fig, path, dpi=100)


def plot_samples_2d(samples, data, path):
    fig = _figure(figsize=(8, 4))
    axes = fig.subplots(1, 2, sharex=True, sharey=True)
    for ax, pts, title in ((axes[0], data, "data"), (axes[1], samples, "samples")):
        ax.scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.3)
        ax.set_title(f"{title} ({len(pts)})")
        ax.set_aspect("equal")
    fig.tight_layout()
    save_png(fig, path, dpi=100)


def plot_trajectories_2d(xs, path, n_paths=300):
    """xs (steps+1, N, 2): a few paths from noise (t=0) to data (t=1)."""
    fig = _figure(figsize=(5, 5))
    ax = fig.subplots()
    k = min(n_paths, xs.shape[1])
    ax.plot(xs[:, :k, 0], xs[:, :k, 1], lw=0.4, alpha=0.5, color="gray")
    ax.scatter(xs[0, :k, 0], xs[0, :k, 1], s=3, color="tab:blue", label="x0 (t=0)")
    ax.scatter(xs[-1, :k, 0], xs[-1, :k, 1], s=3, color="tab:red", label="x1 (t=1)")
    ax.set_aspect("equal")
    ax.legend(loc="upper right")
    fig.tight_layout()
    save_png(fig, path, dpi=100)


def plot_field_2d(model, path, times=(0.0, 0.25, 0.5, 0.75, 1.0), lim=3.0, n=21):
    """The learned v(x, t) on a grid at a few times (unconditional)."""
    g = np.linspace(-lim, lim, n)
    gx, gy = np.meshgrid(g, g)
    grid = np.stack([gx.ravel(), gy.ravel()], axis=1)  # (n^2, 2)
    fig = _figure(figsize=(3 * len(times), 3))
    axes = np.atleast_1d(fig.subplots(1, len(times)))
    for ax, t in zip(axes, times, strict=True):
        v = model(grid, t)  # (n^2, 2)
        ax.quiver(grid[:, 0], grid[:, 1], v[:, 0], v[:, 1], np.hypot(v[:, 0], v[:, 1]))
        ax.set_title(f"v(x, t={t:g})")
        ax.set_aspect("equal")
    fig.tight_layout()
    save_png(fig, path, dpi=100)


def plot_digit_grid(images, labels, path):
    """A 10 x 10 grid: row c holds the first ten samples of class c."""
    canvas = np.ones((10 * 28, 10 * 28))
    for c in range(10):
        idx = np.flatnonzero(labels == c)[:10]
        for j, i in enumerate(idx):
            canvas[28 * c:28 * (c + 1), 28 * j:28 * (j + 1)] = images[i]
    fig = _figure(figsize=(5, 5))
    ax = fig.subplots()
    ax.imshow(canvas, cmap="gray", vmin=0, vmax=1)
    ax.set_yticks(14 + 28 * np.arange(10), [str(c) for c in range(10)])
    ax.set_xticks([])
    fig.tight_layout()
    save_png(fig, path, dpi=100)


# ---------------------------------------------------------------------- train
def add_train_parser(subparsers):
    p = subparsers.add_parser("train", help="train an MLP velocity field by flow matching")
    p.add_argument("--data", default="8gaussians",
                   help="mnist, a 2-D toy set (moons, 8gaussians, checkerboard, spirals, "
                        "circles), or your own data: a .npy, .npz or .csv file or a folder "
                        "of PNG/JPEG images (docs/own_data.md)")
    p.add_argument("--steps", type=int, help="optimizer steps (default 6000; mnist 2800)")
    p.add_argument("--batch", type=int, help="batch size (default 512; mnist 32)")
    p.add_argument("--lr", type=float, help="Adam learning rate (default 2e-3; mnist 2e-3)")
    p.add_argument("--arch", choices=("mlp", "resmlp", "convnet"),
                   help="network: mlp (fm_numpy/models/mlp.py), resmlp (residual LayerNorm MLP, "
                        "fm_numpy/models/resmlp.py) or convnet (U-Net, images only, "
                        "fm_numpy/models/convnet.py); default mlp, mnist convnet")
    p.add_argument("--hidden", type=int, help="hidden width; convnet: base channels "
                                                 "(default 256; mnist 16, resmlp 768)")
    p.add_argument("--depth", type=int, help="hidden layers / residual blocks; convnet: "
                                                "resolution levels (default 3; mnist 3, "
                                                "resmlp 4)")
    p.add_argument("--time-features", type=int, help="time embedding size (default 32)")
    p.add_argument("--scheduler", help="path scheduler (default condot)")
    p.add_argument("--seed", type=int, help="seed of weights and data stream (default 0)")
    p.add_argument("--ckpt-every", type=int, help="checkpoint every N steps (default 1000)")
    p.add_argument("--label-dropout", type=float,
                   help="probability of the null class for guidance (mnist; default 0.1)")
    p.add_argument("--weight-decay", type=float, help="AdamW decoupled weight decay (default 0)")
    p.add_argument("--max-grad-norm", type=float, help="clip the global gradient norm")
    p.add_argument("--dtype", choices=("float32", "float64"), help="default float32")
    p.add_argument("--n-train", type=int, help="use only the first N MNIST training images")
    from fm_numpy.cli_userdata import add_data_arguments

    add_data_arguments(p)  # --label-column, --val-fraction
    p.add_argument("--ema-decay", type=float,
                   help="EMA decay of the weights saved in model.npz (default 0.99; mnist 0: "
                        "none)")
    add_recipe_arguments(p)
    p.add_argument("--threads", type=int,
                   help="batch slices computed at once, one thread each (default 1 for the "
                        "mlp, else the usable cores up to 4)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--out", default=None, help="run folder (default runs/<data>)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    from fm_numpy.cli_fewstep import add_fewstep_train_arguments

    add_fewstep_train_arguments(p)
    p.set_defaults(func=cmd_train)


def cmd_train(args):
    from fm_numpy.cli_userdata import data_settings, default_out
    from fm_numpy.train import train

    out = args.out or default_out(args.data)
    settings = dict(data=args.data, steps=args.steps, batch=args.batch, lr=args.lr,
                    hidden=args.hidden, depth=args.depth, time_features=args.time_features,
                    scheduler=args.scheduler, seed=args.seed, ckpt_every=args.ckpt_every,
                    label_dropout=args.label_dropout, weight_decay=args.weight_decay,
                    max_grad_norm=args.max_grad_norm, dtype=args.dtype, n_train=args.n_train,
                    arch=args.arch, ema_decay=args.ema_decay, **recipe_settings(args))
    from fm_numpy.cli_fewstep import fewstep_settings

    settings.update(fewstep_settings(args))
    settings.update(data_settings(args))
    _, losses = train(out, resume=args.resume, progress=not args.no_progress,
                      threads=args.threads, **settings)
    if losses:
        plotted = plots_available()
        if plotted:
            plot_loss(losses, os.path.join(out, "loss.png"))
        print(f"trained to step {losses[-1][0]}, last loss {losses[-1][1]:.4f}; wrote "
              f"{os.path.join(out, 'model.npz')}" + (" and loss.png" if plotted else ""))
    return 0


# ---------------------------------------------------------------------- sample
def add_sample_parser(subparsers):
    p = subparsers.add_parser("sample", help="integrate the learned field from noise to data")
    p.add_argument("--model", required=True, help="model.npz written by train")
    p.add_argument("--method", default="rk4", help="euler, midpoint, heun, rk4, RK45, DOP853")
    p.add_argument("--steps", type=int, default=20, help="fixed-grid steps (default 20)")
    p.add_argument("-n", type=int, default=10000, help="number of samples (default 10000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", type=float, default=1.0,
                   help="classifier-free guidance w (1 = conditional; class models only)")
    p.add_argument("--guidance-interval", metavar="LO,HI",
                   help="guide only for LO <= t <= HI (t = 0 noise, 1 data), conditional "
                        "elsewhere (default: guide everywhere)")
    p.add_argument("--chunk", type=int,
                   help="samples integrated at a time (memory and speed; default 1024, and 100 "
                        "for a convnet, whose forward pass caches its im2col patches)")
    p.add_argument("--threads", type=int,
                   help="slices of each chunk computed at once, one thread each (default 1 "
                        "for an mlp, else the usable cores up to 4)")
    p.add_argument("--per-class", type=int,
                   help="class models: this many samples of each class, in class order "
                        "(instead of -n, classes in turn)")
    p.add_argument("--out", required=True, help="samples .npz (PNGs are written beside it)")
    from fm_numpy.cli_animate import add_animate_argument

    add_animate_argument(p)  # --animate FILE.gif
    p.set_defaults(func=cmd_sample_and_animate)


def cmd_sample_and_animate(args):
    """sample, then (with --animate, checked first) the GIF of the samples forming."""
    from fm_numpy.cli_animate import check_animate, cmd_animate

    check_animate(args.animate)
    rc = cmd_sample(args)
    return cmd_animate(args) if rc == 0 and args.animate else rc


def sample_memory(n, sample_bytes, chunk, num_classes, steps, whole=False):
    """Bytes `sample` holds at once for n samples of sample_bytes each: the labels (int64,
    one per sample, class models), a chunk's solver states (a handful of copies; rk4 keeps
    5) and, for MeanFlow's unchunked steps (whole=True), every state of the whole batch.
    The samples themselves stream to the .npz (disk, check_output_fits)."""
    labels = 8 * n if num_classes else 0
    states = (steps + 2) * n if whole else 8 * min(n, chunk)
    return labels + states * sample_bytes


def _run_config(model_path):
    path = os.path.join(os.path.dirname(os.path.abspath(model_path)), "config.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {}


def cmd_sample(args):
    from fm_numpy.io import check_memory
    from fm_numpy.models import load_model
    from fm_numpy.models.threads import threaded
    from fm_numpy.sampling import NpzStreamWriter, check_output_fits, sample_in_chunks
    from fm_numpy.solvers import ClassifierFreeGuidance, check_guidance_interval, odeint

    if args.n < 1 or args.steps < 1 or (args.chunk is not None and args.chunk < 1):
        raise ValueError(f"-n, --steps and --chunk must be positive, got {args.n}, "
                         f"{args.steps} and {args.chunk}")
    args.guidance_interval = check_guidance_interval(args.guidance_interval)
    model = load_model(args.model)  # MLP, ResMLP or ConvUNet, from the file's config
    if args.guidance_interval and getattr(model, "mean_flow", False) and args.method == "euler":
        raise ValueError("--guidance-interval is for the flow ODE; MeanFlow's euler steps "
                         "take their guidance whole")
    if args.chunk is None:  # a guided ConvUNet chunk of 1024 cached about 10 GB of patches
        args.chunk = 100 if model.config.get("arch") == "convnet" else 1024
    from fm_numpy.cli_userdata import class_labels, sample_user_run
    from fm_numpy.userdata import run_data_info

    per_class = getattr(args, "per_class", None)
    n = model.num_classes * per_class if per_class and model.num_classes else args.n
    count = f"--per-class {per_class}" if n != args.n else f"-n {n}"
    check_memory(sample_memory(n, model.dim * model.dtype.itemsize, args.chunk,
                               model.num_classes, args.steps,
                               getattr(model, "mean_flow", False) and args.method == "euler"),
                 count)  # before any work; the .npz streams to disk, checked below
    info = run_data_info(args.model)
    if info is not None:  # a run on the user's own data: samples in the data's units
        return sample_user_run(args, model, info)
    run = _run_config(args.model)
    image = model.dim == 784
    row_bytes = model.dim * model.dtype.itemsize + (8 if image else 0)  # samples [+ labels]
    check_output_fits(args.out, n * row_bytes, f"-n {n} ({args.out})")
    rng = np.random.default_rng(args.seed)
    labels, args.n = class_labels(model.num_classes, args.n, args.per_class)  # in turn
    net = threaded(model, model.config.get("arch", "mlp"), args.threads)  # batch slices
    field = net
    if model.num_classes:
        field = lambda x, t, y: ClassifierFreeGuidance(  # noqa: E731
            net, y, args.guidance, args.guidance_interval)(x, t)
    t_grid = np.linspace(0.0, 1.0, args.steps + 1)
    mean_flow = getattr(model, "mean_flow", False) and args.method == "euler"
    head = []  # the first rows, for the plots (the rest only streams to the file)
    keep = 100 * (model.num_classes or 1) if image else 5000
    stem = os.path.splitext(args.out)[0]
    with NpzStreamWriter(args.out) as writer:

        def sink(x1):  # (rows, D) end states, in order
            if image:
                x1 = np.clip((x1.reshape(-1, 28, 28) + 1) / 2, 0, 1)  # [-1, 1] -> [0, 1]
            writer.write(x1)
            if sum(map(len, head)) < keep:
                head.append(x1[:keep])

        writer.begin("images" if image else "samples",
                     (args.n, 28, 28) if image else (args.n, model.dim), model.dtype)
        if mean_flow:  # MeanFlow's K u-steps: the whole batch at once (not chunked)
            from fm_numpy.meanflow import sample as meanflow_sample

            x0 = rng.standard_normal((args.n, model.dim)).astype(model.dtype)  # (N, D)
            x1_all = meanflow_sample(model, x0, args.steps, labels, args.guidance)[-1]
            for lo in range(0, args.n, args.chunk):
                sink(x1_all[lo:lo + args.chunk])
        else:
            sample_in_chunks(field, lambda k: rng.standard_normal((k, model.dim)).astype(
                model.dtype), t_grid, args.method, args.chunk, y=labels, n=args.n, sink=sink)
        if image:
            writer.begin("labels", (args.n if labels is not None else 0,), np.int64)
            if labels is not None:
                writer.write(labels)
    x1 = np.concatenate(head)[:keep]  # (<= keep, ...)
    if (image or model.dim == 2) and not plots_available():
        print(f"wrote {args.out} ({args.n} {'images' if image else 'samples'})")
        return 0
    if image:
        if labels is not None:
            plot_digit_grid(x1, labels[:len(x1)], stem + "_grid.png")
        print(f"wrote {args.out} ({args.n} images) and {stem}_grid.png")
        return 0
    if model.dim == 2:
        from fm_numpy.data import TOY_DATASETS, sample_toy

        name = run.get("data")
        if name in TOY_DATASETS:
            data = sample_toy(name, min(args.n, 5000), np.random.default_rng(args.seed + 1))
            plot_samples_2d(x1, data, stem + "_samples.png")
        x0 = np.random.default_rng(args.seed).standard_normal((min(args.n, 300), 2)).astype(
            model.dtype)  # the first rows' x0 again: their whole paths, for the plot
        if mean_flow:
            from fm_numpy.meanflow import sample as meanflow_sample

            xs = meanflow_sample(model, x0, args.steps, None, args.guidance)
        else:
            xs = odeint(model, x0, t_grid, method=args.method)  # (steps+1, <=300, 2)
        plot_trajectories_2d(xs, stem + "_trajectories.png")
        plot_field_2d(model, stem + "_field.png")
        print(f"wrote {args.out} ({args.n} samples) and PNGs {stem}_*.png")
    else:
        print(f"wrote {args.out} ({args.n} samples)")
    return 0


# ---------------------------------------------------------------------- main
from fm_numpy.cli_fewstep import add_reflow_parser  # noqa: E402  (issue 12's subcommand)
from fm_numpy.cli_likelihood import add_likelihood_parser  # noqa: E402  (H3's subcommand)
from fm_numpy.cli_userdata import add_evaluate_parser  # noqa: E402  (the user's data)
from fm_numpy.conformance.cli import add_check_parser  # noqa: E402  (issue 15's subcommand)

SUBCOMMANDS = [add_train_parser, add_sample_parser, add_likelihood_parser, add_check_parser,
               add_reflow_parser, add_evaluate_parser]


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line `<prog>: error: ...` and exit status 2."""

    def error(self, message):
        sys.stderr.write(f"{self.prog.split()[0]}: error: {message}\n")
        sys.exit(2)


def build_parser(prog=PROG, description="Flow matching in NumPy: train and sample.",
                 subcommands=None):
    """The command line: one subparser per function in `subcommands` (default SUBCOMMANDS)."""
    parser = OneLineErrorParser(prog=prog, description=description)
    subparsers = parser.add_subparsers(dest="command", required=True,
                                       parser_class=OneLineErrorParser)
    for add in SUBCOMMANDS if subcommands is None else subcommands:
        add(subparsers)
    return parser


# OSErrors that name a path the user gave that cannot be used: bad input. Every other one
# (a full disk, a quota, an I/O error of the device) is a fault of the run's surroundings.
_INPUT_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.EACCES,
                 errno.EPERM, errno.ENAMETOOLONG, errno.ELOOP, errno.EROFS}


def is_bad_input(e):
    """True when an OSError means "this path cannot be used" (exit 2), False for a fault
    such as ENOSPC or EDQUOT (exit 1). An OSError without errno was raised by our code about
    the input."""
    return e.errno is None or e.errno in _INPUT_ERRNOS


class Terminated(KeyboardInterrupt):
    """SIGTERM outside a training loop (which saves, then stops: fm_numpy/interrupt.py)."""


def _terminate(signum, frame):
    raise Terminated


def run_command(args, prog, diverged_error):
    """Run args.func; bad input -> exit 2, divergence or an I/O fault (full disk, quota,
    device error) -> 1, Ctrl-C -> 130, SIGTERM -> 143, one line each. SIGTERM unwinds like
    Ctrl-C, so a half-written output's temporary file is removed, never left behind."""
    import signal
    import threading

    old = None
    if threading.current_thread() is threading.main_thread():
        old = signal.signal(signal.SIGTERM, _terminate)
    try:
        return _run(args, prog, diverged_error)
    except Terminated:
        sys.stderr.write(f"{prog}: terminated; unfinished outputs removed\n")
        return 143
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)


def _run(args, prog, diverged_error):
    try:
        return args.func(args)
    except OSError as e:
        if is_bad_input(e):
            sys.stderr.write(f"{prog}: error: {e}\n")
            return 2
        sys.stderr.write(f"{prog}: error: I/O failure, not bad input: {e}\n")
        return 1
    except ValueError as e:
        sys.stderr.write(f"{prog}: error: {e}\n")
        return 2
    except diverged_error as e:
        sys.stderr.write(f"{prog}: error: {e}\n")
        return 1
    except Terminated:
        raise
    except KeyboardInterrupt:
        kept = getattr(args, "kept_on_interrupt", None)  # a command's own account, if any
        sys.stderr.write(f"{prog}: interrupted; "
                         f"{kept(args) if kept else 'the last checkpoint is kept'}\n")
        return 130


def main(argv=None):
    args = build_parser().parse_args(argv)
    from fm_numpy.train import TrainingDiverged

    return run_command(args, PROG, TrainingDiverged)


if __name__ == "__main__":
    sys.exit(main())
