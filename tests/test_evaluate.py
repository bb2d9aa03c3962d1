"""fm_torch.evaluate: Frechet distance against closed forms; a tiny judge trained briefly."""

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given
from hypothesis import strategies as st

from fm_torch import cli_evaluate as cli_ev
from fm_torch import evaluate as ev


def _random_cov(rng, d, rank=None):
    a = rng.standard_normal((d, rank or d))
    return a @ a.T / d


def test_fd_one_dimensional_closed_form():
    # W2^2 between N(m1, s1^2) and N(m2, s2^2) is (m1 - m2)^2 + (s1 - s2)^2
    fd = ev.frechet_distance([0.3], [[4.0]], [-1.2], [[0.25]])
    assert fd == pytest.approx((0.3 + 1.2) ** 2 + (2.0 - 0.5) ** 2, rel=1e-12)


def test_fd_diagonal_closed_form():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    fd = ev.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert fd == pytest.approx(expected, rel=1e-12)


def test_fd_matches_scipy_sqrtm_of_product():
    """Independent route: tr((C1 C2)^{1/2}) with scipy.linalg.sqrtm of the non-symmetric product."""
    rng = np.random.default_rng(1)
    c1, c2 = _random_cov(rng, 8), _random_cov(rng, 8)
    mu1, mu2 = rng.standard_normal(8), rng.standard_normal(8)
    cross = np.real(np.trace(scipy.linalg.sqrtm(c1 @ c2)))
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(c1) + np.trace(c2) - 2 * cross
    assert ev.frechet_distance(mu1, c1, mu2, c2) == pytest.approx(expected, rel=1e-9)


@given(st.integers(0, 10_000), st.integers(1, 6), st.integers(1, 6))
def test_fd_zero_on_itself_symmetric_nonnegative(seed, d, rank):
    rng = np.random.default_rng(seed)
    c1, c2 = _random_cov(rng, d, rank), _random_cov(rng, d)  # c1 may be singular
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    assert abs(ev.frechet_distance(mu1, c1, mu1, c1)) < 1e-8
    ab, ba = ev.frechet_distance(mu1, c1, mu2, c2), ev.frechet_distance(mu2, c2, mu1, c1)
    assert ab == pytest.approx(ba, rel=1e-8, abs=1e-10)
    assert ab >= -1e-10


def test_fd_from_features_tends_to_population_value():
    rng = np.random.default_rng(2)
    c1, c2 = _random_cov(rng, 3), _random_cov(rng, 3)
    mu1, mu2 = np.zeros(3), np.ones(3)
    f1 = rng.multivariate_normal(mu1, c1, 200_000)
    f2 = rng.multivariate_normal(mu2, c2, 200_000)
    exact = ev.frechet_distance(mu1, c1, mu2, c2)
    assert ev.frechet_distance_from_features(f1, f2) == pytest.approx(exact, rel=0.02)


def test_fd_bad_shapes():
    with pytest.raises(ValueError, match="shapes do not match"):
        ev.frechet_distance(np.zeros(2), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="features must have shape"):
        ev.gaussian_stats(np.zeros(5))


@pytest.fixture(scope="module")
def mnist_small():
    from fm_numpy.data import load_mnist

    train_x, train_y = load_mnist("train")
    test_x, test_y = load_mnist("test")
    return (train_x[:3000], train_y[:3000]), (test_x[:1000], test_y[:1000])


def load_mnist_valid(n=500):
    from fm_numpy.data import load_mnist

    x, y = load_mnist("valid")
    return x[:n], y[:n]


@pytest.fixture(scope="module")
def tiny_judge(mnist_small, tmp_path_factory):
    cache = tmp_path_factory.mktemp("judge-cache")
    model, info = ev.load_or_train_classifier(
        cache_dir=cache, steps=100, width=8, seed=0, progress=False, data=mnist_small
    )
    return model, info, cache


def test_tiny_judge_learns_far_above_chance(tiny_judge):
    _, info, _ = tiny_judge
    assert info["test_accuracy"] > 0.6  # chance is 0.1
    assert info["steps"] == 100 and info["width"] == 8


def test_judge_cache_is_reused_and_weights_only(tiny_judge, mnist_small, monkeypatch):
    model, info, cache = tiny_judge
    path = ev.classifier_cache_path(cache, steps=100, width=8, seed=0)
    blob = torch.load(path, weights_only=True)  # plain tensors and numbers only
    assert blob["test_accuracy"] == info["test_accuracy"]

    def must_not_train(*a, **k):
        raise AssertionError("the cached judge should have been loaded")

    monkeypatch.setattr(ev, "train_classifier", must_not_train)
    again, info2 = ev.load_or_train_classifier(cache, steps=100, width=8, seed=0, data=mnist_small)
    x = torch.as_tensor(mnist_small[1][0][:50])
    torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)
    assert info2["test_accuracy"] == info["test_accuracy"]


def test_torn_cache_file_is_retrained(mnist_small, tmp_path):
    path = ev.classifier_cache_path(tmp_path, steps=5, width=4, seed=1)
    with open(path, "wb") as f:
        f.write(b"PK\x03\x04 torn")
    model, info = ev.load_or_train_classifier(tmp_path, steps=5, width=4, seed=1,
                                              progress=False, data=mnist_small)
    assert isinstance(model, ev.MnistClassifier)
    assert torch.load(path, weights_only=True)["steps"] == 5


