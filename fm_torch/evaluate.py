"""Sample-quality metrics for MNIST: a judge classifier, Frechet distance, class accuracy.

The judge is a small CNN the project trains itself on the MNIST training split (no
weights are downloaded). It is cached in $FM_DUAL_CACHE (default ~/.cache/fm-dual)
together with its measured test accuracy, saved atomically and read back with
torch.load(weights_only=True).

Frechet distance (FD) between two sets of judge features (the penultimate layer, 128
numbers per image), each summarised by a Gaussian N(mu, C):

    FD = |mu_1 - mu_2|^2 + tr(C_1) + tr(C_2) - 2 tr((C_1^{1/2} C_2 C_1^{1/2})^{1/2}),

(Heusel et al. 2017's FID with a project-trained MNIST judge in place of Inception, so
its values are not comparable with published FIDs.) The matrix square roots are taken by
symmetric eigendecompositions (negative round-off eigenvalues clipped to zero) and the
cross term from singular values, which keeps FD real, >= 0 up to round-off,
FD(a, a) = 0 and FD(a, b) = FD(b, a) even for singular covariances.
Beside every FD of generated samples the "floor" is reported: the FD between an equal
number of real training images and the real test images, which is what a perfect
generator would score at that sample size.
"""

import math
import os
import sys
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fm_numpy.io import atomic_path, save_json

__all__ = [
    "MnistClassifier",
    "train_classifier",
    "classifier_accuracy",
    "load_or_train_classifier",
    "classifier_cache_path",
    "features",
    "gaussian_stats",
    "frechet_distance",
    "frechet_distance_from_features",
    "mnist_metrics",
    "DEFAULT_CLASSIFIER_STEPS",
]

DEFAULT_CLASSIFIER_STEPS = 2000  # batch 128: about 5 epochs of the 50k training split
CLASSIFIER_VERSION = 1  # bump when the architecture or training recipe changes
FEATURE_DIM = 128
_MNIST_MEAN, _MNIST_STD = 0.1307, 0.3081


