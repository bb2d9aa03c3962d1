"""`fm-torch likelihood`: log-likelihood (and bits per dim for MNIST) of held-out data.

    fm-torch likelihood --model runs/8g/ckpt.pt --data 8gaussians -n 1000
    fm-torch likelihood --model runs/mnist/ckpt.pt --data mnist -n 100 --divergence hutchinson

The torch twin of fm_numpy/cli_likelihood.py, with the same options and the same test
points (drawn by fm_numpy from --seed), so both command lines score the same data. The
model is a training checkpoint (ckpt.pt, EMA weights unless --no-ema; U-Net for MNIST,
fed (B, 1, 28, 28) images) or an MLP .npz of either package. Exact divergences of the
U-Net take one backward pass per pixel: prefer --divergence hutchinson on a CPU.
"""

import torch

from fm_numpy.cli_likelihood import (
    add_likelihood_arguments,
    check_args,
    finish_batches,
    run_batches,
    scored_points,
    summarise,
    true_log_density,
)

from .likelihood import log_likelihood

__all__ = ["add_likelihood_parser", "cmd_likelihood", "load_velocity_model"]


def add_likelihood_parser(subparsers):
    p = subparsers.add_parser(
        "likelihood", help="exact log-likelihood of test data by the change of variables")
    p.add_argument("--model", required=True, help="ckpt.pt written by train, or an MLP .npz")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights, not the EMA")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                   help="precision of the model and the ODE state (default float64)")
    add_likelihood_arguments(p, adaptive="dopri5", image_method="dopri5")
    p.set_defaults(func=cmd_likelihood)


def load_velocity_model(path, ema=True, device="cpu", dtype=torch.float64, info=None):
    """The model of a ckpt.pt (fm_torch.train.load_model; a run on the user's data, info:
    its data.json, through cli_userdata.load_user_model) or of an MLP .npz, in eval mode."""
    if info is not None and not str(path).endswith(".npz"):
        from .cli_userdata import load_user_model

        model, _ = load_user_model(path, info, ema)
    elif str(path).endswith(".npz"):
        from .models.mlp import MLP

        model = MLP.from_npz(path, dtype=dtype)  # time frequencies computed in dtype
    else:
        from .train import load_model

        model, _ = load_model(path, ema=ema)
    return model.to(device=device, dtype=dtype).eval()


def cmd_likelihood(args):
    from fm_numpy.userdata import run_data_info

    info = run_data_info(args.model)
    n, batch = check_args(args, info)
    x1, labels, log_det = scored_points(args, n, info)  # (n, D) float64, numpy
    dtype = getattr(torch, args.dtype)
    model = load_velocity_model(args.model, not args.no_ema, args.device, dtype, info)
    image_model = not hasattr(model, "dim")  # the U-Net takes (B, 1, 28, 28)
    if image_model:
        x1 = x1.reshape(n, 1, 28, 28)
    elif x1.shape[1] != model.dim:
        raise ValueError(f"the model takes {model.dim} values per point, {args.data} has "
                         f"{x1.shape[1]}")
    use_labels = args.labels and labels is not None and getattr(model, "num_classes", None)

    def solve(i, start):  # batch i: the points start..start+batch, probes seeded seed + i
        xb = torch.as_tensor(x1[start:start + batch], dtype=dtype, device=args.device)
        y = None
        if use_labels:
            y = torch.as_tensor(labels[start:start + batch], device=args.device)
        lp = log_likelihood(
            model, xb, method=args.method, steps=args.steps, rtol=args.rtol, atol=args.atol,
            divergence=args.divergence, probe=args.probe, n_probes=args.n_probes,
            seed=args.seed + i, y=y)
        return lp.double().cpu().numpy()

    log_p, seconds, partial = run_batches(args, n, batch, solve)
    result = summarise(args.data, log_p, true_log_density(args.data, x1.reshape(n, -1)),
                       log_det)
    finish_batches(args, result, seconds, partial)
    return 0
