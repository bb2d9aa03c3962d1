"""`fm-numpy check KIND MODULE:FUNCTION`: run one conformance check on a user's function.

    fm-numpy check path mycode:sample --scheduler cosine
    fm-numpy check solver mycode:odeint --method rk4
    fm-numpy check likelihood mycode:log_likelihood --divergence hutchinson
    fm-numpy check path mytorchcode:sample --torch          # a torch callable

MODULE is an importable module (the current folder is searched first) or a path to a
.py file. Prints the report as a table; exit status 0 when the check passes, 1 with
findings, 2 for a usage error (one line `fm-numpy: error: ...`). KIND-specific options:

    path               --scheduler NAME (default condot), --scheduler-arg KEY=VALUE (repeatable,
                       e.g. sigma_min=1e-4, n=3, beta_min=0.1)
    solver             --method NAME (default euler; euler, midpoint, heun, rk4, or adaptive
                       names such as RK45, dopri5), --order P and --nfe-per-step K for others,
                       --states last (a sampler returning only the end), --no-backward
    velocity           --data 8gaussians, --tol X (default 0.1)
    likelihood         --divergence exact|hutchinson
    guidance           (none)
    diffusion_to_flow  --prediction epsilon|v|x0
    training           --scheduler, --scheduler-arg, --objective fm|meanflow, --times
                       any|uniform|logit-normal, --num-classes K, --label-dropout P,
                       --ratio R (MeanFlow: fraction with r != t), --reduction mean|any
    time_sampling      --times, --ratio
    seeded             --deterministic (an ODE sampler: the generator need not matter)
    prediction         --predict x1|x0, --scheduler, --scheduler-arg
"""

import importlib
import importlib.util
import os
import sys

__all__ = ["add_check_parser", "cmd_check", "load_callable", "KIND_OPTIONS"]

KIND_OPTIONS = {
    "path": ("scheduler", "scheduler_arg"),
    "solver": ("method", "order", "nfe_per_step", "states", "backward"),
    "velocity": ("data", "tol"),
    "likelihood": ("divergence",),
    "guidance": (),
    "diffusion_to_flow": ("prediction",),
    "training": ("scheduler", "scheduler_arg", "objective", "times", "num_classes",
                 "label_dropout", "ratio", "reduction"),
    "time_sampling": ("times", "ratio"),
    "seeded": ("deterministic",),
    "prediction": ("predict", "scheduler", "scheduler_arg"),
}
ALL_OPTIONS = sorted({o for opts in KIND_OPTIONS.values() for o in opts})
DEST = {"backward": "backward", "deterministic": "stochastic"}  # option -> argparse dest


def add_check_parser(subparsers):
    p = subparsers.add_parser("check", help="check your own flow-matching function against the "
                              "reference (docs/conformance.md)")
    p.add_argument("kind", help=", ".join(KIND_OPTIONS))
    p.add_argument("target", metavar="MODULE:FUNCTION", help="the function to check")
    p.add_argument("--torch", action="store_true",
                   help="the function takes and returns torch tensors (fm_torch.conformance)")
    p.add_argument("--scheduler", help="path: condot, sigma_min_ot, cosine, linear_vp, vp, "
                   "polynomial")
    p.add_argument("--scheduler-arg", action="append", metavar="KEY=VALUE",
                   help="path: a scheduler argument, e.g. sigma_min=1e-4 (repeatable)")
    p.add_argument("--method", help="solver: euler, midpoint, heun, rk4, RK45, dopri5, ...")
    p.add_argument("--order", type=float, help="solver: order of a method the kit does not know")
    p.add_argument("--nfe-per-step", type=int, help="solver: its evaluations per step")
    p.add_argument("--states", choices=("all", "last"), help="solver: what the solver returns")
    p.add_argument("--no-backward", dest="backward", action="store_const", const=False,
                   help="solver: skip the decreasing grid")
    p.add_argument("--objective", choices=("fm", "meanflow"), help="training: the objective")
    p.add_argument("--times", choices=("any", "uniform", "logit-normal"),
                   help="training, time_sampling: the law of t")
    p.add_argument("--num-classes", type=int, help="training: pass labels 0..K-1")
    p.add_argument("--label-dropout", type=float, help="training: expected label dropout")
    p.add_argument("--ratio", type=float, help="training, time_sampling: MeanFlow's fraction "
                   "of pairs with r != t")
    p.add_argument("--reduction", choices=("mean", "any"), help="training: the loss reduction")
    p.add_argument("--deterministic", dest="stochastic", action="store_const", const=False,
                   help="seeded: an ODE sampler")
    p.add_argument("--predict", choices=("x1", "x0"), help="prediction: what convert returns")
    p.add_argument("--data", help="velocity: 8gaussians")
    p.add_argument("--tol", type=float, help="velocity: relative error allowed (default 0.1)")
    p.add_argument("--divergence", help="likelihood: exact or hutchinson")
    p.add_argument("--prediction", help="diffusion_to_flow: epsilon, v or x0")
    p.set_defaults(func=cmd_check)


