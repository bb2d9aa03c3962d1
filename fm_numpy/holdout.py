"""Judging samples of a run on the user's own data against its held-out split.

A distance alone means little on a user's data (what is a good energy distance for a
table of 7 features?), so every number comes with two references, all in model space
(vectors standardised per feature, images as pixels in [-1, 1]):
- `gaussian`: the same distance for samples of a Gaussian fitted to the training split
  (its mean and covariance): a model should beat it;
- `floor`: the distance of as many training rows to the held-out rows: the best a model
  can hope for at this sample size.
Distances: energy distance and sliced W1 (fm_numpy/metrics.py). For images also the
memorisation check of fm_numpy/nearest.py (each sample's distance to its nearest training
image against that of the held-out images).
"""

import numpy as np

from fm_numpy.metrics import energy_distance, sliced_wasserstein
from fm_numpy.nearest import memorisation

__all__ = ["gaussian_samples", "holdout_report", "format_report", "MAX_FIT_ROWS"]

MAX_FIT_ROWS = 10_000  # training rows read for the Gaussian and the floor (a seeded subset)


def _encode_rows(view, idx, scaling):
    """Model-space rows (n, D) of rows idx of a RowView, read in blocks."""
    out = [scaling.encode(view[idx[lo:lo + 2048]]) for lo in range(0, len(idx), 2048)]
    return np.concatenate(out).reshape(len(idx), -1)


def gaussian_samples(z_train, n, rng):
    """n draws of N(mean, cov) of the rows z_train (m, D), without a D x D matrix:
    x = mean + Xc^T g / sqrt(m - 1), g ~ N(0, I_m), has exactly the sample covariance."""
    z_train = np.asarray(z_train, dtype=np.float64)
    mean = z_train.mean(axis=0)  # (D,)
    centred = (z_train - mean) / np.sqrt(len(z_train) - 1)  # (m, D)
    g = rng.standard_normal((n, len(z_train)))  # (n, m)
    return mean + g @ centred  # (n, D)


def holdout_report(z_samples, data, seed=0, n_projections=128):
    """Distances of model-space samples (N, D) to the held-out rows of `data` (a
    fm_numpy.userdata.UserData), beside a fitted Gaussian's and the real-data floor."""
    if len(data.val_idx) < 2:
        raise ValueError("the run held out no data (--val-fraction 0): nothing to evaluate on")
    z_samples = np.asarray(z_samples, dtype=np.float64).reshape(len(z_samples), -1)  # (N, D)
    if len(z_samples) < 2:
        raise ValueError("evaluate needs at least 2 samples")
    rng = np.random.default_rng(seed)
    z_val = _encode_rows(data.val, np.arange(len(data.val_idx)), data.scaling)  # (M, D)
    m = min(len(data.train_idx), MAX_FIT_ROWS)
    pick = np.sort(rng.choice(len(data.train_idx), m, replace=False))
    z_fit = _encode_rows(data.train, pick, data.scaling)  # (m, D)
    z_gauss = gaussian_samples(z_fit, len(z_samples), rng)  # (N, D)
    z_floor = z_fit[rng.choice(m, min(m, len(z_samples)), replace=False)]  # real rows
    report = {"n_samples": len(z_samples), "n_heldout": len(z_val), "n_fit": m,
              "space": "standardised features" if data.rec.kind == "vectors"
              else "pixels in [-1, 1]"}
    for name, z in (("samples", z_samples), ("gaussian", z_gauss), ("floor", z_floor)):
        report[f"energy_distance_{name}"] = energy_distance(z, z_val)
        report[f"sliced_w1_{name}"] = sliced_wasserstein(z, z_val, n_projections,
                                                         np.random.default_rng(seed + 1))
    if data.rec.kind == "images":
        report.update(memorisation(z_samples, z_val, data.train,
                                   lambda rows: data.scaling.encode(rows).reshape(len(rows),
                                                                                 -1)))
    return report


def format_report(r):
    """One line: each distance beside the Gaussian's and the floor."""
    parts = [f"energy distance {r['energy_distance_samples']:.4g} (Gaussian "
             f"{r['energy_distance_gaussian']:.4g}, real-data floor "
             f"{r['energy_distance_floor']:.4g})",
             f"sliced W1 {r['sliced_w1_samples']:.4g} (Gaussian {r['sliced_w1_gaussian']:.4g}, "
             f"floor {r['sliced_w1_floor']:.4g})"]
    if "nn_ratio" in r:
        parts.append(f"nearest training image: samples {r['nn_train_median_samples']:.4g} vs "
                     f"held-out {r['nn_train_median_heldout']:.4g} (ratio {r['nn_ratio']:.3f}, "
                     f"copies {r['nn_copy_fraction']:.3f})")
    return f"n={r['n_samples']} vs {r['n_heldout']} held out, {r['space']}: " + "; ".join(parts)
