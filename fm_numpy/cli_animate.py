"""`fm-numpy sample ... --animate FILE.gif`: the samples forming, one frame per solver step.

After `sample` has written its files, a preview batch is integrated again from the same
seed with the same solver and guidance, keeping every state x_{t_k} of the grid:
2-D vectors as 2000 particles, images as a grid (10 per class for labelled data, else 64).
Other vectors (D != 2) have no picture and are refused before any work.
"""

import numpy as np

from fm_numpy.animate import animate_images, animate_points

__all__ = ["add_animate_argument", "check_animate", "preview_labels", "cmd_animate"]

POINTS = 2000  # particles of a 2-D animation
IMAGES = 100  # images of an image animation, at most


def add_animate_argument(parser):
    parser.add_argument("--animate", metavar="FILE.gif", default=None,
                        help="also write a GIF of the samples forming, one frame per step")


def check_animate(path):
    """ValueError unless `path` names a .gif file."""
    if path is not None and not str(path).lower().endswith(".gif"):
        raise ValueError(f"--animate must name a .gif file, got {path!r}")


def sample_shape(model_dim, info):
    """One sample's shape: (C, H, W) for images, (D,) for vectors, from the run's data record."""
    if info is not None:
        return tuple(int(s) for s in info["file"]["shape"])
    return (1, 28, 28) if model_dim == 784 else (int(model_dim),)


def preview_labels(num_classes, image):
    """The preview's labels: 10 rows a class (images; fewer when classes are many) or the
    classes in turn over the particles (2-D); None for an unconditional model."""
    if not num_classes:
        return None
    if image:
        per_class = max(1, min(10, IMAGES // num_classes))
        return np.repeat(np.arange(num_classes), per_class)  # (C * per_class,)
    return np.arange(POINTS) % num_classes  # (POINTS,)


def to_frames(xs, shape):
    """Model-space states (K, B, C*H*W) in [-1, 1] -> (K, B, H, W[, C]) in [0, 1]."""
    frames = (np.clip(xs, -1, 1) + 1) / 2  # (K, B, D)
    frames = frames.reshape(*xs.shape[:2], *shape)  # (K, B, C, H, W)
    frames = np.moveaxis(frames, 2, -1)  # (K, B, H, W, C)
    return frames[..., 0] if shape[0] == 1 else frames


def cmd_animate(args):
    """Write args.animate for the model of args.model (the sample command's arguments)."""
    from fm_numpy.models import load_model
    from fm_numpy.solvers import ClassifierFreeGuidance, odeint
    from fm_numpy.userdata import run_data_info

    model = load_model(args.model)
    shape = sample_shape(model.dim, run_data_info(args.model))
    image = len(shape) == 3
    if not image and shape != (2,):
        raise ValueError(f"--animate draws 2-D points or images; {args.model} samples "
                         f"{shape[0]}-D vectors")
    labels = preview_labels(model.num_classes, image)
    B = len(labels) if labels is not None else (64 if image else POINTS)
    rng = np.random.default_rng(args.seed)
    x0 = rng.standard_normal((B, model.dim)).astype(model.dtype)  # (B, D)
    t_grid = np.linspace(0.0, 1.0, args.steps + 1)
    if getattr(model, "mean_flow", False) and args.method == "euler":
        from fm_numpy.meanflow import sample as meanflow_sample

        xs = meanflow_sample(model, x0, args.steps, labels, args.guidance)  # (K, B, D)
    else:
        field = ((lambda x, t: model.forward(x, t, None)) if labels is None
                 else ClassifierFreeGuidance(model, labels, args.guidance,
                                             getattr(args, "guidance_interval", None)))
        xs = odeint(field, x0, t_grid, method=args.method)  # (K, B, D)
    if image:
        rows = model.num_classes or 8
        animate_images(args.animate, to_frames(np.asarray(xs), shape), rows, t_grid)
    else:
        animate_points(args.animate, np.asarray(xs), t_grid)
    print(f"wrote {args.animate} ({len(xs)} frames)")
    return 0
