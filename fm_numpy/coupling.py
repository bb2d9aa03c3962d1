"""Pairings of (x0, x1) in a batch: independent, ot, ot-class, sinkhorn (NumPy + SciPy).

A coupling keeps the data x1 (and labels y) in place and reorders the noise: it returns
`perm` (B,) so that the training pairs are (x0[perm[j]], x1[j]). Cost of a pair: the
squared Euclidean distance of the flattened samples,

    C_ij = |x0_i - x1_j|^2 = |x0_i|^2 + |x1_j|^2 - 2 x0_i . x1_j.

- independent: perm = identity (the batch is already an independent draw).
- ot: the exact minibatch assignment, perm = argmin over permutations of sum_j C_{perm_j, j}
  (scipy.optimize.linear_sum_assignment): every x0 and every x1 used exactly once.
  With `block` the batch is cut into consecutive blocks of at most `block` pairs and each
  is matched on its own (the batch is an i.i.d. draw, so blocks are i.i.d. minibatches):
  the assignment costs O(block^2 B) instead of O(B^3).
- ot-class: the assignment inside each class (y equal), so no pair crosses classes
  (Cheng & Schwing 2025, "C2OT"); y=None falls back to ot.
- sinkhorn: entropic OT with uniform marginals 1/B, log-domain (`sinkhorn_plan`), then one
  x0 per x1 drawn from the plan's column conditional P[:, j] / sum_i P[i, j]
  (`draw_from_plan`). Every x1 is used exactly once; an x0 may be drawn by several
  columns. torchcfm instead draws B index pairs (i, j) from the joint plan with
  replacement, so both data and noise repeat (about 63% distinct pairs at small eps);
  here the data are never repeated or dropped, which keeps the x1 marginal of a batch
  exact, and as eps -> 0 the column conditionals become the OT permutation's one-hots.

The training loop (fm_numpy/loop.py) takes a coupling object: `coupling(x0, x1, y, draws)
-> perm` (B,), with draws a fm_numpy.draws.Draws; Sinkhorn asks it for
`draws.uniform("couple_u", (B,), float64)`, the uniforms `couple` draws from a Generator.
"""

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.special import logsumexp

__all__ = ["COUPLINGS", "pair_cost", "assignment", "ot_class_assignment", "sinkhorn_plan",
           "draw_from_plan", "sinkhorn_coupling", "couple", "Independent", "OT", "OTClass",
           "Sinkhorn", "make_coupling"]

COUPLINGS = ("independent", "ot", "ot-class", "sinkhorn")
_CHECK_EVERY = 10  # Sinkhorn rounds between convergence checks


def pair_cost(x0, x1):
    """C (B0, B1) with C_ij = |x0_i - x1_j|^2 over the flattened samples, clipped at 0."""
    a = np.asarray(x0, dtype=np.float64).reshape(len(x0), -1)  # (B0, D)
    b = np.asarray(x1, dtype=np.float64).reshape(len(x1), -1)  # (B1, D)
    C = np.sum(a * a, axis=1)[:, None] + np.sum(b * b, axis=1)[None, :] - 2 * (a @ b.T)
    return np.maximum(C, 0.0)  # (B0, B1); rounding can leave -1e-16 on equal points


def _assign(C):
    """perm (B,) with rows perm[j] matched to column j, minimising sum_j C[perm_j, j]."""
    rows, cols = linear_sum_assignment(C)
    perm = np.empty(C.shape[1], dtype=np.int64)
    perm[cols] = rows
    return perm


def assignment(x0, x1, block=None):
    """Exact OT permutation of the noise: pairs (x0[perm[j]], x1[j]); see the module doc."""
    B = len(x1)
    if len(x0) != B:
        raise ValueError(f"x0 and x1 must have the same batch size, got {len(x0)} and {B}")
    step = B if block is None else int(block)
    if step < 1:
        raise ValueError(f"block must be a positive integer, got {block}")
    perm = np.empty(B, dtype=np.int64)
    for j0 in range(0, B, step):
        j1 = min(B, j0 + step)
        perm[j0:j1] = j0 + _assign(pair_cost(x0[j0:j1], x1[j0:j1]))
    return perm


def ot_class_assignment(x0, x1, y, block=None):
    """The OT permutation inside each class: y[j] == y[j'] for every matched pair's x1 slots.

    The noise slots of a class are the positions its data occupy, so the noise x0 is
    reassigned only among the samples that carry the same label.
    """
    if y is None:
        return assignment(x0, x1, block)
    y = np.asarray(y)
    if y.shape != (len(x1),):
        raise ValueError(f"y must have shape ({len(x1)},), got {y.shape}")
    perm = np.empty(len(x1), dtype=np.int64)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)  # (n_c,) positions of class c
        perm[idx] = idx[assignment(x0[idx], x1[idx], block)]
    return perm


