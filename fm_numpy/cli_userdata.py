"""`fm-numpy` on the user's own data: the train flags, `sample` in the data's units, and
`fm-numpy evaluate` against the held-out split.

    fm-numpy train --data table.csv --label-column species --out runs/table
    fm-numpy sample --model runs/table/model.npz -n 1000 --out runs/table/s.npz
    fm-numpy evaluate --model runs/table/model.npz

A run on the user's data has data.json beside its model (fm_numpy/userdata.py): `sample`
decodes to the data's units (vectors `samples` (N, D); images `images` (N, H, W) or
(N, H, W, C), uint8 for 8-bit data) with `labels` (the data's own label values) and
`class_names`, and writes a PNG grid for images.
"""

import os

import numpy as np

__all__ = ["add_data_arguments", "data_settings", "default_out", "class_labels",
           "sample_user_run", "add_evaluate_parser", "cmd_evaluate"]


def add_data_arguments(p):
    """--label-column and --val-fraction (both CLIs' train)."""
    p.add_argument("--label-column",
                   help="CSV only: the integer label column (its header name, or its 0-based "
                        "index without a header); an .npz takes labels from y, an image "
                        "folder from its class subfolders")
    p.add_argument("--val-fraction", type=float,
                   help="the user's data: share held out for evaluate, a seeded split "
                        "(default 0.1)")


def data_settings(args):
    return {"label_column": args.label_column, "val_fraction": args.val_fraction}


def default_out(data):
    """runs/<data> for a name, runs/<file or folder name without extension> for a path."""
    from fm_numpy.userdata import is_data_file

    if is_data_file(data):
        data = os.path.splitext(os.path.basename(os.path.normpath(data)))[0] or "data"
    return os.path.join("runs", data)


def class_labels(num_classes, n, per_class):
    """(labels (n,) or None, n): per_class K gives K of each class in order, else classes
    in turn."""
    if not num_classes:
        return None, n
    if per_class is not None:
        if per_class < 1:
            raise ValueError(f"--per-class must be positive, got {per_class}")
        return np.repeat(np.arange(num_classes), per_class), num_classes * per_class
    return np.arange(n) % num_classes, n


def sample_user_run(args, model, info):
    """`fm-numpy sample` for a run on the user's data; returns the exit status 0."""
    from fm_numpy.imagegrid import write_image_grid
    from fm_numpy.models.threads import threaded
    from fm_numpy.sampling import NpzStreamWriter, check_output_fits, sample_in_chunks
    from fm_numpy.scaling import scaling_from_json
    from fm_numpy.solvers import ClassifierFreeGuidance

    scaling = scaling_from_json(info["scaling"])
    shape = tuple(info["file"]["shape"])
    images = info["file"]["kind"] == "images"
    labels, n = class_labels(model.num_classes, args.n, getattr(args, "per_class", None))
    probe = scaling.decode(np.zeros((1, model.dim)))  # one decoded row: its shape and dtype
    check_output_fits(args.out, n * (probe.nbytes + 8), f"-n {n} ({args.out})")
    net = threaded(model, model.config.get("arch", "mlp"), args.threads)
    field = net
    if model.num_classes:
        field = lambda x, t, y: ClassifierFreeGuidance(  # noqa: E731
            net, y, args.guidance, getattr(args, "guidance_interval", None))(x, t)
    rng = np.random.default_rng(args.seed)
    head = []  # model-space rows kept for the grid
    with NpzStreamWriter(args.out) as writer:

        def sink(x1):  # (rows, D) model-space end states, in order
            writer.write(scaling.decode(x1))
            if images and sum(map(len, head)) < 2000:
                head.append(x1)

        writer.begin("images" if images else "samples", (n, *probe.shape[1:]), probe.dtype)
        sample_in_chunks(field, lambda k: rng.standard_normal((k, model.dim)).astype(
            model.dtype), np.linspace(0.0, 1.0, args.steps + 1), args.method, args.chunk,
            y=labels, n=n, sink=sink)
        values = np.asarray(info.get("label_values") or [], dtype=np.int64)
        writer.begin("labels", (n if labels is not None else 0,), np.int64)
        if labels is not None:
            writer.write(values[labels])  # the data's own label values
        names = np.asarray(info.get("class_names") or [], dtype=str)
        writer.begin("class_names", names.shape, names.dtype)
        writer.write(names)
    what = f"{n} {'images' if images else 'samples'} in the data's units"
    if images:
        grid = os.path.splitext(args.out)[0] + "_grid.png"
        z = np.concatenate(head)
        write_image_grid(grid, z, shape, None if labels is None else labels[:len(z)])
        print(f"wrote {args.out} ({what}) and {grid}")
    else:
        print(f"wrote {args.out} ({what})")
    return 0


