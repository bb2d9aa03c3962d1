"""Log-likelihoods by the instantaneous change of variables (fm_numpy/likelihood.py and
fm_torch/likelihood.py) against closed forms and each other.

- the oracle field of a Gaussian mixture integrated back gives the mixture's exact
  log-density (to solver tolerance), for several schedulers and solvers;
- a linear field v = A x (a plain callable: finite-difference divergence) gives
  log N(expm(-A) x1; 0, I) - tr A;
- Hutchinson's estimator is unbiased: its mean over many probes is within 5 standard
  errors of the exact divergence (numpy MLP.jvp, finite differences, torch VJPs);
- numpy's forward-mode divergence of the MLP equals torch's autograd one, and the two
  packages give the same log-likelihoods (float64, same probes);
- torch's exact divergence works on image-shaped inputs (B, 1, 28, 28);
- bits per dimension: the uniform density on [-1, 1)^D is exactly 8 bpd.
"""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.linalg import expm

import fm_torch.analytic as ta
import fm_torch.likelihood as tl
import fm_torch.paths as tp
from fm_numpy.analytic import GaussianMixtureField
from fm_numpy.likelihood import (
    bits_per_dim,
    dequantize,
    draw_probes,
    exact_divergence,
    hutchinson_divergence,
    log_likelihood,
    mnist_log_likelihood,
    quantize_images,
    standard_normal_log_prob,
    to_model_space,
)
from fm_numpy.models.mlp import MLP
from fm_numpy.paths import make_scheduler
from fm_torch.models.mlp import MLP as TorchMLP


def random_mixture(seed=0, K=3, D=2, scheduler=None):
    rng = np.random.default_rng(seed)
    means = 2.0 * rng.standard_normal((K, D))
    A = 0.5 * rng.standard_normal((K, D, D))
    covs = A @ np.swapaxes(A, 1, 2) + 0.05 * np.eye(D)
    return GaussianMixtureField(means, covs, rng.uniform(0.5, 1.5, K), scheduler)


@pytest.mark.parametrize(
    "name,method,options,tol",
    [
        ("condot", "DOP853", {"rtol": 1e-9, "atol": 1e-9}, 1e-6),
        ("condot", "rk4", {"steps": 100}, 1e-6),
        ("cosine", "rk4", {"steps": 100}, 1e-5),
        ("polynomial", "RK45", {"rtol": 1e-7, "atol": 1e-7}, 1e-4),
        ("sigma_min_ot", "heun", {"steps": 400}, 1e-3),
    ],
)
def test_oracle_log_likelihood_equals_exact_log_density(name, method, options, tol):
    field = random_mixture(1, scheduler=make_scheduler(name))
    x1, _ = field.sample(64, rng=2)
    log_p = log_likelihood(field, x1, method=method, **options)
    np.testing.assert_allclose(log_p, field.log_prob(x1), atol=tol)


def test_plain_callable_uses_finite_differences_and_matches_the_oracle():
    field = random_mixture(3)
    x1, _ = field.sample(16, rng=4)
    log_p = log_likelihood(lambda x, t: field(x, t), x1, method="rk4", steps=60)
    np.testing.assert_allclose(log_p, field.log_prob(x1), atol=1e-5)


def test_linear_field_closed_form():
    """v(x, t) = A x: x1 = expm(A) x0, so log p1(x1) = log N(expm(-A) x1; 0, I) - tr A."""
    rng = np.random.default_rng(5)
    A = 0.4 * rng.standard_normal((3, 3))
    x1 = rng.standard_normal((10, 3))
    log_p, x0 = log_likelihood(
        lambda x, t: x @ A.T, x1, method="DOP853", rtol=1e-10, atol=1e-10, return_x0=True
    )
    x0_exact = x1 @ expm(-A).T
    np.testing.assert_allclose(x0, x0_exact, atol=1e-8)
    expected = stats.multivariate_normal(np.zeros(3), np.eye(3)).logpdf(x0_exact) - np.trace(A)
    np.testing.assert_allclose(log_p, expected, atol=1e-6)
    # the sign matters: the opposite convention would be off by 2 tr A
    assert abs(np.trace(A)) > 0.1


