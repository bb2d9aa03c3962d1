"""`fm-torch reflow`: teacher ODE pairs from a ckpt.pt, then a k-rectified (or distilled) student.

    fm-torch reflow --teacher runs/8g/ckpt.pt --pairs 20000 --out runs/8g-reflow [--distill]

Registered in fm_torch/cli.py; the options are fm_numpy.cli_fewstep's (one vocabulary).
"""

import os

from fm_numpy.cli_fewstep import _student_settings, add_reflow_arguments, check_pairs_fit

__all__ = ["add_reflow_parser"]


def add_reflow_parser(subparsers):
    p = subparsers.add_parser("reflow", help="teacher ODE pairs, then a k-rectified student")
    add_reflow_arguments(p, "ckpt.pt of the teacher (fm-torch train)", "rk4")
    p.add_argument("--device", help="cpu, cuda (default: cuda if available)")
    p.set_defaults(func=cmd_reflow)


def cmd_reflow(args):
    from fm_torch.reflow import reflow

    if args.pairs < 1 or args.solver_steps < 1:
        raise ValueError(f"--pairs and --solver-steps must be positive, got {args.pairs} and "
                         f"{args.solver_steps}")
    from fm_torch.io import load_checkpoint

    mnist = load_checkpoint(args.teacher).get("config", {}).get("data") == "mnist"
    check_pairs_fit(args.pairs, 4 * (784 if mnist else 2), args.out)  # float32 pairs
    _, losses = reflow(args.teacher, args.pairs, args.out, seed=args.seed, method=args.method,
                       solver_steps=args.solver_steps, guidance=args.guidance,
                       resume=args.resume, progress=not args.no_progress, device=args.device,
                       distill=args.distill, **_student_settings(args))
    if losses:
        print(f"student trained to step {losses[-1][0]}, last loss {losses[-1][1]:.4f}; wrote "
              f"{os.path.join(args.out, 'pairs.npz')} and {os.path.join(args.out, 'ckpt.pt')}")
    return 0
