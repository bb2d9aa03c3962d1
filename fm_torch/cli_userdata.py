"""`fm-torch` on the user's own data: the model of a run, `sample` in the data's units and
`evaluate` against the held-out split (fm_numpy/cli_userdata.py is the NumPy twin).

A run on the user's data has data.json beside ckpt.pt (fm_numpy/userdata.py). Its network is
the one `network_for` sizes from the data (fm_torch/models/__init__.py), rebuilt from the
recorded sample shape and class count. `sample` writes the PNG --out (a grid of images,
one row per class, or a scatter of the first two features, standardised) and, with --npz,
the samples in the data's units: `samples` (N, D) or `images` ((N, H, W) or (N, H, W, C),
uint8 for 8-bit data), `labels` (the data's label values) and `class_names`. Labelled data:
--per-class of each class; unlabelled: -n.
"""

import os

import numpy as np
import torch

__all__ = ["load_user_model", "sample_user_run", "evaluate_user_run"]


def load_user_model(path, info, ema=True, map_location="cpu"):
    """(model, checkpoint) of a ckpt.pt trained on the user's data (data.json: info)."""
    from fm_torch.io import load_checkpoint
    from fm_torch.models import network_for
    from fm_torch.train_config import load_weights

    checkpoint = load_checkpoint(path, map_location=map_location)
    for key in ("config", "model", "ema"):
        if key not in checkpoint:
            raise ValueError(f"{path} is not an fm-torch training checkpoint (no {key!r})")
    classes = info.get("class_names")
    model = network_for(tuple(info["file"]["shape"]), len(classes) if classes else None)
    return load_weights(model, checkpoint, ema, path).eval(), checkpoint


def _draw_samples(model, shape, labels, n, args, device, sink):
    """Integrate n samples (chunked) from seeded noise; sink(x1 rows) in order."""
    from fm_torch.sampling import bf16_forward, default_chunk, sample_in_chunks
    from fm_torch.solvers import ClassifierFreeGuidance

    g = torch.Generator().manual_seed(args.seed)

    net = bf16_forward(model) if getattr(args, "bf16", False) else model

    def field(x, t, y=None):
        return (ClassifierFreeGuidance(net, y, args.guidance,
                                       getattr(args, "guidance_interval", None))(x, t)
                if y is not None else net(x, t, None))

    y = None if labels is None else torch.from_numpy(labels).to(device)
    t_grid = torch.linspace(0, 1, args.steps + 1, dtype=torch.float64)
    # sample's --chunk or evaluate's --batch, else the default for images or points
    chunk = (getattr(args, "chunk", None) or getattr(args, "batch", None)
             or default_chunk(len(shape) >= 2, device))
    sample_in_chunks(field, lambda k: torch.randn((k, *shape), generator=g).to(device), t_grid,
                     args.method, chunk, y=y, n=n, sink=sink)


def sample_user_run(args, info):
    """`fm-torch sample` for a run on the user's data; returns the exit status 0."""
    from fm_numpy.cli_userdata import class_labels
    from fm_numpy.imagegrid import write_image_grid
    from fm_numpy.scaling import scaling_from_json
    from fm_torch.plots import save_scatter
    from fm_torch.sampling import NpzStreamWriter

    device = torch.device(args.device)
    model, _ = load_user_model(args.model, info, not args.no_ema, device)
    model = model.to(device)
    scaling = scaling_from_json(info["scaling"])
    shape = tuple(info["file"]["shape"])
    images = info["file"]["kind"] == "images"
    classes = info.get("class_names")
    labels, n = class_labels(len(classes) if classes else None, args.n,
                             args.per_class if classes else None)
    dim = int(np.prod(shape))
    probe = scaling.decode(np.zeros((1, dim)))  # one decoded row: its shape and dtype
    if args.npz:
        from fm_numpy.io import check_disk

        check_disk(args.npz, n * (probe.nbytes + 8), f"{n} samples ({args.npz})")
    head = []  # model-space rows kept for the picture
    writer = NpzStreamWriter(args.npz) if args.npz else None
    if writer is not None:
        writer.__enter__()
    try:
        if writer is not None:
            writer.begin("images" if images else "samples", (n, *probe.shape[1:]), probe.dtype)

        def sink(x1):  # (rows, *shape) model-space end states, in order
            z = x1.float().cpu().numpy().reshape(len(x1), dim)
            if writer is not None:
                writer.write(scaling.decode(z))
            if sum(map(len, head)) < (2000 if images else 100_000):
                head.append(z)

        _draw_samples(model, shape, labels, n, args, device, sink)
        if writer is not None:
            values = np.asarray(info.get("label_values") or [], dtype=np.int64)
            writer.begin("labels", (n if labels is not None else 0,), np.int64)
            if labels is not None:
                writer.write(values[labels])  # the data's own label values
            names = np.asarray(classes or [], dtype=str)
            writer.begin("class_names", names.shape, names.dtype)
            writer.write(names)
    except BaseException as e:
        if writer is not None:
            writer.__exit__(type(e), e, e.__traceback__)
        raise
    if writer is not None:
        writer.__exit__(None, None, None)
    z = np.concatenate(head)
    if images:
        write_image_grid(args.out, z, shape, None if labels is None else labels[:len(z)])
    else:
        # standardised units (the plot's fixed [-4, 4] frame), the first two features
        points = z[:, :2] if z.shape[1] >= 2 else np.concatenate([z, np.zeros_like(z)], 1)
        save_scatter(args.out, points, f"{os.path.basename(info['file']['path'])}: {n} "
                                       "samples, standardised")
    print(f"wrote {args.out} ({n} {'images' if images else 'samples'})"
          + (f" and {args.npz} (the data's units)" if args.npz else ""))
    return 0


def evaluate_user_run(args, info):
    """`fm-torch evaluate --model ckpt.pt` for a run on the user's data (exit status 0)."""
    from fm_numpy.holdout import format_report, holdout_report
    from fm_numpy.io import save_json
    from fm_numpy.userdata import UserData

    data = UserData.from_info(info)
    device = torch.device(args.device)
    model, _ = load_user_model(args.model, info, not args.no_ema, device)
    model = model.to(device)
    shape = tuple(info["file"]["shape"])
    y_val = data.labels(data.val_idx)
    labels = None if y_val is None or len(y_val) == 0 else y_val[np.arange(args.n) % len(y_val)]
    rows = []
    _draw_samples(model, shape, labels, args.n, args, device,
                  lambda x1: rows.append(x1.float().cpu().numpy().reshape(len(x1), -1)))
    report = holdout_report(np.concatenate(rows), data, args.seed)
    print(format_report(report))
    if args.out:
        save_json(args.out, report)
        print(f"wrote {args.out}")
    return 0
