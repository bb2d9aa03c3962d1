"""`fm-numpy likelihood`: log-likelihood (and bits per dim for MNIST) of held-out data.

    fm-numpy likelihood --model runs/8g/model.npz --data 8gaussians -n 1000
    fm-numpy likelihood --model runs/mnist/model.npz --data mnist -n 100 --divergence hutchinson

Registered in fm_numpy/cli.py through `add_likelihood_parser`; the work is done by
fm_numpy/likelihood.py. The model is evaluated in float64. For "8gaussians" the true
log-density of the same points (the explicit mixture of fm_numpy/analytic.py) is
reported beside the model's.
"""

import hashlib
import json
import math
import os
import time

import numpy as np

from .likelihood import (
    DIVERGENCES,
    PROBES,
    bits_per_dim,
    dequantize,
    log_likelihood,
    to_model_space,
)

__all__ = ["add_likelihood_arguments", "add_likelihood_parser", "cmd_likelihood", "summarise",
           "run_batches", "finish_batches", "scored_points", "kept_batches"]


def add_likelihood_arguments(p, adaptive="RK45, DOP853", image_method="RK45"):
    """The options shared by `fm-numpy likelihood` and `fm-torch likelihood`.

    `image_method`, the package's adaptive solver, is MNIST's default: on the first 20 test
    images of a trained U-Net, rk4 with 25, 50, 100, 200 fixed steps gave -0.16, 0.96,
    1.36, 1.49 bits/dim against dopri5's 1.45 (docs/benchmarks.md, "The full MNIST run on
    the CPU"): the divergence changes fast near t = 1."""
    p.add_argument("--data", default=None,
                   help="mnist (test split) or a 2-D toy set: moons, 8gaussians, checkerboard, "
                        "spirals, circles (fresh points drawn with --seed; default "
                        "8gaussians); a run on your own vectors scores its held-out rows")
    p.add_argument("-n", type=int, default=None,
                   help="number of test points (default 1000; mnist 100)")
    p.add_argument("--method", default=None,
                   help=f"euler, midpoint, heun, rk4, {adaptive} (default rk4; mnist "
                        f"{image_method}: fixed grids are far from converged there)")
    p.set_defaults(image_method=image_method)
    p.add_argument("--steps", type=int, default=50, help="fixed-grid steps (default 50)")
    p.add_argument("--rtol", type=float, default=1e-5, help="adaptive methods (default 1e-5)")
    p.add_argument("--atol", type=float, default=1e-5, help="adaptive methods (default 1e-5)")
    p.add_argument("--divergence", choices=DIVERGENCES, default="exact",
                   help="exact trace or Hutchinson's estimate (default exact)")
    p.add_argument("--probe", choices=PROBES, default="rademacher")
    p.add_argument("--n-probes", type=int, default=1, help="Hutchinson probes (default 1)")
    p.add_argument("--batch", type=int, default=None,
                   help="points per ODE solve (default 500; mnist 10)")
    p.add_argument("--labels", action="store_true",
                   help="class models: log p(x | y) with the true labels (default: null class)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the test points, dequantisation and probes")
    p.add_argument("--out", default=None,
                   help="also write the results as JSON; finished batches are kept in "
                        "OUT.partial.npz, so a rerun continues an interrupted run")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(kept_on_interrupt=kept_batches)


def kept_batches(args):
    """What an interrupted likelihood leaves (the one line after Ctrl-C)."""
    if args.out is None:
        return "nothing is kept (with --out OUT finished batches are kept for a rerun)"
    return (f"the finished batches are kept in {args.out}.partial.npz; the same command "
            "continues them")


def add_likelihood_parser(subparsers):
    p = subparsers.add_parser(
        "likelihood", help="exact log-likelihood of test data by the change of variables")
    p.add_argument("--model", required=True, help="model.npz written by train")
    add_likelihood_arguments(p)
    p.set_defaults(func=cmd_likelihood)


def held_out_data(name, n, seed):
    """(x1 in model space (n, D) float64, labels or None, log-det of the map to model space).

    mnist: the first n test images, dequantised (seeded) and mapped to [-1, 1)^784
    (log-det 784 log 2, used for bits per dim); toy sets: n fresh points.
    """
    if name == "mnist":
        from .data import load_mnist

        images, labels = load_mnist("test")
        if n > len(images):
            raise ValueError(f"-n {n} exceeds the {len(images)} MNIST test images")
        z = dequantize(images[:n], np.random.default_rng(seed))  # (n, 28, 28) in [0, 1)
        return to_model_space(z).reshape(n, 784), labels[:n]
    from .data import sample_toy

    return sample_toy(name, n, np.random.default_rng(seed)), None


