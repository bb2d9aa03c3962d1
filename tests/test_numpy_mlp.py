"""fm_numpy.models.mlp: manual gradients, jvp and divergence against central finite differences."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fm_numpy.models.mlp import MLP

shapes = st.fixed_dictionaries({
    "dim": st.integers(1, 4),
    "hidden": st.integers(1, 6),
    "depth": st.integers(1, 3),
    "time_features": st.sampled_from([2, 4, 6]),
    "num_classes": st.sampled_from([None, 1, 3]),
    "B": st.integers(1, 5),
    "seed": st.integers(0, 2**16),
})


def _inputs(cfg, labels):
    rng = np.random.default_rng(cfg["seed"] + 1)
    x = rng.standard_normal((cfg["B"], cfg["dim"]))
    t = rng.uniform(0, 1, cfg["B"])
    y = None
    if labels and cfg["num_classes"]:
        y = rng.integers(0, cfg["num_classes"] + 1, cfg["B"])  # includes the null row
    return x, t, y


def _model(cfg):
    return MLP(cfg["dim"], cfg["hidden"], cfg["depth"], cfg["time_features"],
               cfg["num_classes"], seed=cfg["seed"], dtype=np.float64)


@given(cfg=shapes, labels=st.booleans())
def test_every_gradient_matches_central_differences(cfg, labels):
    model = _model(cfg)
    x, t, y = _inputs(cfg, labels)
    w = np.random.default_rng(cfg["seed"] + 2).standard_normal((cfg["B"], cfg["dim"]))

    def loss():  # L = sum(w * v), so dL/dv = w
        return float(np.sum(w * model(x, t, y)))

    model(x, t, y)
    grads = {k: g.copy() for k, g in model.backward(w).items()}
    assert set(grads) == set(model.params)
    eps = 1e-6
    for name, p in model.params.items():
        fd = np.zeros_like(p)
        for idx in np.ndindex(p.shape):
            old = p[idx]
            p[idx] = old + eps
            up = loss()
            p[idx] = old - eps
            down = loss()
            p[idx] = old
            fd[idx] = (up - down) / (2 * eps)
        err = np.abs(grads[name] - fd).max() / max(1.0, np.abs(fd).max())
        assert err < 1e-6, (name, err)


@given(cfg=shapes, labels=st.booleans())
def test_jvp_and_divergence_match_finite_differences(cfg, labels):
    model = _model(cfg)
    x, t, y = _inputs(cfg, labels)
    D, eps = cfg["dim"], 1e-6
    jac = np.zeros((cfg["B"], D, D))  # J[b, i, j] = dv_i / dx_j
    for j in range(D):
        e = np.zeros(D)
        e[j] = eps
        jac[:, :, j] = (model(x + e, t, y) - model(x - e, t, y)) / (2 * eps)
    dx = np.random.default_rng(cfg["seed"] + 3).standard_normal(x.shape)
    v, jdx = model.jvp(x, t, dx, y)
    np.testing.assert_allclose(v, model(x, t, y), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(jdx, np.einsum("bij,bj->bi", jac, dx), rtol=1e-6, atol=1e-7)
    v2, div = model.divergence(x, t, y)
    assert div.shape == (cfg["B"],)
    np.testing.assert_allclose(v2, v, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(div, np.trace(jac, axis1=1, axis2=2), rtol=1e-6, atol=1e-7)


def test_divergence_in_chunks_for_784_dimensions(monkeypatch):
    import fm_numpy.models.mlp as mlp_module

    model = MLP(784, hidden=16, depth=2, time_features=4, num_classes=10, dtype=np.float64)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((3, 784)), np.array([1, 5, 10])
    _, div_one_pass = model.divergence(x, 0.3, y)
    monkeypatch.setattr(mlp_module, "_DIVERGENCE_BUDGET", 3 * 16 * 100)  # chunks of 100 columns
    _, div_chunked = model.divergence(x, 0.3, y)
    np.testing.assert_allclose(div_chunked, div_one_pass, rtol=1e-12)
    # independent check: trace of the Jacobian built column by column with jvp
    trace = np.zeros(3)
    for j in range(0, 784, 7):  # a subset of columns, compared with the partial sum below
        e = np.zeros_like(x)
        e[:, j] = 1
        trace += model.jvp(x, 0.3, e, y)[1][:, j]
    T = _partial_trace(model, x, 0.3, y, range(0, 784, 7))
    np.testing.assert_allclose(trace, T, rtol=1e-6, atol=1e-9)


def _partial_trace(model, x, t, y, cols, eps=1e-6):
    out = np.zeros(x.shape[0])
    for j in cols:
        e = np.zeros_like(x)
        e[:, j] = eps
        out += (model(x + e, t, y)[:, j] - model(x - e, t, y)[:, j]) / (2 * eps)
    return out


def test_scalar_t_broadcasts_and_returned_v_is_not_a_buffer():
    model = MLP(2, hidden=8, depth=2)
    x = np.random.default_rng(0).standard_normal((5, 2)).astype(np.float32)
    v1 = model(x, 0.25)
    np.testing.assert_array_equal(v1, model(x, np.full(5, 0.25)))
    v1_copy = v1.copy()
    model(x + 1, 0.75)
    np.testing.assert_array_equal(v1, v1_copy)
    assert v1.dtype == np.float32


def test_null_label_equals_unconditional_call():
    model = MLP(3, hidden=8, depth=2, num_classes=4, dtype=np.float64)
    x = np.random.default_rng(1).standard_normal((6, 3))
    np.testing.assert_array_equal(model(x, 0.5, None), model(x, 0.5, np.full(6, 4)))
    assert not np.allclose(model(x, 0.5, None), model(x, 0.5, np.zeros(6, int)))


@pytest.mark.parametrize("bad", [
    dict(x=np.zeros((4, 3)), t=0.5, y=None),
    dict(x=np.zeros((4, 2)), t=1.5, y=None),
    dict(x=np.zeros((4, 2)), t=np.zeros(3), y=None),
    dict(x=np.zeros((4, 2)), t=0.5, y=np.array([0, 1, 2, 9])),
])
def test_bad_inputs_raise_value_error(bad):
    model = MLP(2, hidden=4, depth=1, num_classes=3)
    with pytest.raises(ValueError):
        model(**bad)


def test_save_load_roundtrip_and_architecture_check(tmp_path):
    model = MLP(2, hidden=8, depth=2, num_classes=3, seed=4)
    path = tmp_path / "m.npz"
    model.save_npz(path)
    with np.load(path, allow_pickle=False) as f:
        assert set(f.files) == set(model.params) | {"config"}
    loaded = MLP.from_npz(path)
    x = np.ones((2, 2), np.float32)
    np.testing.assert_array_equal(loaded(x, 0.1, np.array([0, 2])), model(x, 0.1, np.array([0, 2])))
    fresh = MLP(2, hidden=8, depth=2, num_classes=3, seed=99).load_npz(path)
    np.testing.assert_array_equal(fresh.params["W1"], model.params["W1"])
    with pytest.raises(ValueError, match="hidden"):
        MLP(2, hidden=16, depth=2, num_classes=3).load_npz(path)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError):
        MLP.from_npz(tmp_path / "bad.npz")
