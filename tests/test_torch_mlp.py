"""fm_torch.models.mlp against fm_numpy.models.mlp: forward through the shared .npz, gradients."""

import numpy as np
import pytest

from fm_numpy.models.mlp import MLP as NumpyMLP

torch = pytest.importorskip("torch")
from fm_torch.models.mlp import MLP as TorchMLP  # noqa: E402

CONFIGS = [
    dict(dim=2, hidden=16, depth=3, time_features=8, num_classes=None),
    dict(dim=5, hidden=7, depth=1, time_features=4, num_classes=3),
    dict(dim=3, hidden=12, depth=2, time_features=6, num_classes=10),
]


def _inputs(cfg, B=9, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, cfg["dim"]))
    t = rng.uniform(0, 1, B)
    y = rng.integers(0, cfg["num_classes"] + 1, B) if cfg["num_classes"] else None
    return x, t, y


@pytest.mark.parametrize("cfg", CONFIGS)
def test_same_initial_weights_and_parameter_names(cfg):
    np_model = NumpyMLP(**cfg, seed=3, dtype=np.float64)
    t_model = TorchMLP(**cfg, seed=3, dtype=torch.float64)
    names = [k for k, _ in t_model.named_parameters()]
    assert names == list(np_model.params)
    for k, p in t_model.named_parameters():
        np.testing.assert_array_equal(p.detach().numpy(), np_model.params[k])


@pytest.mark.parametrize("cfg", CONFIGS)
def test_forward_agrees_through_npz_both_ways(cfg, tmp_path):
    x, t, y = _inputs(cfg)
    np_model = NumpyMLP(**cfg, seed=1, dtype=np.float64)
    np_model.save_npz(tmp_path / "a.npz")
    t_model = TorchMLP(**cfg, seed=2, dtype=torch.float64).load_npz(tmp_path / "a.npz")
    with torch.no_grad():
        v_torch = t_model(torch.from_numpy(x), torch.from_numpy(t), y).numpy()
    np.testing.assert_allclose(v_torch, np_model(x, t, y), rtol=1e-12, atol=1e-13)
    # and back: perturb in torch, save, load in numpy
    with torch.no_grad():
        for p in t_model.parameters():
            p.add_(0.01)
    t_model.save_npz(tmp_path / "b.npz")
    back = NumpyMLP.from_npz(tmp_path / "b.npz")
    with torch.no_grad():
        v_torch = t_model(torch.from_numpy(x), torch.from_numpy(t), y).numpy()
        v_scalar_t = t_model(torch.from_numpy(x), 0.4).numpy()
    np.testing.assert_allclose(back(x, t, y), v_torch, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(back(x, 0.4), v_scalar_t, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("cfg", CONFIGS)
def test_autograd_gradients_equal_manual_gradients(cfg):
    x, t, y = _inputs(cfg, seed=4)
    np_model = NumpyMLP(**cfg, seed=5, dtype=np.float64)
    t_model = TorchMLP(**cfg, seed=5, dtype=torch.float64)
    target = np.random.default_rng(6).standard_normal(x.shape)
    v = np_model(x, t, y)
    grads = np_model.backward(2 * (v - target) / v.size)  # d mean((v - target)^2) / dv
    loss = torch.mean((t_model(torch.from_numpy(x), torch.from_numpy(t), y)
                       - torch.from_numpy(target)) ** 2)
    loss.backward()
    for k, p in t_model.named_parameters():
        np.testing.assert_allclose(grads[k], p.grad.numpy(), rtol=1e-10, atol=1e-13, err_msg=k)


def test_load_refuses_other_architecture(tmp_path):
    NumpyMLP(2, hidden=8, depth=2).save_npz(tmp_path / "m.npz")
    with pytest.raises(ValueError, match="depth"):
        TorchMLP(2, hidden=8, depth=3).load_npz(tmp_path / "m.npz")