def add_evaluate_parser(subparsers):
    p = subparsers.add_parser(
        "evaluate", help="judge a run on your own data against its held-out split")
    p.add_argument("--model", required=True, help="model.npz of a run trained with --data PATH")
    p.add_argument("--samples", help="judge this samples .npz (from sample) instead of drawing")
    p.add_argument("-n", "--n", type=int, default=1000, help="samples to draw (default 1000)")
    p.add_argument("--method", default="rk4", help="euler, midpoint, heun, rk4, RK45, DOP853")
    p.add_argument("--steps", type=int, default=20, help="fixed-grid steps (default 20)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", type=float, default=1.0,
                   help="classifier-free guidance w of the drawn samples (class models)")
    p.add_argument("--out", help="write the metrics to this .json")
    p.set_defaults(func=cmd_evaluate)


def load_samples(path, info, scaling):
    """Model-space rows of a samples .npz written by `sample` for this run."""
    from fm_numpy.io import load_npz

    arrays = load_npz(path)
    key = "images" if info["file"]["kind"] == "images" else "samples"
    if key not in arrays:
        raise ValueError(f"{path} holds no {key!r} array (found: {', '.join(arrays)})")
    x = arrays[key]
    try:
        return scaling.encode(x).reshape(len(x), -1)  # (N, D)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def cmd_evaluate(args):
    from fm_numpy.holdout import format_report, holdout_report
    from fm_numpy.io import save_json
    from fm_numpy.models import load_model
    from fm_numpy.sampling import sample_in_chunks
    from fm_numpy.userdata import UserData, run_data_info

    if args.n < 2 or args.steps < 1:
        raise ValueError(f"-n must be >= 2 and --steps positive, got {args.n}, {args.steps}")
    if args.out and not args.out.lower().endswith(".json"):
        raise ValueError(f"--out must name a .json file, got {args.out!r}")
    if not os.path.isfile(args.model):
        raise FileNotFoundError(f"no such model file: {args.model}")
    info = run_data_info(args.model)
    if info is None:
        raise ValueError(f"{args.model}: evaluate judges runs on your own data (train --data "
                         "PATH); for MNIST use `fm-torch evaluate`")
    data = UserData.from_info(info)
    if args.samples is not None:
        z = load_samples(args.samples, info, data.scaling)
    else:
        model = load_model(args.model)
        from fm_numpy.io import check_memory  # x0 and the samples whole, labels (issue 23)

        check_memory(args.n * (2 * model.dim * model.dtype.itemsize + 8), f"-n {args.n}")
        y_val = data.labels(data.val_idx)
        labels = None if y_val is None else y_val[np.arange(args.n) % len(y_val)]  # their mix
        field = model
        if labels is not None:
            from fm_numpy.solvers import ClassifierFreeGuidance

            def field(x, t, y):
                return ClassifierFreeGuidance(model, y, args.guidance)(x, t)
        rng = np.random.default_rng(args.seed)
        z = sample_in_chunks(field, rng.standard_normal((args.n, model.dim)).astype(
            model.dtype), np.linspace(0.0, 1.0, args.steps + 1), args.method, 256, y=labels)
    report = holdout_report(z, data, args.seed)
    print(format_report(report))
    if args.out:
        save_json(args.out, report)
        print(f"wrote {args.out}")
    return 0