def user_held_out(info, n):
    """(z (n, D) float64, labels or None, log |det dz/dx|) of the first n held-out rows of a
    run on the user's vectors (data.json: info), in model space z = (x - mean) / std.

    The model's density is over z; in the data's units log p_x(x) = log p_z(z) + log |det
    dz/dx| (the scaling's log_abs_det). Images are refused: their pixels are discrete and
    would need a dequantisation of their own."""
    from .holdout import _encode_rows
    from .userdata import UserData

    data = UserData.from_info(info)
    if data.rec.kind != "vectors":
        raise ValueError(f"likelihood scores runs on your own vectors; {info['file']['path']}"
                         " holds images (use `evaluate` for their held-out distances)")
    m = len(data.val_idx)
    if m == 0:
        raise ValueError("the run held out no data (--val-fraction 0): nothing to score")
    if n > m:
        raise ValueError(f"-n {n} exceeds the run's {m} held-out rows")
    z = _encode_rows(data.val, np.arange(n), data.scaling)  # (n, D)
    labels = data.labels(data.val_idx[:n])
    return z, labels, data.scaling.log_abs_det()


def scored_points(args, n, info=None):
    """(x1 in model space (n, D) float64, labels or None, log |det dz/dx| or None): the
    held-out rows of a run on the user's data (info), else held_out_data(--data)."""
    if info is not None:
        return user_held_out(info, n)
    return (*held_out_data(args.data, n, args.seed), None)


def true_log_density(name, x1):
    """The exact log-density of the toy set at x1 where one is known (8gaussians), else None."""
    if name != "8gaussians":
        return None
    from .analytic import eight_gaussians_mixture

    return eight_gaussians_mixture().log_prob(x1)


def _mean_and_stderr(values):
    values = np.asarray(values, dtype=np.float64)
    se = float(np.std(values) / math.sqrt(len(values))) if len(values) > 1 else None
    return float(np.mean(values)), se


def _pm(se):
    return f" +- {se:.4f}" if se is not None else ""


def summarise(name, log_p, true_lp=None, log_det=None):
    """Mean and standard error (None for one point) of log p, and of bpd for mnist, as a
    dict; printed one per line. log_det: a user run's log |det dz/dx|, which turns the
    model-space log p_z into the data's units (log p_x = log p_z + log_det)."""
    n = len(log_p)
    mean, se = _mean_and_stderr(log_p)
    result = {"data": name, "n": n, "mean_log_likelihood": mean, "stderr_log_likelihood": se}
    print(f"mean log-likelihood: {mean:.4f}{_pm(se)} (n = {n}"
          f"{', held-out rows, standardised features' if log_det is not None else ''})")
    if log_det is not None:
        result["space"] = "standardised features"
        result["log_abs_det"] = log_det
        result["mean_log_likelihood_data_units"] = mean + log_det
        print(f"in the data's units: {mean + log_det:.4f}{_pm(se)} (log p_x = log p_z "
              f"{log_det:+.4f}, the scaling's log |det dz/dx|)")
    if name == "mnist":
        mean, se = _mean_and_stderr(bits_per_dim(np.asarray(log_p), 784))
        result["bits_per_dim"], result["stderr_bits_per_dim"] = mean, se
        print(f"bits per dim:        {mean:.4f}{_pm(se)} (uniform dequantisation, 8-bit)")
    if true_lp is not None:
        result["true_mean_log_density"] = float(np.mean(true_lp))
        result["mean_abs_error"] = float(np.mean(np.abs(np.asarray(log_p) - true_lp)))
        print(f"true log-density:    {result['true_mean_log_density']:.4f} "
              f"(mean |model - true| {result['mean_abs_error']:.4f})")
    return result


def check_args(args, info=None):
    """(n, batch) of the command line, checked; fills in the default --data and --method.
    info: the data.json of a run on the user's data (then --data must be left out)."""
    if info is not None:
        if args.data is not None:
            raise ValueError(f"{args.model} was trained on {info['file']['path']}: leave out "
                             "--data, likelihood scores that run's held-out rows")
        args.data = info["file"]["path"]  # the recorded path: never a built-in set's name
        dim = int(np.prod(info["file"]["shape"]))
    elif args.data is None:
        args.data = "8gaussians"
    if args.method is None:
        args.method = args.image_method if args.data == "mnist" else "rk4"
    default_n = 100 if args.data == "mnist" else 1000
    if info is not None:  # at most the run's held-out rows
        default_n = min(default_n, int(info["split"].get("n_val", default_n))) or 1
    n = args.n if args.n is not None else default_n
    batch = args.batch if args.batch is not None else (10 if args.data == "mnist" else 500)
    for flag, value in (("-n", n), ("--batch", batch), ("--steps", args.steps),
                        ("--n-probes", args.n_probes)):
        if value < 1:
            raise ValueError(f"{flag} must be positive, got {value}")
    from .io import check_memory

    # held in memory: the test points (float64) with a dequantised copy for mnist, and the
    # per-point results; one batch's ODE state is small beside them
    if info is None:
        dim = 784 if args.data == "mnist" else 2
    check_memory(n * (3 * dim + 4) * 8, f"-n {n}")
    return n, batch


def progress_bar(iterable, no_progress):
    """tqdm's bar over iterable, imported only when shown (fm_numpy runs on NumPy and SciPy
    alone with --no-progress)."""
    if no_progress:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc="likelihood")