def test_gaussian_target_log_likelihood_is_the_gaussian_log_density():
    rng = np.random.default_rng(6)
    m = rng.standard_normal(3)
    L = 0.5 * rng.standard_normal((3, 3))
    S = L @ L.T + 0.1 * np.eye(3)
    field = GaussianMixtureField(m[None], S[None], None, make_scheduler("condot"))
    x1 = rng.multivariate_normal(m, S, 20)
    log_p = log_likelihood(field, x1, method="DOP853", rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(log_p, stats.multivariate_normal(m, S).logpdf(x1), atol=1e-7)


def _z_score(estimates, exact):
    n = estimates.shape[0]
    return np.abs(estimates.mean(axis=0) - exact) / (estimates.std(axis=0) / np.sqrt(n))


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased_for_the_mlp(probe):
    """Mean of eps^T J eps over 4000 seeded probes within 5 standard errors of tr J."""
    mlp = MLP(3, hidden=32, depth=2, seed=7, dtype=np.float64)
    x = np.random.default_rng(8).standard_normal((5, 3))
    _, exact = mlp.divergence(x, 0.3)
    probes = draw_probes(x.shape, probe, 4000, seed=9)
    _, est = hutchinson_divergence(mlp, x, 0.3, probes)  # (4000, 5)
    assert _z_score(est, exact).max() < 5.0
    # a divergence off by 0.05 would be caught: the standard error is far smaller
    assert np.all(est.std(axis=0) / np.sqrt(4000) < 0.01)


def test_hutchinson_is_unbiased_with_finite_differences_and_torch_vjps():
    field = random_mixture(10)
    x = np.random.default_rng(11).standard_normal((6, 2))
    _, exact = field.divergence(x, 0.6)
    probes = draw_probes(x.shape, "gaussian", 4000, seed=12)
    _, est = hutchinson_divergence(lambda z, t: field(z, t), x, 0.6, probes)
    assert _z_score(est, exact).max() < 5.0
    f_t = ta.GaussianMixtureField(field.means, field.covariances, field.weights)
    _, est_t = tl.hutchinson_divergence(
        lambda z, t: f_t(z, t), torch.tensor(x), 0.6, torch.tensor(probes[:100])
    )
    np.testing.assert_allclose(est_t.numpy(), est[:100], rtol=1e-6, atol=1e-6)


def test_hutchinson_log_likelihood_averages_to_the_exact_one():
    field = random_mixture(13)
    x1, _ = field.sample(8, rng=14)
    # the trajectory of x does not depend on the divergence, so with the same grid the
    # Hutchinson log-likelihood is a fixed linear combination of unbiased estimates
    exact = log_likelihood(field, x1, steps=4)
    runs = np.stack(
        [
            log_likelihood(field, x1, steps=4, divergence="hutchinson", n_probes=2, seed=s)
            for s in range(60)
        ]
    )  # (60, 8)
    assert _z_score(runs, exact).max() < 5.0
    assert runs.std(axis=0).max() > 1e-3  # the estimates are random, so the check is not vacuous


def test_mlp_divergence_numpy_forward_mode_equals_torch_autograd():
    mlp = MLP(4, hidden=16, depth=3, num_classes=3, seed=15, dtype=np.float64)
    torch_mlp = TorchMLP(4, hidden=16, depth=3, num_classes=3, seed=15, dtype=torch.float64)
    x = np.random.default_rng(16).standard_normal((7, 4))
    y = np.array([0, 1, 2, 0, 1, 2, 3])
    v_np, div_np = exact_divergence(mlp, x, 0.4, y)
    v_t, div_t = tl.exact_divergence(torch_mlp, torch.tensor(x), 0.4, torch.tensor(y))
    np.testing.assert_allclose(v_t.numpy(), v_np, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(div_t.numpy(), div_np, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_numpy_and_torch_log_likelihoods_agree(divergence):
    mlp = MLP(2, hidden=32, depth=2, seed=17, dtype=np.float64)
    torch_mlp = TorchMLP(2, hidden=32, depth=2, seed=17, dtype=torch.float64)
    x1 = np.random.default_rng(18).standard_normal((16, 2))
    options = dict(method="rk4", steps=10, divergence=divergence, n_probes=3, seed=19)
    lp_np, x0_np = log_likelihood(mlp, x1, return_x0=True, **options)
    lp_t, x0_t = tl.log_likelihood(torch_mlp, torch.tensor(x1), return_x0=True, **options)
    np.testing.assert_allclose(x0_t.numpy(), x0_np, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(lp_t.numpy(), lp_np, rtol=1e-10, atol=1e-10)

    field = random_mixture(20, scheduler=make_scheduler("cosine"))
    f_t = ta.GaussianMixtureField(
        field.means, field.covariances, field.weights, tp.make_scheduler("cosine")
    )
    lp_np = log_likelihood(field, x1, **options)
    lp_t = tl.log_likelihood(f_t, torch.tensor(x1), **options)
    np.testing.assert_allclose(lp_t.numpy(), lp_np, rtol=1e-7, atol=1e-7)


def test_torch_dopri5_matches_the_exact_log_density():
    field = random_mixture(21)
    f_t = ta.GaussianMixtureField(field.means, field.covariances, field.weights)
    x1, _ = field.sample(32, rng=22)
    lp = tl.log_likelihood(f_t, torch.tensor(x1), method="dopri5", rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(lp.numpy(), field.log_prob(x1), atol=1e-5)


def test_torch_exact_divergence_on_image_shaped_inputs():
    """div of v = tanh(x W) (W acting on image rows) on (B, 1, 28, 28) in closed form:
    sum_p (1 - tanh^2(a_p)) W[j_p, j_p] (1 + t), a = x W."""
    gen = torch.Generator().manual_seed(0)
    W = 0.2 * torch.randn(28, 28, dtype=torch.float64, generator=gen)
    x = torch.randn(2, 1, 28, 28, dtype=torch.float64, generator=gen)

    def v(z, t):
        return torch.tanh(z @ W) * (1 + t)

    vx, div = tl.exact_divergence(v, x, 0.5)
    assert vx.shape == x.shape and div.shape == (2,)
    slope = 1 - torch.tanh(x @ W) ** 2  # (B, 1, 28, 28)
    expected = 1.5 * (slope * torch.diagonal(W)).sum(dim=(1, 2, 3))
    np.testing.assert_allclose(div.numpy(), expected.numpy(), rtol=1e-10)

    # a convolution against a brute-force Jacobian on a smaller image
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 1, 3, padding=1, bias=True, dtype=torch.float64)

    def v_conv(z, t):
        return torch.tanh(conv(z)) * (1 + t)

    x_small = torch.randn(3, 1, 5, 5, dtype=torch.float64, generator=gen)
    _, div_small = tl.exact_divergence(v_conv, x_small, 0.2)
    J = torch.autograd.functional.jacobian(lambda z: v_conv(z, 0.2).sum(0), x_small)
    J = J.reshape(25, 3, 25)
    brute = torch.stack([J[:, b, :].diagonal().sum() for b in range(3)])
    np.testing.assert_allclose(div_small.numpy(), brute.detach().numpy(), rtol=1e-10)
    # the likelihood runs on image shapes end to end
    lp = tl.log_likelihood(v_conv, x_small, steps=2)
    assert lp.shape == (3,) and torch.isfinite(lp).all()


def test_bits_per_dim_of_the_uniform_density_is_eight():
    D = 784
    log_p_uniform = np.full(3, -D * math.log(2.0))  # density 2^-D on [-1, 1)^D
    np.testing.assert_allclose(bits_per_dim(log_p_uniform, D), 8.0)
    np.testing.assert_allclose(tl.bits_per_dim(torch.tensor(log_p_uniform), D).numpy(), 8.0)


def test_dequantisation_conventions_and_range():
    k = np.arange(256, dtype=np.float64).reshape(16, 16)
    for scale in (255.0, 256.0):
        np.testing.assert_array_equal(quantize_images((k / scale).astype(np.float32)), k)
    z = dequantize(k / 255.0, rng=0)
    assert np.all(z >= k / 256) and np.all(z < (k + 1) / 256)
    x = to_model_space(z)
    assert x.min() >= -1 and x.max() < 1
    with pytest.raises(ValueError, match="8-bit"):
        quantize_images(np.full((2, 2), 0.3333))
    np.testing.assert_array_equal(tl.dequantize(k / 256.0, rng=0).numpy(), dequantize(k / 256, 0))


class _Standard:
    """v = 0: the flow is the identity, p_1 = N(0, I); divergence 0."""

    def __call__(self, x, t):
        return np.zeros_like(x)

    def divergence(self, x, t):
        return np.zeros_like(x), np.zeros(x.shape[0])


def test_mnist_bits_per_dim_pipeline():
    k = np.random.default_rng(23).integers(0, 256, (4, 28, 28))
    images = (k / 256).astype(np.float32)
    log_p, bpd = mnist_log_likelihood(_Standard(), images, rng=24, method="euler", steps=1)
    x1 = to_model_space(dequantize(images, 24)).reshape(4, -1)
    np.testing.assert_allclose(log_p, standard_normal_log_prob(x1), rtol=1e-12)
    expected = -(standard_normal_log_prob(x1) + 784 * math.log(2)) / (784 * math.log(2)) + 8
    np.testing.assert_allclose(bpd, expected, rtol=1e-12)


def test_bad_arguments_raise_clear_errors():
    field = random_mixture()
    x1 = np.zeros((2, 2))
    with pytest.raises(ValueError, match="divergence"):
        log_likelihood(field, x1, divergence="trace")
    with pytest.raises(ValueError, match="probe"):
        log_likelihood(field, x1, divergence="hutchinson", probe="uniform")
    with pytest.raises(ValueError, match="n_probes"):
        log_likelihood(field, x1, divergence="hutchinson", n_probes=0)
    with pytest.raises(ValueError, match="t_grid"):
        log_likelihood(field, x1, t_grid=[0.0, 1.0])
    with pytest.raises(ValueError, match="solver method"):
        log_likelihood(field, x1, method="leapfrog")
    with pytest.raises(ValueError, match="batch axis"):
        log_likelihood(field, np.zeros(2))
    with pytest.raises(ValueError, match="divergence"):
        tl.log_likelihood(field, torch.zeros(2, 2), divergence="trace")


def test_likelihood_command_line_numpy_and_torch(tmp_path, capsys):
    """`fm-numpy likelihood` reports the mean of log_likelihood on its seeded test points,
    `fm-torch`'s helper the same number; bad input exits 2 with one line."""
    import argparse
    import json

    from fm_numpy.cli import main
    from fm_numpy.cli_likelihood import held_out_data
    from fm_torch.cli_likelihood import add_likelihood_parser

    mlp = MLP(2, hidden=16, depth=2, seed=25)
    path = tmp_path / "model.npz"
    mlp.save_npz(path)
    argv = [
        "likelihood",
        "--model",
        str(path),
        "--data",
        "8gaussians",
        "-n",
        "30",
        "--steps",
        "5",
        "--batch",
        "16",
        "--seed",
        "3",
        "--no-progress",
    ]
    assert main(argv + ["--out", str(tmp_path / "np.json")]) == 0
    result = json.loads((tmp_path / "np.json").read_text())
    x1, _ = held_out_data("8gaussians", 30, 3)
    model64 = MLP.from_npz(path, dtype=np.float64)
    expected = np.concatenate(
        [log_likelihood(model64, x1[:16], steps=5), log_likelihood(model64, x1[16:], steps=5)]
    )
    assert result["n"] == 30
    np.testing.assert_allclose(result["mean_log_likelihood"], expected.mean(), rtol=1e-12)
    # the true density of 8gaussians, written out: 8 equal-weight N(2 (cos, sin)(2 pi k / 8),
    # 0.1^2 I) components, by SciPy
    angles = 2 * np.pi * np.arange(8) / 8
    comps = np.stack([stats.multivariate_normal(2 * np.array([math.cos(a), math.sin(a)]),
                                                0.01 * np.eye(2)).logpdf(x1) for a in angles])
    true_lp = np.logaddexp.reduce(comps, axis=0) - math.log(8)  # (n,)
    np.testing.assert_allclose(result["true_mean_log_density"], true_lp.mean(), rtol=1e-12)
    np.testing.assert_allclose(result["mean_abs_error"], np.abs(expected - true_lp).mean(),
                               rtol=1e-10)

    parser = argparse.ArgumentParser()
    add_likelihood_parser(parser.add_subparsers())
    args = parser.parse_args(argv + ["--out", str(tmp_path / "torch.json")])
    assert args.func(args) == 0
    result_t = json.loads((tmp_path / "torch.json").read_text())
    np.testing.assert_allclose(
        result_t["mean_log_likelihood"], result["mean_log_likelihood"], rtol=1e-10
    )
    np.testing.assert_allclose(result_t["true_mean_log_density"], true_lp.mean(), rtol=1e-10)

    capsys.readouterr()
    assert main(["likelihood", "--model", str(tmp_path / "missing.npz")]) == 2
    assert main(argv + ["-n", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("fm-numpy: error: no such file")
    assert err[1] == "fm-numpy: error: -n must be positive, got 0"


def _relative_velocity_errors(model, oracle, t_eval, n, seed):
    rng = np.random.default_rng(seed)
    errors = []
    for t in t_eval:
        x1, _ = oracle.sample(n, rng)
        alpha_t, sigma_t = (float(c) for c in oracle.scheduler(t)[:2])
        xt = alpha_t * x1 + sigma_t * rng.standard_normal(x1.shape)  # xt ~ p_t
        u = oracle(xt, t)
        errors.append(np.sqrt(np.sum((model(xt, t) - u) ** 2) / np.sum(u**2)))
    return np.array(errors)


@pytest.mark.slow
def test_trained_mlp_is_close_to_the_oracle(tmp_path):
    """A small MLP trained on 8gaussians learns the oracle's field and likelihood, roughly.

    Loose bounds for a 500-step model (benchmarks/bench_oracle.py measures longer runs):
    mean relative L2 error of v against u_t over t below 0.5 (the untrained network: ~1),
    and its mean log-likelihood of test points within 2.5 nats of the true mean
    log-density and better than the untrained network's by over 1 nat.
    """
    from fm_numpy.analytic import eight_gaussians_mixture
    from fm_numpy.train import train

    oracle = eight_gaussians_mixture()
    train(
        tmp_path, progress=False, data="8gaussians", steps=500, batch=256, hidden=64, ckpt_every=500
    )
    model = MLP.from_npz(tmp_path / "model.npz", dtype=np.float64)
    untrained = MLP(2, hidden=64, depth=3, dtype=np.float64)
    t_eval = (0.1, 0.3, 0.5, 0.7, 0.9)
    err = _relative_velocity_errors(model, oracle, t_eval, 2000, 26).mean()
    err_untrained = _relative_velocity_errors(untrained, oracle, t_eval, 2000, 26).mean()
    assert err < 0.5 and err_untrained > 0.8, (err, err_untrained)

    x1, _ = oracle.sample(100, 27)
    lp_true = oracle.log_prob(x1).mean()
    lp_model = log_likelihood(model, x1, steps=40).mean()
    lp_untrained = log_likelihood(untrained, x1, steps=40).mean()
    assert abs(lp_model - lp_true) < 2.5, (lp_model, lp_true)
    assert lp_model > lp_untrained + 1.0, (lp_model, lp_untrained)


def test_numpy_likelihood_of_a_network_without_a_jvp_is_one_line_exit_2(tmp_path, capsys):
    """The MNIST default (ConvUNet) and the ResMLP have no forward-mode JVP: refused by name."""
    from fm_numpy.cli import main
    from fm_numpy.models.resmlp import ResMLP

    ResMLP(2, 8, 1, 4).save_npz(tmp_path / "res.npz")
    assert main(["likelihood", "--model", str(tmp_path / "res.npz"), "--data", "8gaussians"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'resmlp' network" in err[0] and "--arch mlp" in err[0]


def test_mnist_likelihood_defaults_to_an_adaptive_solver():
    # fixed rk4 grids are far from converged on MNIST (docs/benchmarks.md): mnist's default
    # is each package's adaptive solver, the 2-D sets keep rk4; --method still overrides
    import argparse

    from fm_numpy.cli_likelihood import add_likelihood_parser as numpy_parser
    from fm_numpy.cli_likelihood import check_args
    from fm_torch.cli_likelihood import add_likelihood_parser as torch_parser

    for add, adaptive in ((numpy_parser, "RK45"), (torch_parser, "dopri5")):
        parser = argparse.ArgumentParser()
        add(parser.add_subparsers())
        chosen = {}
        for extra in ([], ["--data", "mnist"], ["--data", "mnist", "--method", "rk4"]):
            args = parser.parse_args(["likelihood", "--model", "m.npz", *extra])
            check_args(args)
            chosen[" ".join(extra)] = args.method
        assert chosen == {"": "rk4", "--data mnist": adaptive,
                          "--data mnist --method rk4": "rk4"}


def test_numpy_likelihood_continues_an_interrupted_run_of_the_same_points(tmp_path, monkeypatch,
                                                                          capsys):
    """fm-numpy likelihood keeps finished batches in OUT.partial.npz: after a Ctrl-C the
    rerun gives the uninterrupted run's numbers. A toy set's fresh points depend on -n, so
    a rerun with another -n is refused (one line, exit 2) instead of mixing two draws."""
    import json

    from likelihood_helpers import cut_at

    import fm_numpy.cli_likelihood as cli_lk
    from fm_numpy.cli import main

    path = tmp_path / "model.npz"
    MLP(2, hidden=16, depth=2, seed=26).save_npz(path)
    argv = ["likelihood", "--model", str(path), "--data", "8gaussians", "-n", "20", "--steps",
            "4", "--batch", "8", "--seed", "5", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "whole.json")]) == 0
    seeds = []
    monkeypatch.setattr(cli_lk, "log_likelihood", cut_at(cli_lk.log_likelihood, seeds, 3))
    out = tmp_path / "cut.json"
    assert main([*argv, "--out", str(out)]) == 130
    partial = tmp_path / "cut.json.partial.npz"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"kept in {partial}" in err[0], err
    assert len(np.load(partial)["log_p"]) == 16
    other_n = list(argv)
    other_n[other_n.index("-n") + 1] = "24"
    assert main([*other_n, "--out", str(out)]) == 2
    assert "another model or settings" in capsys.readouterr().err
    seeds.clear()
    assert main([*argv, "--out", str(out)]) == 0
    assert seeds == [7]  # only the last batch (i = 2) was solved again
    whole, resumed = (json.loads((tmp_path / n).read_text()) for n in ("whole.json", "cut.json"))
    assert resumed["mean_log_likelihood"] == whole["mean_log_likelihood"]
    assert resumed["true_mean_log_density"] == whole["true_mean_log_density"]
    assert not partial.exists()
