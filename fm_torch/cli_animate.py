"""`fm-torch sample ... --animate FILE.gif`: the twin of fm_numpy/cli_animate.py.

The preview batch (10 images a class, or 2000 particles of a 2-D set) is sampled again
from the command's seed by the checkpoint's own sampler (flow ODE, MeanFlow steps, a
diffusion model's flow or DDIM), keeping every state; one frame per solver step.
"""

import numpy as np
import torch

from fm_numpy.cli_animate import POINTS, add_animate_argument, check_animate, preview_labels
from fm_torch.animate import animate_images, animate_points

__all__ = ["add_animate_argument", "check_animate", "cmd_animate"]


def sample_shape(config, info):
    """One sample's shape: (C, H, W) for images, (D,) for vectors."""
    if info is not None:
        return tuple(int(s) for s in info["file"]["shape"])
    return (1, 28, 28) if config["data"] == "mnist" else (2,)


def cmd_animate(args):
    """Write args.animate for the checkpoint of args.model (the sample command's arguments)."""
    from fm_numpy.userdata import run_data_info
    from fm_torch.cli_diffusion import sampler_for
    from fm_torch.train import load_model, sample

    device = torch.device(args.device)
    model, checkpoint = load_model(args.model, ema=not args.no_ema, map_location=device)
    model = model.to(device)
    shape = sample_shape(checkpoint["config"], run_data_info(args.model))
    image = len(shape) == 3
    if not image and shape != (2,):
        raise ValueError(f"--animate draws 2-D points or images; {args.model} samples "
                         f"{shape[0]}-D vectors")
    num_classes = getattr(model, "num_classes", None)
    if num_classes is None and checkpoint["config"]["data"] == "mnist":
        num_classes = 10  # a diffusion wrapper around the class-conditional U-Net
    labels = preview_labels(num_classes, image)
    B = len(labels) if labels is not None else (64 if image else POINTS)
    g = torch.Generator().manual_seed(args.seed)
    x0 = torch.randn((B, *shape), generator=g).to(device)  # (B, ...)
    y = None if labels is None else torch.from_numpy(labels).to(device)  # (B,)
    chosen = sampler_for(checkpoint, args)
    # the frames of the samples `sample` drew: its precision and guidance interval
    same_as_sample = {"bf16": getattr(args, "bf16", False),
                      "guidance_interval": getattr(args, "guidance_interval", None)}
    with torch.no_grad():
        xs = chosen(model, x0, y, args.guidance, args.method, args.steps,
                    **(same_as_sample if chosen is sample else {}))  # (K, B, ...)
    t_grid = np.linspace(0.0, 1.0, len(xs))
    if image:
        animate_images(args.animate, xs, num_classes or 8, t_grid)
    else:
        animate_points(args.animate, xs, t_grid)
    print(f"wrote {args.animate} ({len(xs)} frames)")
    return 0