def load_callable(target):
    """The object named by MODULE:FUNCTION (MODULE importable or a .py file); ValueError if not."""
    module_name, sep, attr = target.rpartition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"expected MODULE:FUNCTION, got {target!r}")
    try:
        if module_name.endswith(".py"):
            if not os.path.isfile(module_name):
                raise ValueError(f"no such file {module_name!r}")
            spec = importlib.util.spec_from_file_location("_fm_check_target", module_name)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            if os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())
            module = importlib.import_module(module_name)
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 -- whatever the user's module raises on import
        raise ValueError(f"cannot import {module_name!r}: {type(e).__name__}: {e}") from e
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{target!r} is not callable")
    return obj


def _parse_value(text):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _kwargs(args):
    if args.kind not in KIND_OPTIONS:
        raise ValueError(f"unknown check {args.kind!r}; choose one of {', '.join(KIND_OPTIONS)}")
    for name in ALL_OPTIONS:
        if getattr(args, DEST.get(name, name)) is not None and name not in KIND_OPTIONS[args.kind]:
            flag = "--" + {"backward": "no-backward"}.get(name, name).replace("_", "-")
            raise ValueError(f"{flag} does not apply to `check {args.kind}`")
    kwargs = {}
    if args.kind in ("path", "training", "prediction"):
        kwargs["scheduler"] = args.scheduler or "condot"
        for item in args.scheduler_arg or ():
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ValueError(f"--scheduler-arg expects KEY=VALUE, got {item!r}")
            kwargs[key] = _parse_value(value)
    elif args.kind == "solver":
        kwargs["method"] = args.method or "euler"
        if args.order is not None:
            kwargs["order"] = args.order
        if args.nfe_per_step is not None:
            kwargs["nfe_per_step"] = args.nfe_per_step
        kwargs["states"] = args.states or "all"
        if args.backward is not None:
            kwargs["backward"] = False
    elif args.kind == "velocity":
        kwargs.update(data=args.data or "8gaussians", tol=0.1 if args.tol is None else args.tol)
    elif args.kind == "likelihood":
        kwargs["divergence"] = args.divergence or "exact"
    elif args.kind == "diffusion_to_flow":
        kwargs["prediction"] = args.prediction or "epsilon"
    if args.kind in ("training", "time_sampling"):
        kwargs["law" if args.kind == "time_sampling" else "times"] = args.times or "any"
        if args.ratio is not None:
            kwargs["ratio"] = args.ratio
    if args.kind == "training":
        kwargs["objective"] = args.objective or "fm"
        kwargs["reduction"] = args.reduction or "mean"
        for name in ("num_classes", "label_dropout"):
            if getattr(args, name) is not None:
                kwargs[name] = getattr(args, name)
    elif args.kind == "seeded" and args.stochastic is not None:
        kwargs["stochastic"] = False
    elif args.kind == "prediction":
        kwargs["target"] = args.predict or "x1"
    return kwargs


def cmd_check(args):
    from . import CHECKS

    kwargs = _kwargs(args)
    fn = load_callable(args.target)
    if args.torch:
        from fm_torch import conformance as torch_conformance

        fn = torch_conformance.WRAPPERS[args.kind](fn)
    try:
        report = CHECKS[args.kind](fn, **kwargs)
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 -- a wrong scheduler argument, a result of the wrong type
        raise ValueError(f"check {args.kind} could not run {args.target}: "
                         f"{type(e).__name__}: {e}") from e
    report.subject = f"{args.target}" + "".join(f" {k}={v}" for k, v in kwargs.items())
    print(report.table())
    return 0 if report.passed else 1
