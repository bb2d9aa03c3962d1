"""fm_numpy.metrics against brute-force computations and closed forms."""

import numpy as np
import pytest
from scipy.stats import wasserstein_distance

from fm_numpy import metrics
from fm_numpy.metrics import energy_distance, sliced_wasserstein


def _brute_energy(a, b, unbiased):
    d = lambda p, q: np.linalg.norm(p[:, None] - q[None], axis=-1)  # noqa: E731
    daa, dbb = d(a, a), d(b, b)
    n, m = len(a), len(b)
    if unbiased:
        return 2 * d(a, b).mean() - daa.sum() / (n * (n - 1)) - dbb.sum() / (m * (m - 1))
    return 2 * d(a, b).mean() - daa.mean() - dbb.mean()


@pytest.mark.parametrize("unbiased", [False, True])
def test_energy_distance_equals_brute_force_in_blocks(unbiased, monkeypatch):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((70, 3)), rng.standard_normal((55, 3)) + 0.5
    monkeypatch.setattr(metrics, "_BLOCK", 16)  # several blocks, a ragged last one
    assert energy_distance(a, b, unbiased) == pytest.approx(_brute_energy(a, b, unbiased),
                                                            rel=1e-8)


def test_energy_distance_separates_and_is_symmetric():
    rng = np.random.default_rng(1)
    a, a2, b = rng.standard_normal((400, 2)), rng.standard_normal((400, 2)), rng.standard_normal(
        (400, 2)) + 1.0
    same, shifted = energy_distance(a, a2), energy_distance(a, b)
    assert 0 <= same < 0.1 * shifted
    assert energy_distance(b, a) == pytest.approx(shifted)


def test_sliced_wasserstein_of_a_shift_and_1d_reference():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((500, 1))
    b = rng.standard_normal((300, 1)) * 2 + 1
    # in 1-D every direction is +-1, so sliced W1 is W1 itself (unequal sizes)
    assert sliced_wasserstein(a, b, 4, rng=0) == pytest.approx(
        wasserstein_distance(a[:, 0], b[:, 0]), rel=1e-10)
    # a translation by c in D dims: W1 of each projection is |c . theta|; E|theta_1| in 2-D = 2/pi
    x = rng.standard_normal((2000, 2))
    sw = sliced_wasserstein(x, x + np.array([3.0, 0.0]), 4000, rng=1)
    assert sw == pytest.approx(3.0 * 2 / np.pi, rel=0.02)


def test_bad_shapes_raise():
    with pytest.raises(ValueError):
        energy_distance(np.zeros((5, 2)), np.zeros((5, 3)))
    with pytest.raises(ValueError):
        sliced_wasserstein(np.zeros((5, 2)), np.full((5, 2), np.nan))
