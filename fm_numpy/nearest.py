"""Nearest neighbours for the memorisation check: does a model copy its training images?

For each generated sample, the Euclidean distance to its nearest training image; for each
held-out image (never trained on), the same distance. A model that generalises puts its
samples about as far from the training set as unseen real images are; a model that
memorises puts them much closer (copies sit at distance ~0). Distances are computed block
by block (|a - b|^2 = |a|^2 + |b|^2 - 2 a.b), so no N x M matrix is held and the training
rows may be a memory-mapped view read in chunks.
"""

import numpy as np

__all__ = ["nearest_distances", "memorisation"]

_BLOCK = 2048  # reference rows per block


def nearest_distances(queries, reference, encode=None, block=_BLOCK):
    """(Q,) distance from each row of queries (Q, D) to its nearest row of reference (R, D).

    reference may be any array-like of rows (a memmap, a RowView); `encode` maps a block of
    its raw rows to the queries' space (e.g. a scaling's encode), flattened per row.
    """
    q = np.asarray(queries, dtype=np.float64).reshape(len(queries), -1)  # (Q, D)
    if len(q) == 0 or len(reference) == 0:
        raise ValueError("nearest distances need at least one query and one reference row")
    q_sq = np.sum(q * q, axis=1)  # (Q,)
    best = np.full(len(q), np.inf)  # (Q,) smallest squared distance so far
    for lo in range(0, len(reference), block):
        r = reference[lo:lo + block]
        r = encode(r) if encode is not None else r
        r = np.asarray(r, dtype=np.float64).reshape(len(r), -1)  # (b, D)
        if r.shape[1] != q.shape[1]:
            raise ValueError(f"queries have {q.shape[1]} values a row, the reference "
                             f"{r.shape[1]}")
        sq = q_sq[:, None] + np.sum(r * r, axis=1)[None, :] - 2 * q @ r.T  # (Q, b)
        np.minimum(best, sq.min(axis=1), out=best)
    return np.sqrt(np.maximum(best, 0))


def memorisation(samples, heldout, train, encode=None):
    """Nearest-training-image distances of samples against those of held-out images.

    Returns a dict: medians of both, their ratio (about 1: no sign of copying; well below
    1: samples sit closer to training images than unseen real ones do) and the fraction of
    samples nearer to the training set than the closest 1% of held-out images (copies).
    """
    d_samples = nearest_distances(samples, train, encode)  # (N,)
    d_heldout = nearest_distances(heldout, train, encode)  # (M,)
    threshold = float(np.quantile(d_heldout, 0.01))
    med_s, med_h = float(np.median(d_samples)), float(np.median(d_heldout))
    return {"nn_train_median_samples": med_s, "nn_train_median_heldout": med_h,
            "nn_ratio": med_s / med_h if med_h > 0 else float("inf"),
            "nn_copy_fraction": float(np.mean(d_samples < threshold)),
            "nn_copy_threshold": threshold}
