"""Pairings of (x0, x1) in a batch, PyTorch twin of fm_numpy/coupling.py (same names, same math).

perm (B,) reorders the noise: the training pairs are (x0[perm[j]], x1[j]). The cost
C_ij = |x0_i - x1_j|^2 and the Sinkhorn iterations run in torch (on x's device); the exact
assignment is SciPy's linear_sum_assignment on the cost moved to the CPU (fm_numpy's
`_assign`, one implementation of the Hungarian step for both packages).

The training loop (fm_torch/loop.py) takes a coupling object (fm_numpy.coupling's names):
`coupling(x0, x1, y, draws) -> perm` (B,), with draws a fm_torch.draws.Draws; Sinkhorn asks
it for `draws.uniform("couple_u", (B,), float64)`, the uniforms `couple` draws from a
generator.
"""

import math

import torch

from fm_numpy.coupling import _CHECK_EVERY, COUPLINGS
from fm_numpy.coupling import _assign as _numpy_assign

__all__ = ["COUPLINGS", "pair_cost", "assignment", "ot_class_assignment", "sinkhorn_plan",
           "draw_from_plan", "sinkhorn_coupling", "couple", "Independent", "OT", "OTClass",
           "Sinkhorn", "make_coupling"]


def pair_cost(x0, x1):
    """C (B0, B1) with C_ij = |x0_i - x1_j|^2 over the flattened samples, clipped at 0."""
    a = x0.reshape(len(x0), -1).to(torch.float64)  # (B0, D)
    b = x1.reshape(len(x1), -1).to(torch.float64)  # (B1, D)
    C = torch.sum(a * a, dim=1)[:, None] + torch.sum(b * b, dim=1)[None, :] - 2 * (a @ b.T)
    return torch.clamp(C, min=0.0)  # (B0, B1)


def _assign(C):
    return torch.from_numpy(_numpy_assign(C.detach().cpu().numpy())).to(C.device)


def assignment(x0, x1, block=None):
    """Exact OT permutation of the noise: pairs (x0[perm[j]], x1[j])."""
    B = len(x1)
    if len(x0) != B:
        raise ValueError(f"x0 and x1 must have the same batch size, got {len(x0)} and {B}")
    step = B if block is None else int(block)
    if step < 1:
        raise ValueError(f"block must be a positive integer, got {block}")
    perm = torch.empty(B, dtype=torch.long, device=x1.device)
    for j0 in range(0, B, step):
        j1 = min(B, j0 + step)
        perm[j0:j1] = j0 + _assign(pair_cost(x0[j0:j1], x1[j0:j1]))
    return perm


def ot_class_assignment(x0, x1, y, block=None):
    """The OT permutation inside each class: no pair crosses labels."""
    if y is None:
        return assignment(x0, x1, block)
    if tuple(y.shape) != (len(x1),):
        raise ValueError(f"y must have shape ({len(x1)},), got {tuple(y.shape)}")
    perm = torch.empty(len(x1), dtype=torch.long, device=x1.device)
    for c in torch.unique(y):
        idx = torch.nonzero(y == c).flatten()  # (n_c,) positions of class c
        perm[idx] = idx[assignment(x0[idx], x1[idx], block)]
    return perm


def sinkhorn_plan(C, eps=0.05, iters=200, tol=1e-4):
    """Entropic OT plan (log-domain Sinkhorn, uniform marginals); see fm_numpy.coupling."""
    if C.ndim != 2 or C.numel() == 0:
        raise ValueError(f"C must be a non-empty 2-D cost matrix, got shape {tuple(C.shape)}")
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps}")
    B0, B1 = C.shape
    e = eps * max(float(C.mean()), 1e-12)
    log_a, log_b = -math.log(B0), -math.log(B1)
    f = torch.zeros(B0, dtype=C.dtype, device=C.device)
    g = torch.zeros(B1, dtype=C.dtype, device=C.device)
    rounds = 0
    while rounds < int(iters):
        f = e * log_a - e * torch.logsumexp((g[None, :] - C) / e, dim=1)  # (B0,)
        g = e * log_b - e * torch.logsumexp((f[:, None] - C) / e, dim=0)  # (B1,)
        rounds += 1
        if rounds % _CHECK_EVERY == 0:
            P = torch.exp((f[:, None] + g[None, :] - C) / e)  # (B0, B1)
            if float(torch.abs(P.sum(dim=1) - 1.0 / B0).sum()) < tol:
                return P, rounds
    P = torch.exp((f[:, None] + g[None, :] - C) / e)  # (B0, B1)
    return P, rounds


