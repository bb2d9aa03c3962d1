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


def _format(metrics):
    parts = [
        f"FD {metrics['fd']:.3f} (real-train floor {metrics['fd_floor']:.3f}, n={metrics['n']})"
    ]
    if "class_accuracy" in metrics:
        parts.append(
            f"class accuracy {metrics['class_accuracy']:.4f} "
            f"(judge on real test {metrics['class_accuracy_floor']:.4f})"
        )
    return "; ".join(parts)


# ------------------------------------------------------------- a trained checkpoint
__all__ += ["sample_images", "evaluate_checkpoint", "add_evaluate_parser", "cmd_evaluate"]


@torch.no_grad()
def sample_images(model, n, guidance=1.0, method="midpoint", steps=20, seed=0, batch_size=500,
                  device="cpu", progress=False):
    """n class-conditional MNIST samples, classes 0..9 in turn (y_i = i mod 10).

    x0 ~ N(0, I) from torch.Generator(seed), integrated by fm_torch.train.sample with
    guidance w; the model's [-1, 1] output is clipped and mapped to [0, 1].
    Returns (images (n, 28, 28) float32 NumPy, labels (n,) int64, NFE per batch).
    """
    from fm_torch.train import sample

    n = int(n)
    if n < 1:
        raise ValueError(f"the number of samples must be positive, got {n}")
    g = torch.Generator().manual_seed(int(seed))
    y = torch.arange(n) % 10  # (n,)
    x0 = torch.randn((n, 1, 28, 28), generator=g)  # (n, 1, 28, 28)
    images, nfe = [], 0
    bar = _progress(n, "sampling", progress)
    for i in range(0, n, batch_size):
        xs, nfe = sample(model, x0[i:i + batch_size].to(device), y[i:i + batch_size].to(device),
                         guidance, method, steps, return_nfe=True)  # (steps+1, b, 1, 28, 28)
        images.append(((xs[-1, :, 0].clamp(-1, 1) + 1) / 2).float().cpu())
        bar.update(len(xs[-1]))
    bar.close()
    return torch.cat(images).numpy(), y.numpy(), int(nfe)


def evaluate_checkpoint(path, n=1000, guidance=1.0, method="midpoint", steps=20, seed=0,
                        ema=True, judge_steps=DEFAULT_CLASSIFIER_STEPS, device="cpu",
                        progress=True, classifier=None, info=None, reference=None, memo=None):
    """Sample n images from an fm-torch MNIST checkpoint and judge them (see mnist_metrics).

    Adds "nfe" (evaluations of the guided velocity field along one trajectory),
    "model_calls" (network evaluations: 2 per NFE when w is neither 0 nor 1, since
    guidance needs v_cond and v_uncond), "sample_seconds", and the sampling settings.
    """
    from fm_torch.train import load_model

    model, checkpoint = load_model(path, ema=ema, map_location=device)
    if checkpoint["config"]["data"] != "mnist":
        raise ValueError(f"{path} is a {checkpoint['config']['data']!r} model; evaluate "
                         "judges MNIST checkpoints")
    if classifier is None:
        classifier, info = load_or_train_classifier(steps=judge_steps, progress=progress)
    start = time.perf_counter()
    images, labels, nfe = sample_images(model.to(device), n, guidance, method, steps, seed,
                                        device=device, progress=progress)
    seconds = time.perf_counter() - start
    metrics = mnist_metrics(images, labels, classifier, info, reference, seed=seed, memo=memo)
    metrics.update({
        "checkpoint": os.fspath(path), "train_step": int(checkpoint["step"]),
        "guidance": float(guidance), "method": method, "steps": int(steps), "nfe": nfe,
        "model_calls": nfe * (1 if float(guidance) in (0.0, 1.0) else 2),
        "sample_seconds": seconds, "seed": int(seed), "ema": bool(ema),
    })
    return metrics


__all__ += ["evaluate_samples"]


def evaluate_samples(path, seed=0, judge_steps=DEFAULT_CLASSIFIER_STEPS, progress=True,
                     classifier=None, info=None, reference=None, memo=None):
    """Judge a samples .npz from either package (`fm-numpy sample` writes one): "images"
    (N, 28, 28) in [0, 1] and "labels" (N,), the classes asked for (empty: unconditional)."""
    from fm_numpy.io import load_npz

    arrays = load_npz(path)
    if "images" not in arrays:
        raise ValueError(f"{path} holds no 'images' array; it is not an MNIST samples file")
    images, labels = arrays["images"], arrays.get("labels")
    if labels is not None and labels.size == 0:
        labels = None
    if labels is not None and labels.shape != (len(images),):
        raise ValueError(f"{path}: labels have shape {labels.shape}, expected ({len(images)},)")
    if classifier is None:
        classifier, info = load_or_train_classifier(steps=judge_steps, progress=progress)
    metrics = mnist_metrics(images, labels, classifier, info, reference, seed=seed, memo=memo)
    metrics["samples"] = os.fspath(path)
    return metrics


def add_evaluate_parser(subparsers):
    """`fm-torch evaluate`: FD and class accuracy of an MNIST checkpoint's samples."""
    p = subparsers.add_parser(
        "evaluate", help="judge an MNIST checkpoint: Frechet distance and class accuracy")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="ckpt.pt written by train (data mnist)")
    which.add_argument("--samples", help="judge this samples .npz (images, labels) instead, "
                                         "e.g. from `fm-numpy sample`")
    p.add_argument("--n", type=int, default=1000, help="samples to judge (default 1000)")
    p.add_argument("--guidance", type=float, default=1.0,
                   help="classifier-free guidance w: 1 = conditional (default), 0 = unconditional")
    p.add_argument("--method", default="midpoint", help="euler, midpoint, heun, rk4, dopri5")
    p.add_argument("--steps", type=int, default=20, help="fixed-grid steps (default 20)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-ema", action="store_true", help="use the raw weights, not the EMA")
    p.add_argument("--judge-steps", type=int, default=DEFAULT_CLASSIFIER_STEPS,
                   help=f"training steps of the cached judge (default {DEFAULT_CLASSIFIER_STEPS})")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", help="write the metrics to this .json")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args):
    if args.n < 2 or args.steps < 1 or args.judge_steps < 1:
        raise ValueError("--n must be >= 2, --steps and --judge-steps positive")
    if args.out and not args.out.lower().endswith(".json"):
        raise ValueError(f"--out must name a .json file, got {args.out!r}")
    if args.samples is not None:
        if not os.path.isfile(args.samples):
            raise FileNotFoundError(f"no such samples file: {args.samples}")
        metrics = evaluate_samples(args.samples, args.seed, args.judge_steps,
                                   progress=not args.no_progress)
        print(_format(metrics) + f"; judge test accuracy "
              f"{metrics['judge']['test_accuracy']:.4f}")
        if args.out:
            write_metrics(args.out, metrics)
            print(f"wrote {args.out}")
        return 0
    if not os.path.isfile(args.model):
        raise FileNotFoundError(f"no such checkpoint: {args.model}")
    metrics = evaluate_checkpoint(args.model, args.n, args.guidance, args.method, args.steps,
                                  args.seed, ema=not args.no_ema, judge_steps=args.judge_steps,
                                  device=args.device, progress=not args.no_progress)
    print(_format(metrics) + f"; {metrics['nfe']} NFE ({args.method}, {args.steps} steps, "
          f"w={args.guidance:g}); judge test accuracy {metrics['judge']['test_accuracy']:.4f}")
    if args.out:
        write_metrics(args.out, metrics)
        print(f"wrote {args.out}")
    return 0