def sinkhorn_plan(C, eps=0.05, iters=200, tol=1e-4):
    """The entropic OT plan P (B0, B1) for cost C with uniform marginals a = 1/B0, b = 1/B1.

    min_P <P, C> - e H(P) with e = eps * mean(C) (eps is relative to the cost scale).
    Log-domain Sinkhorn on the potentials f (B0,), g (B1,):
        f_i = e log a_i - e logsumexp_j ((g_j - C_ij) / e)
        g_j = e log b_j - e logsumexp_i ((f_i - C_ij) / e)
        P_ij = exp((f_i + g_j - C_ij) / e)
    After each g update the columns sum to b exactly; iteration stops when the row sums
    are within tol of a (L1, checked every 10 rounds), or after `iters` rounds. Returns (P, rounds).
    """
    C = np.asarray(C, dtype=np.float64)
    if C.ndim != 2 or C.size == 0:
        raise ValueError(f"C must be a non-empty 2-D cost matrix, got shape {C.shape}")
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps}")
    B0, B1 = C.shape
    e = eps * max(float(C.mean()), 1e-12)
    log_a, log_b = -np.log(B0), -np.log(B1)
    f, g = np.zeros(B0), np.zeros(B1)
    rounds = 0
    while rounds < int(iters):
        f = e * log_a - e * logsumexp((g[None, :] - C) / e, axis=1)  # (B0,)
        g = e * log_b - e * logsumexp((f[:, None] - C) / e, axis=0)  # (B1,)
        rounds += 1
        if rounds % _CHECK_EVERY == 0:  # the plan costs one exp of C: check now and then
            P = np.exp((f[:, None] + g[None, :] - C) / e)  # (B0, B1)
            if np.abs(P.sum(axis=1) - 1.0 / B0).sum() < tol:
                return P, rounds
    P = np.exp((f[:, None] + g[None, :] - C) / e)  # (B0, B1)
    return P, rounds


def draw_from_plan(P, u):
    """perm (B1,): for column j, the first row i with cumsum_i P[:, j] / sum P[:, j] > u_j.

    u (B1,) uniforms in [0, 1): inverse-CDF sampling of each column's conditional, so the
    draw is reproducible from u alone (both packages take the same u).
    """
    P = np.asarray(P, dtype=np.float64)
    cdf = np.cumsum(P, axis=0)  # (B0, B1)
    cdf /= cdf[-1:]  # column conditionals' CDFs, last row 1
    u = np.asarray(u, dtype=np.float64)
    perm = np.sum(cdf <= u[None, :], axis=0)  # (B1,) rows whose CDF is still <= u
    return np.minimum(perm, P.shape[0] - 1).astype(np.int64)


def sinkhorn_coupling(x0, x1, u, block=None, eps=0.05):
    """perm (B,) drawn from the Sinkhorn plan of each block (all of the batch by default)."""
    B = len(x1)
    step = B if block is None else int(block)
    perm = np.empty(B, dtype=np.int64)
    for j0 in range(0, B, step):
        j1 = min(B, j0 + step)
        P, _ = sinkhorn_plan(pair_cost(x0[j0:j1], x1[j0:j1]), eps)
        perm[j0:j1] = j0 + draw_from_plan(P, u[j0:j1])
    return perm


def couple(name, x0, x1, y=None, rng=None, block=None, eps=0.05):
    """perm (B,) of coupling `name` (one of COUPLINGS): train on (x0[perm], x1, y).

    rng (a numpy Generator) is used by sinkhorn only, for one uniform per x1.
    """
    if name == "independent":
        return np.arange(len(x1))
    if name == "ot":
        return assignment(x0, x1, block)
    if name == "ot-class":
        return ot_class_assignment(x0, x1, y, block)
    if name == "sinkhorn":
        return sinkhorn_coupling(x0, x1, rng.random(len(x1)), block, eps)
    raise ValueError(f"unknown coupling {name!r}; choose one of {', '.join(COUPLINGS)}")


class Independent:
    """perm = identity: the batch is already an independent draw."""

    name = "independent"

    def __call__(self, x0, x1, y, draws):
        return np.arange(len(x1))


class OT:
    """The exact minibatch OT permutation (blocks of at most `block` pairs)."""

    name = "ot"

    def __init__(self, block=None):
        self.block = block

    def __call__(self, x0, x1, y, draws):
        return assignment(x0, x1, self.block)


class OTClass(OT):
    """The OT permutation inside each class (falls back to OT without labels)."""

    name = "ot-class"

    def __call__(self, x0, x1, y, draws):
        return ot_class_assignment(x0, x1, y, self.block)


class Sinkhorn:
    """One x0 per x1 from the entropic plan; u_j = draws.uniform("couple_u", (B,), float64)."""

    name = "sinkhorn"

    def __init__(self, block=None, eps=0.05):
        self.block, self.eps = block, eps

    def __call__(self, x0, x1, y, draws):
        u = draws.uniform("couple_u", (len(x1),), np.float64)  # (B,)
        return sinkhorn_coupling(x0, x1, u, self.block, self.eps)


def make_coupling(name, block=None):
    """The coupling object of a name in COUPLINGS."""
    kinds = {"independent": lambda: Independent(), "ot": lambda: OT(block),
             "ot-class": lambda: OTClass(block), "sinkhorn": lambda: Sinkhorn(block)}
    if name not in kinds:
        raise ValueError(f"unknown coupling {name!r}; choose one of {', '.join(COUPLINGS)}")
    return kinds[name]()
