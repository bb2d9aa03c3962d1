"""fm_numpy/models/threads.py: a batch cut into slices computed in threads gives the whole
batch's outputs and gradients (every network maps each sample on its own), for the MLP,
the ResMLP and the ConvUNet, even and uneven slices, scalar and per-sample t; train()
with threads follows the one-thread run up to rounding."""

import numpy as np
import pytest

from fm_numpy.models.convnet import ConvUNet
from fm_numpy.models.mlp import MLP
from fm_numpy.models.resmlp import ResMLP
from fm_numpy.models.threads import ThreadedModel
from fm_numpy.train import train

NETWORKS = {
    "mlp": lambda: MLP(6, 16, 2, 4, num_classes=3, seed=1, dtype=np.float64),
    "resmlp": lambda: ResMLP(6, 16, 2, 4, num_classes=3, seed=1, dtype=np.float64),
    "convnet": lambda: ConvUNet(36, hidden=4, depth=2, time_features=4, num_classes=3, seed=1,
                                dtype=np.float64),
}


def _perturbed(name):
    """The network with random weights everywhere (zero-initialised layers hide errors)."""
    model = NETWORKS[name]()
    rng = np.random.default_rng(7)
    for p in model.params.values():
        p[...] = 0.3 * rng.standard_normal(p.shape)
    return model


@pytest.mark.parametrize("name", sorted(NETWORKS))
@pytest.mark.parametrize("B, threads", [(8, 2), (7, 3), (2, 4)])
def test_slices_give_the_whole_batch(name, B, threads):
    model = _perturbed(name)
    dim = model.dim
    rng = np.random.default_rng(B + threads)
    x = rng.standard_normal((B, dim))  # (B, dim)
    t = rng.random(B)  # (B,)
    y = rng.integers(0, 4, B)  # 3 is the null class
    dv = rng.standard_normal((B, dim))  # (B, dim) an arbitrary dL/dv
    v_ref = model.forward(x, t, y).copy()
    g_ref = {k: g.copy() for k, g in model.backward(dv).items()}
    net = ThreadedModel(model, threads)
    v = net.forward(x, t, y)
    g = net.backward(dv)
    np.testing.assert_allclose(v, v_ref, rtol=1e-12, atol=1e-12)
    assert g is model.grads  # what the optimizer is handed, as for the model
    # one scale for all: a bias followed by a one-channel GroupNorm has a gradient of
    # rounding size only, which no relative test per array can hold to
    scale = max(np.abs(gr).max() for gr in g_ref.values())
    for k in g_ref:
        np.testing.assert_allclose(g[k] / scale, g_ref[k] / scale, atol=1e-12, err_msg=k)
    assert sum(1 for k in g_ref if np.abs(g_ref[k]).max() > 0) > len(g_ref) // 2


def test_scalar_t_no_labels_and_shared_weights():
    model = MLP(3, 8, 2, 4, seed=0, dtype=np.float64)
    net = ThreadedModel(model, 2)
    x = np.random.default_rng(0).standard_normal((6, 3))  # (6, 3)
    np.testing.assert_allclose(net(x, 0.3), model(x, 0.3), rtol=1e-12)
    # the replicas read the model's arrays: an in-place update (as Adam's) reaches them
    model.params[next(iter(model.params))] += 1.0
    np.testing.assert_allclose(net(x, 0.3), model(x, 0.3), rtol=1e-12)
    # each replica has its own gradients and activation buffers (equal slices share a size)
    a, b = net.replicas
    assert a.grads["W0"] is not b.grads["W0"] and a._buffers is not b._buffers
    assert net.num_parameters == model.num_parameters  # other attributes are the model's


def test_bad_use_is_refused():
    model = MLP(2, 8, 2, 4, seed=0)
    with pytest.raises(ValueError, match="threads"):
        ThreadedModel(model, 0)
    net = ThreadedModel(model, 2)
    with pytest.raises(ValueError, match="forward pass first"):
        net.backward(np.zeros((4, 2)))
    net.forward(np.zeros((4, 2)), 0.5)
    with pytest.raises(ValueError, match="4 rows"):
        net.backward(np.zeros((5, 2)))


def test_train_with_threads_follows_one_thread(tmp_path):
    settings = dict(data="moons", arch="resmlp", batch=64, hidden=16, depth=2,
                    time_features=8, lr=5e-3, steps=30, ckpt_every=30, dtype="float64")
    _, one = train(tmp_path / "one", progress=False, threads=1, **settings)
    _, two = train(tmp_path / "two", progress=False, threads=2, **settings)
    np.testing.assert_allclose([v for _, v in two], [v for _, v in one], rtol=1e-9)
    with pytest.raises(ValueError, match="threads"):
        train(tmp_path / "bad", progress=False, threads=0, **settings)


def test_cli_sample_threads_give_the_same_images(tmp_path):
    pytest.importorskip("matplotlib")
    from fm_numpy.cli import main

    model = ConvUNet(784, hidden=2, depth=3, time_features=4, num_classes=10, seed=3)
    rng = np.random.default_rng(3)
    for p in model.params.values():
        p[...] = 0.2 * rng.standard_normal(p.shape)
    model.save_npz(tmp_path / "m.npz")
    images = {}
    for threads in (1, 3):
        out = tmp_path / f"s{threads}.npz"
        assert main(["sample", "--model", str(tmp_path / "m.npz"), "--steps", "2", "-n", "14",
                     "--chunk", "7", "--guidance", "2", "--threads", str(threads),
                     "--out", str(out)]) == 0
        with np.load(out, allow_pickle=False) as f:
            images[threads] = f["images"]
    assert images[1].std() > 0.01  # the weights move the pixels: a real comparison
    np.testing.assert_allclose(images[3], images[1], atol=1e-5)
    assert main(["sample", "--model", str(tmp_path / "m.npz"), "-n", "2", "--threads", "0",
                 "--out", str(tmp_path / "bad.npz")]) == 2
