"""Couplings of (x0, x1): exact OT against brute force, classes, Sinkhorn's plan, both packages."""

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

import fm_numpy.coupling as npc
import fm_torch.coupling as thc


def _cost(x0, x1, perm):
    return float(np.sum((x0[perm] - x1) ** 2))


@pytest.mark.parametrize("seed", range(6))
def test_ot_is_the_brute_force_optimum(seed):
    rng = np.random.default_rng(seed)
    n = 6
    x0, x1 = rng.standard_normal((n, 3)), rng.standard_normal((n, 3)) + 1
    perm = npc.assignment(x0, x1)
    assert sorted(perm.tolist()) == list(range(n))  # a permutation
    best = min(_cost(x0, x1, np.array(p)) for p in itertools.permutations(range(n)))
    assert _cost(x0, x1, perm) == pytest.approx(best, rel=1e-12)
    assert _cost(x0, x1, perm) <= _cost(x0, x1, np.arange(n)) + 1e-12  # never worse than identity
    th = thc.assignment(torch.from_numpy(x0), torch.from_numpy(x1)).numpy()
    np.testing.assert_array_equal(th, perm)


def test_ot_blocks_are_permutations_within_each_block():
    rng = np.random.default_rng(1)
    x0, x1 = rng.standard_normal((50, 2)), rng.standard_normal((50, 2))
    perm = npc.assignment(x0, x1, block=16)
    for j0 in range(0, 50, 16):
        j1 = min(50, j0 + 16)
        assert sorted(perm[j0:j1].tolist()) == list(range(j0, j1))
        # each block is exactly the optimal assignment of that block alone (SciPy's solver
        # on the squared distances, x0 row i paired with x1 column j: perm[j] = i)
        cost = ((x0[j0:j1, None, :] - x1[None, j0:j1, :]) ** 2).sum(-1)  # (b, b)
        rows, cols = linear_sum_assignment(cost)
        np.testing.assert_array_equal(perm[j0:j1], j0 + rows[np.argsort(cols)])
    assert _cost(x0, x1, perm) <= _cost(x0, x1, np.arange(50))


def test_ot_class_never_crosses_classes():
    rng = np.random.default_rng(2)
    B = 64
    x0, x1 = rng.standard_normal((B, 5)), rng.standard_normal((B, 5))
    y = rng.integers(0, 4, B)
    perm = npc.ot_class_assignment(x0, x1, y)
    assert sorted(perm.tolist()) == list(range(B))
    np.testing.assert_array_equal(y[perm], y)  # x0's slot carries the same label as its x1
    assert _cost(x0, x1, perm) <= _cost(x0, x1, np.arange(B))
    th = thc.ot_class_assignment(torch.from_numpy(x0), torch.from_numpy(x1), torch.from_numpy(y))
    np.testing.assert_array_equal(th.numpy(), perm)


def test_sinkhorn_marginals_and_the_limit_eps_to_zero():
    rng = np.random.default_rng(3)
    n = 7  # points spread along a line: no near-ties, so the eps -> 0 limit shows early
    x0 = np.stack([np.arange(n) * 1.0, np.zeros(n)], 1) + 0.2 * rng.standard_normal((n, 2))
    x1 = x0[rng.permutation(n)] + 0.2 * rng.standard_normal((n, 2))
    C = npc.pair_cost(x0, x1)
    P, _ = npc.sinkhorn_plan(C, eps=0.3, iters=3000, tol=1e-12)
    np.testing.assert_allclose(P.sum(axis=0), 1 / n, atol=1e-12)  # column marginal exact
    np.testing.assert_allclose(P.sum(axis=1), 1 / n, atol=1e-11)
    exact = np.zeros((n, n))
    exact[npc.assignment(x0, x1), np.arange(n)] = 1 / n
    plans = [npc.sinkhorn_plan(C, eps, iters=3000, tol=1e-12)[0] for eps in (0.3, 0.1, 0.03, 0.003)]
    gaps = [np.abs(P - exact).sum() for P in plans]
    assert all(a > b for a, b in itertools.pairwise(gaps)), gaps
    assert gaps[-1] < 1e-3, gaps
    # at small eps the draw from the plan is the OT permutation
    np.testing.assert_array_equal(npc.draw_from_plan(plans[-1], rng.random(n)),
                                  npc.assignment(x0, x1))


def test_sinkhorn_agrees_between_packages():
    rng = np.random.default_rng(4)
    x0, x1 = rng.standard_normal((40, 3)), rng.standard_normal((40, 3))
    u = rng.random(40)
    C = npc.pair_cost(x0, x1)
    Ct = thc.pair_cost(torch.from_numpy(x0), torch.from_numpy(x1))
    np.testing.assert_allclose(Ct.numpy(), C, rtol=1e-12, atol=1e-12)
    P, k = npc.sinkhorn_plan(C, 0.05)
    Pt, kt = thc.sinkhorn_plan(Ct, 0.05)
    assert k == kt
    np.testing.assert_allclose(Pt.numpy(), P, rtol=1e-10, atol=1e-14)
    perm = npc.sinkhorn_coupling(x0, x1, u, block=16)
    th = thc.sinkhorn_coupling(torch.from_numpy(x0), torch.from_numpy(x1), torch.from_numpy(u),
                               block=16)
    np.testing.assert_array_equal(th.numpy(), perm)
    assert np.all((perm >= 0) & (perm < 40))


def test_independent_and_bad_names():
    x = np.zeros((5, 2))
    np.testing.assert_array_equal(npc.couple("independent", x, x), np.arange(5))
    with pytest.raises(ValueError, match="unknown coupling"):
        npc.couple("emd", x, x)
    with pytest.raises(ValueError, match="unknown coupling"):
        thc.couple("emd", torch.zeros(5, 2), torch.zeros(5, 2))
    with pytest.raises(ValueError, match="same batch size"):
        npc.assignment(np.zeros((4, 2)), x)
