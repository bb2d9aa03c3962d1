"""Reflow (Liu, Gong & Liu 2022, rectified flow): teacher pairs and the k-rectified student.

1. Pairs: seeded noise x0 ~ N(0, I) (numpy Generator(seed), one (N, D) draw), the teacher's
   ODE dx/dt = v_teacher(x, t) solved from t = 0 to 1 on a uniform grid (fixed-step solver
   chosen by method/steps) gives x1 = ODE(x0); (x0, x1 [, y]) go to pairs.npz, atomically.
   Class teachers get labels y = i mod C (optionally guided).
2. Student: the ordinary training loop with the pairs in place of data and noise: each step
   draws indices i and trains on (x0_i, x1_i) (k-rectified flow: the student of a
   (k-1)-rectified teacher), so the straight interpolation between coupled points is
   regressed and the student's paths are straighter than the teacher's.
3. distill=True: the student is trained only at t = 0, where xt = x0 and the target is
   x1 - x0, so one Euler step x0 + v(x0, 0) lands on the teacher's x1 (rectified flow's
   one-step distillation with the L2 loss: the same pairs, t fixed at 0).
The student starts from fresh weights (seeded like any run), not from the teacher's.
"""

import json
import os

import numpy as np

from fm_numpy.data import PairSource, load_pairs, save_pairs

__all__ = ["PairSource", "generate_pairs", "save_pairs", "load_pairs", "pairs_meta",
           "ARCH_KEYS", "student_settings", "reflow"]

_CHUNK = 4096  # trajectories solved at once (the solver keeps every grid state)


def pairs_meta(teacher, n, seed, method, steps, guidance=1.0):
    return {"teacher": os.path.abspath(os.fspath(teacher)), "n": int(n), "seed": int(seed),
            "method": method, "steps": int(steps), "guidance": float(guidance)}


def generate_pairs(model, n, seed=0, method="rk4", steps=20, guidance=1.0):
    """(x0, x1, y): x0 = Generator(seed).standard_normal((n, D)), x1 = the ODE solution."""
    from fm_numpy.solvers import ClassifierFreeGuidance, odeint

    if int(n) < 1 or int(steps) < 1:
        raise ValueError(f"pairs and steps must be positive, got {n} and {steps}")
    x0 = np.random.default_rng(seed).standard_normal((int(n), model.dim)).astype(model.dtype)
    y = None if not model.num_classes else np.arange(int(n)) % model.num_classes
    t_grid = np.linspace(0.0, 1.0, int(steps) + 1)
    x1 = np.empty_like(x0)
    for i0 in range(0, len(x0), _CHUNK):
        i1 = min(len(x0), i0 + _CHUNK)
        field = model
        if y is not None:
            field = ClassifierFreeGuidance(model, y[i0:i1], guidance)
        x1[i0:i1] = odeint(field, x0[i0:i1], t_grid, method=method)[-1]  # (n_chunk, D)
    return x0, x1, y


# the network's shape: a student takes its teacher's unless told otherwise (k-rectified
# flow retrains the same network on the teacher's pairs)
ARCH_KEYS = ("arch", "hidden", "depth", "time_features", "time_scale", "base", "mults",
             "res_blocks")


def student_settings(teacher_config, settings):
    """settings, with every ARCH_KEYS entry that is missing or None taken from the teacher's
    training config (a key the teacher's config lacks stays the student's default)."""
    merged = {k: v for k, v in settings.items() if v is not None}
    for key in ARCH_KEYS:
        if key not in merged and teacher_config.get(key) is not None:
            merged[key] = teacher_config[key]
    return merged


def reflow(teacher, pairs, out, seed=0, method="rk4", solver_steps=20, guidance=1.0, resume=False,
           progress=True, **settings):
    """Make (or reuse) out/pairs.npz from the teacher model.npz, then train the student.

    `settings` go to fm_numpy.train.train (its steps are training steps). An existing
    pairs.npz is reused only when made with the same teacher, n, seed, method and steps
    (regenerating would give the same bits; reuse saves the solve on --resume).
    Returns (model, losses) of the student.
    """
    from fm_numpy.models import load_model
    from fm_numpy.train import train

    out = os.fspath(out)
    pairs_path = os.path.join(out, "pairs.npz")
    meta = pairs_meta(teacher, pairs, seed, method, solver_steps, guidance)
    model = load_model(teacher)  # the MLP or the ResMLP its file describes
    if os.path.exists(pairs_path):
        old = load_pairs(pairs_path)[3]
        if {k: old.get(k) for k in meta} != meta:
            raise ValueError(f"{pairs_path} was made with {old}, not {meta}; "
                             f"choose another --out")
    else:
        x0, x1, y = generate_pairs(model, pairs, seed, method, solver_steps, guidance)
        save_pairs(pairs_path, x0, x1, y, dict(meta, num_classes=model.num_classes))
    run = os.path.join(os.path.dirname(os.path.abspath(teacher)), "config.json")
    teacher_config = {}
    if os.path.exists(run):
        with open(run) as f:
            teacher_config = json.load(f)
    settings = student_settings(teacher_config, settings)
    data = settings.pop("data", None) or teacher_config.get("data")
    return train(out, resume=resume, progress=progress, pairs=pairs_path,
                 data=data or ("mnist" if model.dim == 784 else "8gaussians"),
                 seed=settings.pop("train_seed", seed), **settings)