def draw_from_plan(P, u):
    """perm (B1,): inverse-CDF draw of one row per column of P, given uniforms u (B1,)."""
    P = P.to(torch.float64)
    cdf = torch.cumsum(P, dim=0)  # (B0, B1)
    cdf = cdf / cdf[-1:]
    u = torch.as_tensor(u, dtype=torch.float64, device=P.device)
    perm = torch.sum(cdf <= u[None, :], dim=0)  # (B1,)
    return torch.clamp(perm, max=P.shape[0] - 1).long()


def sinkhorn_coupling(x0, x1, u, block=None, eps=0.05):
    """perm (B,) drawn from the Sinkhorn plan of each block (all of the batch by default)."""
    B = len(x1)
    step = B if block is None else int(block)
    perm = torch.empty(B, dtype=torch.long, device=x1.device)
    for j0 in range(0, B, step):
        j1 = min(B, j0 + step)
        P, _ = sinkhorn_plan(pair_cost(x0[j0:j1], x1[j0:j1]), eps)
        perm[j0:j1] = j0 + draw_from_plan(P, u[j0:j1])
    return perm


def couple(name, x0, x1, y=None, generator=None, block=None, eps=0.05):
    """perm (B,) of coupling `name`: train on (x0[perm], x1, y). generator: sinkhorn's uniforms."""
    if name == "independent":
        return torch.arange(len(x1), device=x1.device)
    if name == "ot":
        return assignment(x0, x1, block)
    if name == "ot-class":
        return ot_class_assignment(x0, x1, y, block)
    if name == "sinkhorn":
        u = torch.rand(len(x1), generator=generator, dtype=torch.float64)
        return sinkhorn_coupling(x0, x1, u.to(x1.device), block, eps)
    raise ValueError(f"unknown coupling {name!r}; choose one of {', '.join(COUPLINGS)}")


class Independent:
    """perm = identity: the batch is already an independent draw."""

    name = "independent"

    def __call__(self, x0, x1, y, draws):
        return torch.arange(len(x1), device=x1.device)


class OT:
    """The exact minibatch OT permutation (blocks of at most `block` pairs)."""

    name = "ot"

    def __init__(self, block=None):
        self.block = block

    def __call__(self, x0, x1, y, draws):
        return assignment(x0, x1, self.block)


class OTClass(OT):
    """The OT permutation inside each class (OT without labels)."""

    name = "ot-class"

    def __call__(self, x0, x1, y, draws):
        return ot_class_assignment(x0, x1, y, self.block)


class Sinkhorn:
    """One x0 per x1 from the entropic plan; u_j = draws.uniform("couple_u", (B,), float64)."""

    name = "sinkhorn"

    def __init__(self, block=None, eps=0.05):
        self.block, self.eps = block, eps

    def __call__(self, x0, x1, y, draws):
        u = draws.uniform("couple_u", (len(x1),), torch.float64)  # (B,)
        return sinkhorn_coupling(x0, x1, u.to(x1.device), self.block, self.eps)


def make_coupling(name, block=None):
    """The coupling object of a name in COUPLINGS."""
    kinds = {"independent": lambda: Independent(), "ot": lambda: OT(block),
             "ot-class": lambda: OTClass(block), "sinkhorn": lambda: Sinkhorn(block)}
    if name not in kinds:
        raise ValueError(f"unknown coupling {name!r}; choose one of {', '.join(COUPLINGS)}")
    return kinds[name]()