class MnistClassifier(nn.Module):
    """LeNet-style judge: two 5x5 conv + max-pool blocks, a 128-unit feature layer, 10 logits.

    Input: images (B, 28, 28) or (B, 1, 28, 28) in [0, 1]. `features(x)` is the
    penultimate layer (B, 128) used for the Frechet distance; `forward(x)` the logits.
    """

    def __init__(self, width=32):
        super().__init__()
        self.width = int(width)
        self.conv1 = nn.Conv2d(1, width // 2, 5, padding=2)
        self.conv2 = nn.Conv2d(width // 2, width, 5, padding=2)
        self.fc1 = nn.Linear(width * 7 * 7, FEATURE_DIM)
        self.fc2 = nn.Linear(FEATURE_DIM, 10)

    def features(self, x):
        x = x.reshape(-1, 1, 28, 28)
        h = (x - _MNIST_MEAN) / _MNIST_STD
        h = F.max_pool2d(F.relu(self.conv1(h)), 2)  # (B, width/2, 14, 14)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)  # (B, width, 7, 7)
        return F.relu(self.fc1(h.flatten(1)))  # (B, 128)

    def forward(self, x):
        return self.fc2(self.features(x))  # (B, 10)


def _as_images(images):
    images = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images)
    images = images.float()
    if images.ndim == 4 and images.shape[1] == 1:
        images = images[:, 0]
    if images.ndim != 3 or tuple(images.shape[1:]) != (28, 28):
        raise ValueError(f"MNIST images must have shape (N, 28, 28), got {tuple(images.shape)}")
    if not bool(torch.isfinite(images).all()):
        raise ValueError("images hold non-finite values")
    return images


@torch.no_grad()
def _batched(fn, images, batch_size=1000):
    images = _as_images(images)
    return torch.cat([fn(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


@torch.no_grad()
def classifier_accuracy(classifier, images, labels, batch_size=1000):
    """Fraction of images whose argmax logit equals the label."""
    classifier.eval()
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    logits = _batched(classifier, images, batch_size)  # (N, 10)
    if logits.shape[0] != labels.shape[0]:
        raise ValueError(f"{logits.shape[0]} images but {labels.shape[0]} labels")
    return float((logits.argmax(1) == labels).float().mean())


def train_classifier(images, labels, steps=DEFAULT_CLASSIFIER_STEPS, batch_size=128, lr=1e-3,
                     width=32, seed=0, progress=True):
    """Train the judge with Adam on cross-entropy for `steps` minibatches (reshuffled epochs).

    The learning rate decays by a cosine from lr to 0 over the run. Returns the model in
    eval mode.
    """
    if int(steps) <= 0:
        raise ValueError(f"steps must be positive, got {steps}")
    images = _as_images(images)
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    gen = torch.Generator().manual_seed(int(seed))
    torch.manual_seed(int(seed))
    model = MnistClassifier(width)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=int(steps))
    n = images.shape[0]
    perm, pos = torch.randperm(n, generator=gen), 0
    model.train()
    bar = _progress(int(steps), "judge classifier", progress)
    for _ in range(int(steps)):
        if pos + batch_size > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        idx = perm[pos : pos + batch_size]
        pos += batch_size
        loss = F.cross_entropy(model(images[idx]), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    return model.eval()


def _progress(total, desc, enabled):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, file=sys.stderr)


def _cache_root(cache_dir=None):
    if cache_dir is None:
        cache_dir = os.environ.get("FM_DUAL_CACHE") or os.path.join(
            os.path.expanduser("~"), ".cache", "fm-dual"
        )
    return os.fspath(cache_dir)


def classifier_cache_path(cache_dir=None, steps=DEFAULT_CLASSIFIER_STEPS, width=32, seed=0):
    """Where the judge trained with these settings is cached."""
    name = f"mnist-judge-v{CLASSIFIER_VERSION}-w{int(width)}-s{int(steps)}-seed{int(seed)}.pt"
    return os.path.join(_cache_root(cache_dir), name)


def _load_classifier(path):
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        model = MnistClassifier(int(blob["width"]))
        model.load_state_dict(blob["state_dict"])
        return model.eval(), blob
    except Exception as e:  # a torn or foreign file: the caller retrains
        return None, str(e)


_INFO_KEYS = ("test_accuracy", "steps", "width", "seed", "train_seconds")


def load_or_train_classifier(cache_dir=None, steps=DEFAULT_CLASSIFIER_STEPS, width=32, seed=0,
                             progress=True, data=None):
    """The cached judge (trained on first use) and its info dict.

    info: "test_accuracy" (on the 10k test split), "steps", "width", "seed",
    "train_seconds", "path". `data` may pass ((train_x, train_y), (test_x, test_y)) to
    skip loading MNIST (tests use it); by default fm_numpy.data.load_mnist is used.
    A torn or unreadable cache file is retrained and replaced, never trusted.
    """
    path = classifier_cache_path(cache_dir, steps, width, seed)
    if os.path.isfile(path):
        model, blob = _load_classifier(path)
        if model is not None:
            info = {k: blob[k] for k in _INFO_KEYS}
            return model, dict(info, path=path)
    if data is None:
        from fm_numpy.data import load_mnist

        data = (load_mnist("train"), load_mnist("test"))
    (train_x, train_y), (test_x, test_y) = data
    start = time.perf_counter()
    model = train_classifier(train_x, train_y, steps=steps, width=width, seed=seed,
                             progress=progress)
    seconds = time.perf_counter() - start
    accuracy = classifier_accuracy(model, test_x, test_y)
    blob = {
        "state_dict": model.state_dict(), "width": int(width), "steps": int(steps),
        "seed": int(seed), "test_accuracy": float(accuracy), "train_seconds": float(seconds),
        "version": CLASSIFIER_VERSION,
    }
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)
    info = {k: blob[k] for k in _INFO_KEYS}
    return model, dict(info, path=path)


def features(classifier, images, batch_size=1000):
    """Penultimate-layer judge features (N, 128) as float64 NumPy."""
    classifier.eval()
    return _batched(classifier.features, images, batch_size).double().numpy()


def gaussian_stats(feats):
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), N >= 2."""
    feats = np.asarray(feats, dtype=np.float64)
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise ValueError(f"features must have shape (N >= 2, D), got {feats.shape}")
    return feats.mean(axis=0), np.cov(feats, rowvar=False).reshape(feats.shape[1], feats.shape[1])


def _sqrtm_psd(c):
    """Symmetric square root of a symmetric positive semi-definite matrix by eigh."""
    w, q = np.linalg.eigh(0.5 * (c + c.T))
    return (q * np.sqrt(np.clip(w, 0, None))) @ q.T


def frechet_distance(mu1, cov1, mu2, cov2):
    """Frechet (2-Wasserstein squared) distance between N(mu1, cov1) and N(mu2, cov2).

    FD = |mu1 - mu2|^2 + tr(cov1) + tr(cov2) - 2 tr((cov1 cov2)^{1/2}).
    With s_i = cov_i^{1/2} (symmetric, by eigh), cov1 cov2 is similar to
    (s1 s2)(s1 s2)^T, so tr((cov1 cov2)^{1/2}) is the sum of the singular values of
    s1 s2. The SVD finds them to absolute round-off, whereas square-rooting eigenvalues of
    a singular product would amplify round-off 1e-16 into errors of 1e-8.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.atleast_2d(cov1).astype(np.float64), np.atleast_2d(cov2).astype(np.float64)
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or cov1.shape != (d, d) or cov2.shape != (d, d):
        raise ValueError(
            f"shapes do not match: mu1 {mu1.shape}, cov1 {cov1.shape}, mu2 {mu2.shape}, "
            f"cov2 {cov2.shape}"
        )
    s1, s2 = _sqrtm_psd(cov1), _sqrtm_psd(cov2)  # (D, D)
    tr_cross = np.sum(np.linalg.svd(s1 @ s2, compute_uv=False))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * tr_cross)


