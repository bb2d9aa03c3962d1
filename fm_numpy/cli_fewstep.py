"""`fm-numpy reflow` and the few-step training flags shared by both CLIs.

    fm-numpy train --data 8gaussians --coupling ot --out runs/8g-ot
    fm-numpy train --data 8gaussians --objective meanflow --out runs/8g-mf
    fm-numpy reflow --teacher runs/8g/model.npz --pairs 20000 --out runs/8g-reflow [--distill]

Registered in fm_numpy/cli.py through `add_reflow_parser`; the work is done by
fm_numpy/reflow.py (pairs, student) and fm_numpy/fewstep.py (the training hooks).
"""

import os

from fm_numpy.coupling import COUPLINGS
from fm_numpy.fewstep import OBJECTIVES

__all__ = ["add_fewstep_train_arguments", "fewstep_settings", "add_reflow_parser"]


def add_fewstep_train_arguments(p):
    """--coupling, --coupling-block, --objective, --meanflow-ratio (train, both CLIs)."""
    p.add_argument("--coupling", choices=COUPLINGS,
                   help="pairing of noise and data in a batch (default independent)")
    p.add_argument("--coupling-block", type=int,
                   help="solve the coupling in blocks of this many pairs (default: whole batch)")
    p.add_argument("--objective", choices=OBJECTIVES,
                   help="fm (velocity) or meanflow (average velocity, few-step; default fm)")
    p.add_argument("--meanflow-ratio", type=float,
                   help="MeanFlow: fraction of samples with r != t (default 0.25)")
    p.add_argument("--meanflow-norm-p", type=float,
                   help="MeanFlow: power p of the adaptive weight 1/(m + 1e-3)^p "
                        "(default 1; 0 = plain L2)")


def fewstep_settings(args):
    return dict(coupling=args.coupling, coupling_block=args.coupling_block,
                objective=args.objective, meanflow_ratio=args.meanflow_ratio,
                meanflow_norm_p=args.meanflow_norm_p)


def add_reflow_arguments(p, teacher_help, method_default):
    p.add_argument("--teacher", required=True, help=teacher_help)
    p.add_argument("--pairs", type=int, required=True, help="number of (x0, ODE(x0)) pairs")
    p.add_argument("--out", required=True, help="run folder: pairs.npz and the student")
    p.add_argument("--seed", type=int, default=0, help="seed of the pairs' noise and the student")
    p.add_argument("--method", default=method_default, help="teacher's ODE solver")
    p.add_argument("--solver-steps", type=int, default=20, help="teacher's solver steps")
    p.add_argument("--guidance", type=float, default=1.0, help="teacher's guidance (classes)")
    p.add_argument("--distill", action="store_true",
                   help="train a one-step student (t = 0 only) instead of a reflowed flow")
    p.add_argument("--steps", type=int, help="student's training steps")
    p.add_argument("--batch", type=int, help="student's batch size")
    p.add_argument("--lr", type=float, help="student's learning rate")
    p.add_argument("--hidden", type=int, help="student MLP width")
    p.add_argument("--depth", type=int, help="student MLP hidden layers")
    p.add_argument("--ckpt-every", type=int, help="checkpoint every N steps")
    p.add_argument("--resume", action="store_true", help="continue the student in --out")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def add_reflow_parser(subparsers):
    p = subparsers.add_parser("reflow", help="teacher ODE pairs, then a k-rectified student")
    add_reflow_arguments(p, "model.npz of the teacher (fm-numpy train)", "rk4")
    p.set_defaults(func=cmd_reflow)


def cmd_reflow(args):
    from fm_numpy.models import load_model
    from fm_numpy.reflow import reflow

    if args.pairs < 1 or args.solver_steps < 1:
        raise ValueError(f"--pairs and --solver-steps must be positive, got {args.pairs} and "
                         f"{args.solver_steps}")
    teacher = load_model(args.teacher)
    check_pairs_fit(args.pairs, teacher.dim * teacher.dtype.itemsize, args.out)
    _, losses = reflow(args.teacher, args.pairs, args.out, seed=args.seed, method=args.method,
                       solver_steps=args.solver_steps, guidance=args.guidance, resume=args.resume,
                       progress=not args.no_progress, distill=args.distill,
                       **_student_settings(args))
    if losses:
        print(f"student trained to step {losses[-1][0]}, last loss {losses[-1][1]:.4f}; wrote "
              f"{os.path.join(args.out, 'pairs.npz')} and {os.path.join(args.out, 'model.npz')}")
    return 0


def check_pairs_fit(pairs, sample_bytes, out):
    """One line (ValueError) when `pairs` (x0, x1) pairs of sample_bytes each, with a label,
    cannot fit: pairs.npz on disk (unless it exists: a resume reuses it) and in memory twice
    (the pairs are made whole, then the student's training loads the file)."""
    from fm_numpy.io import check_disk, check_memory

    nbytes = pairs * (2 * sample_bytes + 8)  # x0, x1 and an int64 label per pair
    path = os.path.join(out, "pairs.npz")
    if not os.path.exists(path):
        check_disk(path, nbytes, f"--pairs {pairs} ({path})")
    check_memory(2 * nbytes, f"--pairs {pairs}")


def _student_settings(args):
    return {"steps": args.steps, "batch": args.batch, "lr": args.lr, "hidden": args.hidden,
            "depth": args.depth, "ckpt_every": args.ckpt_every}