def test_mnist_metrics_real_vs_noise(tiny_judge, mnist_small):
    model, info, _ = tiny_judge
    _, (test_x, test_y) = mnist_small
    (held_x, held_y) = load_mnist_valid()
    real = ev.mnist_metrics(held_x, held_y, classifier=model, info=info, reference=mnist_small)
    rng = np.random.default_rng(0)
    noise = rng.uniform(0, 1, (500, 28, 28)).astype(np.float32)
    fake = ev.mnist_metrics(noise, held_y, classifier=model, info=info,
                            reference=mnist_small)
    # held-out real images score near the floor; noise far above it
    assert real["fd"] < 2 * real["fd_floor"] + 1e-6
    assert fake["fd"] > 10 * real["fd"]
    assert real["class_accuracy"] > 0.6 and fake["class_accuracy"] < 0.5
    assert real["class_accuracy_floor"] == pytest.approx(
        ev.classifier_accuracy(model, test_x, test_y))
    assert real["judge"]["steps"] == 100


def test_bad_images_are_value_errors(tiny_judge, mnist_small):
    model, info, _ = tiny_judge
    with pytest.raises(ValueError, match=r"shape \(N, 28, 28\)"):
        ev.mnist_metrics(np.zeros((10, 784)), classifier=model, reference=mnist_small)
    with pytest.raises(ValueError, match="non-finite"):
        ev.mnist_metrics(np.full((10, 28, 28), np.nan), classifier=model, reference=mnist_small)


@pytest.fixture(scope="module")
def tiny_unet_ckpt(tmp_path_factory):
    from fm_torch.train import train

    out = tmp_path_factory.mktemp("unet-run")
    train(out, progress=False, device="cpu", data="mnist", steps=2, batch=8, base=8,
          mults=[1, 2], n_train=64, ckpt_every=2, sample_every=1000)
    return out / "ckpt.pt"


def test_evaluate_cli_writes_json(tiny_judge, mnist_small, tiny_unet_ckpt, tmp_path, monkeypatch):
    import json

    from fm_torch.cli import main

    model, info, _ = tiny_judge
    monkeypatch.setattr(cli_ev, "load_or_train_classifier", lambda **k: (model, info))
    import fm_numpy.data

    splits = {"train": mnist_small[0], "test": mnist_small[1]}
    monkeypatch.setattr(fm_numpy.data, "load_mnist", lambda split, **k: splits[split])
    out = tmp_path / "metrics.json"
    rc = main(["evaluate", "--model", str(tiny_unet_ckpt), "--n", "20", "--steps", "2",
               "--method", "euler", "--guidance", "2", "--out", str(out), "--no-progress"])
    assert rc == 0
    metrics = json.loads(out.read_text())
    assert metrics["n"] == 20 and metrics["nfe"] == 2  # 2 Euler steps
    assert metrics["model_calls"] == 4  # w = 2 needs v_cond and v_uncond
    assert metrics["fd"] > metrics["fd_floor"] >= 0  # an untrained U-Net is far from data
    assert 0 <= metrics["class_accuracy"] <= 1 and metrics["train_step"] == 2


def test_evaluate_cli_errors(tmp_path, capsys):
    from fm_torch.cli import main

    assert main(["evaluate", "--model", str(tmp_path / "none.pt")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
    assert main(["evaluate", "--model", "x.pt", "--n", "1"]) == 2
    assert "--n must be >= 2" in capsys.readouterr().err


def test_evaluate_samples_npz_matches_mnist_metrics(tiny_judge, mnist_small, tmp_path,
                                                    monkeypatch, capsys):
    """`fm-torch evaluate --samples` judges an fm-numpy samples file like mnist_metrics."""
    import json

    from fm_numpy.io import save_npz
    from fm_torch.cli import main

    model, info, _ = tiny_judge
    images, labels = mnist_small[1][0][:50], mnist_small[1][1][:50]
    save_npz(tmp_path / "s.npz", images=images, labels=labels)
    got = cli_ev.evaluate_samples(tmp_path / "s.npz", classifier=model, info=info,
                                  reference=mnist_small)
    want = ev.mnist_metrics(images, labels, model, info, mnist_small)
    assert got["fd"] == want["fd"] and got["class_accuracy"] == want["class_accuracy"]
    monkeypatch.setattr(cli_ev, "load_or_train_classifier", lambda **k: (model, info))
    import fm_numpy.data

    splits = {"train": mnist_small[0], "test": mnist_small[1]}
    monkeypatch.setattr(fm_numpy.data, "load_mnist", lambda split, **k: splits[split])
    rc = main(["evaluate", "--samples", str(tmp_path / "s.npz"), "--out",
               str(tmp_path / "m.json"), "--no-progress"])
    assert rc == 0
    assert json.loads((tmp_path / "m.json").read_text())["fd"] == pytest.approx(want["fd"])
    # the labels in the file are the ones judged: the same images with every label moved to
    # the next class keep their FD and lose their class accuracy (the judge is > 0.6 right)
    save_npz(tmp_path / "wrong.npz", images=images, labels=(labels + 1) % 10)
    rc = main(["evaluate", "--samples", str(tmp_path / "wrong.npz"), "--out",
               str(tmp_path / "w.json"), "--no-progress"])
    assert rc == 0
    wrong = json.loads((tmp_path / "w.json").read_text())
    assert wrong["fd"] == pytest.approx(want["fd"])
    assert want["class_accuracy"] > 0.6 and wrong["class_accuracy"] < 0.2, (want, wrong)
    save_npz(tmp_path / "vectors.npz", samples=np.zeros((5, 2)))
    assert main(["evaluate", "--samples", str(tmp_path / "vectors.npz")]) == 2
    assert "no 'images' array" in capsys.readouterr().err
    assert main(["evaluate", "--samples", str(tmp_path / "none.npz")]) == 2
    assert "no such samples file" in capsys.readouterr().err