def frechet_distance_from_features(feats1, feats2):
    """FD between the Gaussians fitted to two feature sets (N1, D) and (N2, D)."""
    return frechet_distance(*gaussian_stats(feats1), *gaussian_stats(feats2))


def mnist_metrics(images, labels=None, classifier=None, info=None, reference=None, seed=0,
                 memo=None):
    """Judge metrics of generated images (N, 28, 28) in [0, 1].

    Returns a dict with "fd" (generated vs the real test split), "fd_floor" (N real
    training images, drawn with `seed`, vs the same test split), "n", and, when labels
    (the classes the samples were asked for) are given, "class_accuracy" (judge agrees)
    and "class_accuracy_floor" (the judge's accuracy on the real test split).
    `reference` may pass ((train_x, train_y), (test_x, test_y)); default load_mnist.
    `memo`: a dict kept by the caller between calls with the same judge and reference, so
    the test-split statistics and the floors are computed once, not per call.
    """
    images = _as_images(images)
    if classifier is None:
        classifier, info = load_or_train_classifier()
    if reference is None:
        from fm_numpy.data import load_mnist

        reference = (load_mnist("train"), load_mnist("test"))
    (train_x, _), (test_x, test_y) = reference
    n = images.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 images for a Frechet distance, got {n}")
    memo = {} if memo is None else memo
    if "stats_test" not in memo:
        memo["stats_test"] = gaussian_stats(features(classifier, test_x))
    stats_test = memo["stats_test"]
    if ("fd_floor", n, seed) not in memo:
        rng = np.random.default_rng(seed)
        real_idx = rng.choice(len(train_x), size=min(n, len(train_x)), replace=False)
        f_real = features(classifier, np.asarray(train_x)[real_idx])
        memo[("fd_floor", n, seed)] = frechet_distance(*gaussian_stats(f_real), *stats_test)
    f_gen = features(classifier, images)
    out = {
        "n": int(n),
        "fd": frechet_distance(*gaussian_stats(f_gen), *stats_test),
        "fd_floor": memo[("fd_floor", n, seed)],
        "n_reference_test": int(len(test_x)),
    }
    if labels is not None:
        out["class_accuracy"] = classifier_accuracy(classifier, images, labels)
        if "accuracy_floor" not in memo:
            memo["accuracy_floor"] = classifier_accuracy(classifier, test_x, test_y)
        out["class_accuracy_floor"] = memo["accuracy_floor"]
    if info is not None:
        out["judge"] = {k: v for k, v in info.items() if k != "path"}
    return out


def _finite(x):
    return x if not isinstance(x, float) or math.isfinite(x) else None


def _json_ready(d):
    return {k: (_json_ready(v) if isinstance(v, dict) else _finite(v)) for k, v in d.items()}


__all__ += ["write_metrics"]


def write_metrics(path, metrics):
    """Write the metrics dict as JSON atomically (non-finite numbers become null)."""
    save_json(path, _json_ready(metrics))
