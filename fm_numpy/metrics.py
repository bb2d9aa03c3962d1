"""Sample-quality distances between two point clouds a (N, D) and b (M, D).

Both work in blocks of rows so that no N x M matrix is ever held at once (N ~ 10k is fine).
"""

import numpy as np
from scipy.spatial.distance import cdist

__all__ = ["energy_distance", "sliced_wasserstein"]

_BLOCK = 1024  # rows per block of pairwise distances


def _check_pair(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must be (N, D) and (M, D) arrays, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"a and b need at least 2 points each, got {len(a)} and {len(b)}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("a and b must be finite")
    return a, b


def _mean_pairwise_distance(a, b, exclude_diagonal=False):
    """Mean of |a_i - b_j| over all pairs (over i != j when exclude_diagonal, a is b).

    scipy.spatial.distance.cdist, one block of rows at a time: it forms each difference
    a_i - b_j before squaring it, so close points far from the origin keep their digits
    (the expansion |a_i|^2 + |b_j|^2 - 2 a_i . b_j cancels them: at |a| ~ 1e4 a distance of
    1e-3 came out 0 or as rounding noise), and the diagonal of a with itself is exactly 0.
    """
    total = 0.0
    for i0 in range(0, len(a), _BLOCK):
        total += cdist(a[i0:i0 + _BLOCK], b).sum()  # (n, M) distances, summed
    pairs = len(a) * (len(b) - 1) if exclude_diagonal else len(a) * len(b)
    return total / pairs


def energy_distance(a, b, unbiased=False):
    """Energy distance 2 E|X - Y| - E|X - X'| - E|Y - Y'| (Szekely & Rizzo), X ~ a, Y ~ b.

    unbiased=False (default) is the V-statistic: the within-set means run over all N^2
    pairs, the zero diagonal included, so it is >= 0 and for two samples of one
    distribution its expectation is about E|X - X'| (1/N + 1/M). unbiased=True uses the
    U-statistic (i != j), whose expectation is exactly the population value (0 for equal
    distributions) and which can come out slightly negative.
    """
    a, b = _check_pair(a, b)
    cross = _mean_pairwise_distance(a, b)
    within_a = _mean_pairwise_distance(a, a, exclude_diagonal=unbiased)
    within_b = _mean_pairwise_distance(b, b, exclude_diagonal=unbiased)
    return float(2 * cross - within_a - within_b)


def _wasserstein_1d(u, v):
    """W1 between the empirical measures of the columns of u (N, P) and v (M, P): (P,).

    W1 = integral |F_u(z) - F_v(z)| dz over the merged sorted support.
    """
    u, v = np.sort(u, axis=0), np.sort(v, axis=0)
    if len(u) == len(v):
        return np.mean(np.abs(u - v), axis=0)
    z = np.sort(np.concatenate([u, v], axis=0), axis=0)  # (N + M, P)
    dz = np.diff(z, axis=0)  # (N + M - 1, P)
    out = np.empty(u.shape[1])
    for p in range(u.shape[1]):
        cdf_u = np.searchsorted(u[:, p], z[:-1, p], side="right") / len(u)
        cdf_v = np.searchsorted(v[:, p], z[:-1, p], side="right") / len(v)
        out[p] = np.sum(np.abs(cdf_u - cdf_v) * dz[:, p])
    return out


def sliced_wasserstein(a, b, n_projections=128, rng=None):
    """Sliced W1: the mean over random unit directions theta of W1(a theta, b theta).

    Directions are drawn uniformly on the sphere from rng (a Generator or a seed); the
    projections are processed a block of directions at a time.
    """
    a, b = _check_pair(a, b)
    if int(n_projections) < 1:
        raise ValueError(f"n_projections must be >= 1, got {n_projections}")
    rng = np.random.default_rng(rng)
    theta = rng.standard_normal((a.shape[1], int(n_projections)))  # (D, P)
    theta /= np.linalg.norm(theta, axis=0, keepdims=True)
    per_block = max(1, (1 << 22) // (len(a) + len(b)))
    w = [_wasserstein_1d(a @ theta[:, p0:p0 + per_block], b @ theta[:, p0:p0 + per_block])
         for p0 in range(0, theta.shape[1], per_block)]
    return float(np.mean(np.concatenate(w)))


# Appended by H6 (evaluation): the noise floor every distance above should be read against.
__all__ += ["noise_floor"]


def noise_floor(metric, sample, n, repeats=5, rng=None):
    """The metric between two fresh data sets of the same size: what a perfect model scores.

    Draws `repeats` independent pairs a, b = sample(n, rng), sample(n, rng) (sample is a
    callable (n, rng) -> (n, D) array, e.g. lambda n, r: fm_numpy.data.sample_toy("moons",
    n, r)) and returns (mean, std) of metric(a, b) over the pairs. A generated set of n
    points is indistinguishable from the data, at that n, when its score lies within this.
    """
    if int(n) < 2 or int(repeats) < 1:
        raise ValueError(f"need n >= 2 and repeats >= 1, got n={n}, repeats={repeats}")
    rng = np.random.default_rng(rng)
    values = np.array([metric(sample(int(n), rng), sample(int(n), rng))
                       for _ in range(int(repeats))])
    return float(values.mean()), float(values.std(ddof=1) if len(values) > 1 else 0.0)