def _fingerprint(args):
    """The settings and the model file's SHA-256 that produced a partial file's numbers.

    MNIST's -n is left out: its first test images and their dequantisation do not depend
    on n (a toy set's fresh points do)."""
    digest = hashlib.sha256()
    with open(args.model, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    ignored = {"out", "no_progress", "func", "model"} | ({"n"} if args.data == "mnist" else set())
    settings = {k: v for k, v in sorted(vars(args).items())
                if k not in ignored and not callable(v)}
    return json.dumps({"model_sha256": digest.hexdigest(), **settings}, sort_keys=True,
                      default=str)


def _load_partial(path, fingerprint, n, batch):
    """(log p of the points done, seconds spent) from a partial file with this fingerprint.

    Points are kept in whole batches unless the file covers all n: an MNIST run with another
    -n reuses the first batches of one with fewer or more points (the test images, their
    dequantisation and batch i's probes, seeded seed + i, do not depend on n)."""
    if path is None or not os.path.exists(path):
        return np.zeros(0), 0.0
    from .io import load_npz

    saved = load_npz(path)
    if "fingerprint" not in saved or str(saved["fingerprint"]) != fingerprint:
        raise ValueError(f"{path} holds batches of a run with another model or settings: "
                         "rerun with the same flags, or delete it to start over")
    log_p = saved["log_p"]
    done = len(log_p) if len(log_p) == n else min(len(log_p), n) // batch * batch
    return log_p[:done], float(saved["seconds"])


def run_batches(args, n, batch, solve):
    """log p (n,) of the test points, solve(i, start) giving batch i (points start..start+b).

    With --out the batches done so far are saved atomically to OUT.partial.npz after each
    batch, with a fingerprint of the model and the settings; a rerun with the same settings
    continues after the last saved batch and gives the numbers of an uninterrupted run (a
    whole MNIST test split takes hours on a CPU). The file is removed once the JSON is
    written (by the caller, through finish_batches) unless it holds more points than n.
    Returns (log_p, seconds, partial path).
    """
    from .io import save_npz

    path = None if args.out is None else args.out + ".partial.npz"
    fingerprint = _fingerprint(args) if path else ""
    log_p, seconds = _load_partial(path, fingerprint, n, batch)
    if len(log_p):
        print(f"continuing from {path}: {len(log_p)} of {n} points done")
    parts = [log_p]
    starts = range(len(log_p), n, batch)
    for start in progress_bar(starts, args.no_progress):
        begin = time.perf_counter()
        parts.append(np.asarray(solve(start // batch, start), dtype=np.float64))  # (b,)
        seconds += time.perf_counter() - begin
        if path:
            save_npz(path, log_p=np.concatenate(parts), seconds=np.float64(seconds),
                     fingerprint=np.array(fingerprint))
    return np.concatenate(parts), seconds, path


def finish_batches(args, result, seconds, partial_path):
    """Add the timing and solver settings to result, write --out, drop the partial file
    unless it holds more points than this run used."""
    from .io import save_json

    result.update({"seconds": seconds, "seconds_per_point": seconds / result["n"],
                   "method": args.method, "rtol": args.rtol, "atol": args.atol,
                   "divergence": args.divergence})
    print(f"time:                {seconds:.1f} s ({seconds / result['n']:.3f} s a point, "
          f"{args.method}, rtol {args.rtol:g}, atol {args.atol:g})")
    if args.out:
        save_json(args.out, result)
        print(f"wrote {args.out}")
    # the batches are dropped once the result holds them all; a file of a longer run (this
    # one used its first n points) is kept for the rerun that finishes it
    if partial_path and os.path.exists(partial_path):
        from .io import load_npz

        if len(load_npz(partial_path)["log_p"]) <= result["n"]:
            os.remove(partial_path)


def cmd_likelihood(args):
    from .mlp import MLP
    from .models import load_model
    from .userdata import run_data_info

    info = run_data_info(args.model)
    n, batch = check_args(args, info)
    x1, labels, log_det = scored_points(args, n, info)  # (n, D)
    model = load_model(args.model, dtype=np.float64)
    if not isinstance(model, MLP):  # the divergence needs the MLP's forward-mode jvp
        raise ValueError(f"{args.model} holds a {model.config['arch']!r} network; fm-numpy "
                         "likelihood needs an MLP (its forward-mode JVP gives the divergence): "
                         "train one with --arch mlp")
    if x1.shape[1] != model.dim:
        raise ValueError(f"the model takes {model.dim} values per point, {args.data} has "
                         f"{x1.shape[1]}")
    use_labels = args.labels and labels is not None and model.num_classes

    def solve(i, start):  # batch i: the points start..start+batch, probes seeded seed + i
        y = labels[start:start + batch] if use_labels else None
        return log_likelihood(
            model, x1[start:start + batch], method=args.method, steps=args.steps,
            rtol=args.rtol, atol=args.atol, divergence=args.divergence, probe=args.probe,
            n_probes=args.n_probes, seed=args.seed + i, y=y)

    log_p, seconds, partial = run_batches(args, n, batch, solve)
    result = summarise(args.data, log_p, true_log_density(args.data, x1), log_det)
    finish_batches(args, result, seconds, partial)
    return 0
