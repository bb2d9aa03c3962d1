"""`fm-torch train-diffusion`, and how `sample` treats a diffusion checkpoint.

    fm-torch train-diffusion --data mnist --prediction v --schedule linear --out runs/ddpm
    fm-torch sample --model runs/ddpm/ckpt.pt --as-flow --method midpoint --steps 10 --out f.png
    fm-torch sample --model runs/ddpm/ckpt.pt --sampler ddim --steps 20 --out d.png
    fm-torch train --init-from runs/ddpm/ckpt.pt --diff2flow --steps 300 --out runs/d2f

train-diffusion takes every option of train (same loop: checkpoints, resume, EMA,
Ctrl-C, NaN stop) plus the diffusion settings (fm_torch/train_diffusion.py).
"""

import os

from fm_torch.diffusion import PREDICTIONS
from fm_torch.train_diffusion import SCHEDULES

__all__ = ["add_train_diffusion_parser", "cmd_train_diffusion", "sampler_for", "add_sample_options"]


def _train_parser(subparsers):
    """`fm-torch train`'s parser (fm_torch.cli registers it first), whose options
    train-diffusion inherits; found among the subparsers, so this module needs no import
    of fm_torch.cli (which imports it)."""
    train = subparsers.choices.get("train")
    if train is None:
        raise RuntimeError("register the train subcommand before train-diffusion")
    return train


def add_train_diffusion_parser(subparsers):
    train = _train_parser(subparsers)
    p = subparsers.add_parser(
        "train-diffusion", parents=[train], add_help=False,
        help="train a discrete-time DDPM (the U-Net on MNIST, the MLP on 2-D sets)")
    p.add_argument("--prediction", default="epsilon",
                   help=f"what the network predicts: {', '.join(PREDICTIONS)} (default epsilon)")
    p.add_argument("--schedule", default="linear",
                   help=f"beta schedule: {', '.join(SCHEDULES)} (default linear, DDPM's)")
    p.add_argument("--num-train-steps", type=int, default=1000,
                   help="diffusion steps N (default 1000)")
    p.set_defaults(func=cmd_train_diffusion, data="mnist", train_command=train.get_default("func"))


def cmd_train_diffusion(args):
    from fm_torch.train_diffusion import check_diffusion_config

    if args.init_from is not None or args.diff2flow:
        raise ValueError("train-diffusion trains a DDPM; fine-tune with `train --init-from`")
    args.diffusion = check_diffusion_config(
        {"mode": "ddpm", "prediction": args.prediction, "schedule": args.schedule,
         "num_train_steps": args.num_train_steps}, args.scheduler or "condot")
    if args.out is None:
        args.out = os.path.join("runs", f"ddpm_{args.data}")
    return args.train_command(args)  # fm_torch.cli.cmd_train


def sampler_for(checkpoint, args):
    """The function sample(model, x0, y, guidance, method, steps, return_nfe) for a checkpoint.

    A DDPM checkpoint needs --as-flow (its flow ODE by our solvers) or --sampler ddim;
    --sampler ddim also samples a Diff2Flow fine-tune's network as a diffusion model.
    """
    from fm_torch.sampling import sample
    from fm_torch.train_diffusion import ddim_trajectory

    diffusion = checkpoint["config"].get("diffusion")
    if diffusion is None:
        if args.as_flow or args.sampler == "ddim":
            raise ValueError(f"{args.model} is a flow-matching checkpoint; --as-flow and "
                             "--sampler ddim apply to diffusion checkpoints (train-diffusion)")
        return sample
    if args.sampler == "ddim":
        if args.as_flow:
            raise ValueError("choose one of --as-flow (the flow ODE) and --sampler ddim")

        def ddim(model, x0, y, guidance, method, steps, return_nfe=False):
            xs, nfe = ddim_trajectory(model, x0, y, guidance, steps)
            return (xs, nfe) if return_nfe else xs
        return ddim
    if diffusion["mode"] == "ddpm" and not args.as_flow:
        raise ValueError(f"{args.model} is a DDPM checkpoint: sample it with --as-flow (its "
                         "flow ODE) or --sampler ddim")
    return sample


def add_sample_options(p):
    """--as-flow and --sampler for `fm-torch sample`."""
    p.add_argument("--as-flow", action="store_true",
                   help="a DDPM checkpoint: integrate its flow ODE (DiffusionToFlow) with --method")
    p.add_argument("--sampler", default="ode", choices=("ode", "ddim"),
                   help="ode (--method on the flow) or ddim (a diffusion checkpoint, eta = 0)")

