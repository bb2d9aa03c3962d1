"""Judging a trained checkpoint or a samples file, and `fm-torch evaluate`.

sample_images draws class-conditional MNIST samples from a model; evaluate_checkpoint and
evaluate_samples score them with the project's judge (FD and class accuracy, defined in
fm_torch/evaluate.py); `fm-torch evaluate` prints the result in one line and optionally
writes it as JSON.
"""

import os
import time

import torch

from fm_torch.evaluate import (
    DEFAULT_CLASSIFIER_STEPS,
    _progress,
    load_or_train_classifier,
    mnist_metrics,
    write_metrics,
)
from fm_torch.sampling import IMAGE_CHUNK_CPU, default_chunk
from fm_torch.solvers import check_guidance_interval

__all__ = ["sample_images", "evaluate_checkpoint", "evaluate_samples", "add_evaluate_parser",
           "cmd_evaluate"]


@torch.no_grad()
def sample_images(model, n, guidance=1.0, method="midpoint", steps=20, seed=0,
                  batch_size=None, device="cpu", progress=False, bf16=False,
                  guidance_interval=None):
    """n class-conditional MNIST samples, classes 0..9 in turn (y_i = i mod 10).

    x0 ~ N(0, I) from torch.Generator(seed), integrated by fm_torch.train.sample with
    guidance w (bf16: the network under bf16 autocast, the ODE state in float32); the
    model's [-1, 1] output is clipped and mapped to [0, 1]. batch_size: images integrated
    at a time (default: default_chunk for images on `device`).
    Returns (images (n, 28, 28) float32 NumPy, labels (n,) int64, NFE per batch).
    """
    from fm_torch.train import sample

    n = int(n)
    batch_size = batch_size or default_chunk(True, device)
    if n < 1:
        raise ValueError(f"the number of samples must be positive, got {n}")
    g = torch.Generator().manual_seed(int(seed))
    y = torch.arange(n) % 10  # (n,)
    x0 = torch.randn((n, 1, 28, 28), generator=g)  # (n, 1, 28, 28)
    images, nfe = [], 0
    bar = _progress(n, "sampling", progress)
    for i in range(0, n, batch_size):
        xs, nfe = sample(model, x0[i:i + batch_size].to(device), y[i:i + batch_size].to(device),
                         guidance, method, steps, return_nfe=True, bf16=bf16,
                         guidance_interval=guidance_interval)  # (steps+1, b, 1, 28, 28)
        images.append(((xs[-1, :, 0].clamp(-1, 1) + 1) / 2).float().cpu())
        bar.update(len(xs[-1]))
    bar.close()
    return torch.cat(images).numpy(), y.numpy(), int(nfe)


def evaluate_checkpoint(path, n=1000, guidance=1.0, method="midpoint", steps=20, seed=0,
                        ema=True, judge_steps=DEFAULT_CLASSIFIER_STEPS, device="cpu",
                        progress=True, classifier=None, info=None, reference=None, memo=None,
                        bf16=False, batch_size=None, guidance_interval=None):
    """Sample n images from an fm-torch MNIST checkpoint and judge them (see mnist_metrics).

    Adds "nfe" (evaluations of the guided velocity field along one trajectory),
    "model_calls" (network evaluations along one trajectory, counted: 2 per NFE where w is
    neither 0 nor 1, since guidance needs v_cond and v_uncond, 1 outside a
    guidance_interval), "sample_seconds", and the sampling settings.
    """
    from fm_torch.train import load_model

    model, checkpoint = load_model(path, ema=ema, map_location=device)
    if checkpoint["config"]["data"] != "mnist":
        raise ValueError(f"{path} is a {checkpoint['config']['data']!r} model; evaluate "
                         "judges MNIST checkpoints")
    if classifier is None:
        classifier, info = load_or_train_classifier(steps=judge_steps, progress=progress)
    model = model.to(device)
    batch_size = batch_size or default_chunk(True, device)
    calls = [0]  # forward passes of the network, all batches
    hook = model.register_forward_pre_hook(lambda module, args: calls.__setitem__(0, calls[0] + 1))
    start = time.perf_counter()
    try:
        images, labels, nfe = sample_images(model, n, guidance, method, steps, seed, batch_size,
                                            device, progress, bf16, guidance_interval)
    finally:
        hook.remove()
    seconds = time.perf_counter() - start
    batches = -(-int(n) // int(batch_size))
    model_calls = calls[0] / batches if calls[0] else nfe * (  # (a sampler of its own: by rule)
        1 if float(guidance) in (0.0, 1.0) else 2)
    metrics = mnist_metrics(images, labels, classifier, info, reference, seed=seed, memo=memo)
    metrics.update({
        "checkpoint": os.fspath(path), "train_step": int(checkpoint["step"]),
        "guidance": float(guidance), "method": method, "steps": int(steps), "nfe": nfe,
        "model_calls": model_calls, "sample_seconds": seconds, "seed": int(seed),
        "ema": bool(ema), "bf16": bool(bf16), "batch": int(batch_size),
        "guidance_interval": None if guidance_interval is None else list(guidance_interval),
    })
    return metrics


def evaluate_samples(path, seed=0, judge_steps=DEFAULT_CLASSIFIER_STEPS, progress=True,
                     classifier=None, info=None, reference=None, memo=None):
    """Judge a samples .npz from either package (`fm-numpy sample` writes one): "images"
    (N, 28, 28) in [0, 1] and "labels" (N,), the classes asked for (empty: unconditional)."""
    from fm_numpy.io import load_npz

    arrays = load_npz(path)
    if "images" not in arrays:
        raise ValueError(f"{path} holds no 'images' array; it is not an MNIST samples file")
    images, labels = arrays["images"], arrays.get("labels")
    if labels is not None and labels.size == 0:
        labels = None
    if labels is not None and labels.shape != (len(images),):
        raise ValueError(f"{path}: labels have shape {labels.shape}, expected ({len(images)},)")
    if classifier is None:
        classifier, info = load_or_train_classifier(steps=judge_steps, progress=progress)
    metrics = mnist_metrics(images, labels, classifier, info, reference, seed=seed, memo=memo)
    metrics["samples"] = os.fspath(path)
    return metrics


def _format(metrics):
    parts = [
        f"FD {metrics['fd']:.3f} (real-train floor {metrics['fd_floor']:.3f}, n={metrics['n']})"
    ]
    if "class_accuracy" in metrics:
        parts.append(
            f"class accuracy {metrics['class_accuracy']:.4f} "
            f"(judge on real test {metrics['class_accuracy_floor']:.4f})"
        )
    return "; ".join(parts)


def add_evaluate_parser(subparsers):
    """`fm-torch evaluate`: FD and class accuracy of an MNIST checkpoint's samples."""
    p = subparsers.add_parser(
        "evaluate", help="judge an MNIST checkpoint: Frechet distance and class accuracy")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="ckpt.pt written by train (data mnist)")
    which.add_argument("--samples", help="judge this samples .npz (images, labels) instead, "
                                         "e.g. from `fm-numpy sample`")
    p.add_argument("--n", type=int, default=1000, help="samples to judge (default 1000)")
    p.add_argument("--guidance", type=float, default=1.0,
                   help="classifier-free guidance w: 1 = conditional (default), 0 = unconditional")
    p.add_argument("--guidance-interval", metavar="LO,HI",
                   help="guide only for LO <= t <= HI (t = 0 noise, 1 data), conditional "
                        "elsewhere (default: guide everywhere)")
    p.add_argument("--method", default="midpoint", help="euler, midpoint, heun, rk4, dopri5")
    p.add_argument("--steps", type=int, default=20, help="fixed-grid steps (default 20)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-ema", action="store_true", help="use the raw weights, not the EMA")
    p.add_argument("--bf16", action="store_true",
                   help="sample with the network under bf16 autocast (the ODE state stays "
                        "float32): faster on a CPU with native bf16, slower without; "
                        "docs/benchmarks.md, 'Sampling on a CPU', measures both")
    p.add_argument("--batch", type=int,
                   help=f"samples integrated at a time (speed and memory; the samples do not "
                        f"depend on it; default {IMAGE_CHUNK_CPU} images on a CPU)")
    p.add_argument("--judge-steps", type=int, default=DEFAULT_CLASSIFIER_STEPS,
                   help=f"training steps of the cached judge (default {DEFAULT_CLASSIFIER_STEPS})")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", help="write the metrics to this .json")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(func=cmd_evaluate)


