"""Reflow in PyTorch (the twin of fm_numpy/reflow.py): teacher pairs, then the student.

Pairs: x0 = torch.randn((n, *shape), generator=Generator().manual_seed(seed)) (float32),
x1 = the teacher's ODE solution from t = 0 to 1 (fm_torch.solvers.odeint, fixed grid of
`steps` intervals, EMA weights, classifier-free guidance w for class models with labels
y = i mod 10), stored with fm_numpy.reflow.save_pairs (atomic .npz, the same format).
The student is fm_torch.train.train with pairs=..., [distill=True]: see fm_numpy/reflow.py.
"""

import os

import torch

from fm_numpy.reflow import load_pairs, pairs_meta, save_pairs, student_settings
from fm_torch.sampling import sample

__all__ = ["pair_tensors", "generate_pairs", "reflow"]

_CHUNK = 1024  # trajectories solved at once


def pair_tensors(path):
    """(x0, x1, y or None) tensors of a pairs .npz (float32, labels int64)."""
    x0, x1, y, _ = load_pairs(path)
    to = torch.from_numpy
    return (to(x0).float(), to(x1).float(), None if y is None else to(y).long())


@torch.no_grad()
def generate_pairs(model, shape, n, seed=0, method="rk4", steps=20, guidance=1.0,
                   num_classes=None, device="cpu"):
    """(x0, x1, y) tensors on the CPU; x0 seeded, x1 = ODE(x0) under the teacher."""
    if int(n) < 1 or int(steps) < 1:
        raise ValueError(f"pairs and steps must be positive, got {n} and {steps}")
    g = torch.Generator().manual_seed(int(seed))
    x0 = torch.randn((int(n), *shape), generator=g)  # (n, ...)
    y = None if not num_classes else torch.arange(int(n)) % num_classes
    x1 = torch.empty_like(x0)
    for i0 in range(0, len(x0), _CHUNK):
        i1 = min(len(x0), i0 + _CHUNK)
        yc = None if y is None else y[i0:i1].to(device)
        xs = sample(model, x0[i0:i1].to(device), yc, guidance, method, steps)
        x1[i0:i1] = xs[-1].cpu()
    return x0, x1, y


def reflow(teacher, pairs, out, seed=0, method="rk4", solver_steps=20, guidance=1.0,
           resume=False, progress=True, device=None, **settings):
    """Make (or reuse) out/pairs.npz from the teacher ckpt.pt, then train the student."""
    from fm_torch.train import load_model, train

    out = os.fspath(out)
    pairs_path = os.path.join(out, "pairs.npz")
    meta = pairs_meta(teacher, pairs, seed, method, solver_steps, guidance)
    dev = torch.device(device or "cpu")
    model, checkpoint = load_model(teacher, ema=True, map_location=dev)
    data = checkpoint["config"]["data"]
    classes = 10 if data == "mnist" else None
    if os.path.exists(pairs_path):
        old = load_pairs(pairs_path)[3]
        if {k: old.get(k) for k in meta} != meta:
            raise ValueError(f"{pairs_path} was made with {old}, not {meta}; "
                             f"choose another --out")
    else:
        shape = (1, 28, 28) if data == "mnist" else (2,)
        x0, x1, y = generate_pairs(model.to(dev), shape, pairs, seed, method, solver_steps,
                                   guidance, classes, dev)
        save_pairs(pairs_path, x0.numpy(), x1.numpy(), None if y is None else y.numpy(),
                   dict(meta, num_classes=classes))
    settings = student_settings(checkpoint["config"], settings)  # the teacher's network shape
    settings.pop("data", None)
    return train(out, resume=resume, progress=progress, device=device, pairs=pairs_path,
                 data=data, seed=seed, **settings)