def _interval_text(interval):
    return "" if interval is None else f" for {interval[0]:g} <= t <= {interval[1]:g}"


def cmd_evaluate(args):
    if args.n < 2 or args.steps < 1 or args.judge_steps < 1 or (args.batch or 1) < 1:
        raise ValueError("--n must be >= 2, --steps, --batch and --judge-steps positive")
    if args.out and not args.out.lower().endswith(".json"):
        raise ValueError(f"--out must name a .json file, got {args.out!r}")
    args.guidance_interval = check_guidance_interval(args.guidance_interval)  # "LO,HI"
    if args.bf16 and args.samples is not None:
        raise ValueError("--bf16 sets the precision of sampling; --samples judges images "
                         "already drawn")
    from fm_numpy.userdata import run_data_info

    info = run_data_info(args.model) if args.model else None
    if info is not None:  # a run on the user's data: distances to its held-out split
        if not os.path.isfile(args.model):
            raise FileNotFoundError(f"no such checkpoint: {args.model}")
        from fm_torch.cli_userdata import evaluate_user_run

        return evaluate_user_run(args, info)
    if args.samples is None:
        from fm_numpy.io import check_memory

        # the noise, the images and their concatenation (float32 784 each), labels, the
        # judge's features of each image
        check_memory(args.n * (3 * 4 * 784 + 8 + 8 * 256), f"--n {args.n}")
    if args.samples is not None:
        if not os.path.isfile(args.samples):
            raise FileNotFoundError(f"no such samples file: {args.samples}")
        metrics = evaluate_samples(args.samples, args.seed, args.judge_steps,
                                   progress=not args.no_progress)
        print(_format(metrics) + f"; judge test accuracy "
              f"{metrics['judge']['test_accuracy']:.4f}")
        if args.out:
            write_metrics(args.out, metrics)
            print(f"wrote {args.out}")
        return 0
    if not os.path.isfile(args.model):
        raise FileNotFoundError(f"no such checkpoint: {args.model}")
    metrics = evaluate_checkpoint(args.model, args.n, args.guidance, args.method, args.steps,
                                  args.seed, ema=not args.no_ema, judge_steps=args.judge_steps,
                                  device=args.device, progress=not args.no_progress,
                                  bf16=args.bf16, batch_size=args.batch,
                                  guidance_interval=args.guidance_interval)
    print(_format(metrics) + f"; {metrics['nfe']} NFE ({args.method}, {args.steps} steps, "
          f"w={args.guidance:g}{_interval_text(args.guidance_interval)}"
          f"{', bf16' if args.bf16 else ''}); judge test accuracy "
          f"{metrics['judge']['test_accuracy']:.4f}")
    if args.out:
        write_metrics(args.out, metrics)
        print(f"wrote {args.out}")
    return 0
