"""The MLP and one training step agree across fm_numpy and fm_torch (property tests).

Properties (tolerances and their reasons: docs/crosscheck.md):
- weights cross the .npz file both ways (numpy -> torch and torch -> numpy) unchanged;
- with those weights, the forward pass, the loss mean((v - ut)^2) and the gradient of
  every parameter (numpy's manual backward against torch's autograd) agree, with and
  without labels (y=None is the null class), for random architectures, batches and t;
- fm_torch.objectives.flow_matching_loss equals the numpy loss.
Whole training steps (the real loops of both packages from the same draws: weights, EMA
and Adam's moments) are tests/test_crosscheck_loops.py; Adam alone, tests/test_numpy_optim.py.

Tolerances are relative to a "magnitude" pass: the same network run on |h_0|, |W|, |b|
(and back with |dL/dv|), which bounds the sum of |terms| of every dot product, so
round-off (BLAS summation order, transcendental ulps) is a small multiple of
eps * (fan-in) times it, however much the true values cancel.
"""

import numpy as np
import pytest
import torch
from crosscheck_helpers import RTOL, TORCH_DTYPE, assert_close, seeds
from hypothesis import given
from hypothesis import strategies as st

import fm_numpy.paths as np_paths
import fm_torch.paths as th_paths
from fm_numpy.models.mlp import MLP as NumpyMLP
from fm_torch.models.mlp import MLP as TorchMLP

DTYPES = [np.float64, np.float32]
SILU_SLOPE = 1.1  # max |silu'(a)| = 1.0998...; also |silu(a)| <= |a|


@st.composite
def architectures(draw):
    return {
        "dim": draw(st.integers(1, 64)),
        "hidden": draw(st.integers(1, 48)),
        "depth": draw(st.integers(1, 3)),
        "time_features": 2 * draw(st.integers(1, 8)),
        "num_classes": draw(st.one_of(st.none(), st.integers(1, 10))),
    }


@st.composite
def batches(draw, arch, dtype):
    """x (B, dim); t scalar or (B,), 0 and 1 drawn often; y None or ints incl. the null class."""
    B = draw(st.integers(1, 64))
    rng = np.random.default_rng(draw(seeds))
    x = rng.standard_normal((B, arch["dim"])).astype(dtype)
    target = rng.standard_normal((B, arch["dim"])).astype(dtype)
    t_kind = draw(st.sampled_from(["scalar", "per-sample", "endpoints"]))
    if t_kind == "scalar":
        t = draw(st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0, 1)))
    elif t_kind == "per-sample":
        t = rng.uniform(0, 1, B)
    else:
        t = rng.choice([0.0, 1.0], B)
    y = None
    if arch["num_classes"] and draw(st.booleans()):
        y = rng.integers(0, arch["num_classes"] + 1, B)  # num_classes = the null class
    return x, t, y, target


def _moved_pair(arch, seed, dtype, direction, tmp_path):
    """Models with equal weights; the weights are random (not the shared init) and travel
    through one .npz file in the given direction. Checks they arrive bit for bit."""
    file = tmp_path / "mlp.npz"
    if direction == "numpy->torch":
        src = NumpyMLP(**arch, seed=seed, dtype=dtype)
        rng = np.random.default_rng(seed + 1)
        for p in src.params.values():
            p += rng.normal(0, 0.1, p.shape).astype(dtype)
        src.save_npz(file)
        dst = TorchMLP.from_npz(file)
        weights = {k: p.copy() for k, p in src.params.items()}
    else:
        src = TorchMLP(**arch, seed=seed, dtype=TORCH_DTYPE[dtype])
        gen = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for p in src.parameters():
                p += 0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype)
        src.save_npz(file)
        dst = NumpyMLP.from_npz(file)
        weights = {k: p.detach().numpy().copy() for k, p in src.named_parameters()}
    mlp_np, mlp_th = (src, dst) if direction == "numpy->torch" else (dst, src)
    for name, p in mlp_th.named_parameters():
        np.testing.assert_array_equal(p.detach().numpy(), weights[name])
        np.testing.assert_array_equal(mlp_np.params[name], weights[name])
    assert mlp_np.dtype == dtype and mlp_th.dtype == TORCH_DTYPE[dtype]
    return mlp_np, mlp_th


def _h0(params, arch, x, t, y):
    """concat[x, cos(1000 t freqs), sin(1000 t freqs), E[y]] in float64 (for the scales)."""
    B, half = x.shape[0], arch["time_features"] // 2
    freqs = np.exp(-np.log(10000.0) * np.arange(half) / half)
    targ = 1000 * np.broadcast_to(np.asarray(t, dtype=np.float64), (B,))[:, None] * freqs
    parts = [x.astype(np.float64), np.cos(targ), np.sin(targ)]
    if arch["num_classes"]:
        rows = np.full(B, arch["num_classes"]) if y is None else y
        parts.append(params["E"][rows].astype(np.float64))
    return np.concatenate(parts, axis=1)  # (B, in)


def _magnitudes(params, arch, x, t, y, target):
    """Forward scale of v and backward scales of every gradient (see the module docstring)."""
    L = arch["depth"]
    W = [np.abs(params[f"W{i}"]).astype(np.float64) for i in range(L + 1)]
    b = [np.abs(params[f"b{i}"]).astype(np.float64) for i in range(L + 1)]
    F = [np.abs(_h0(params, arch, x, t, y))]  # |h_i| bounds
    A = []  # bounds of |terms| of a_i
    for i in range(L):
        A.append(F[i] @ W[i] + b[i])  # (B, H)
        F.append(A[i])
    v_scale = F[L] @ W[L] + b[L]  # (B, D)
    G_v = 2 * (v_scale + np.abs(target)) / target.size  # dL/dv = 2 (v - ut) / (B D)
    grads = {f"W{L}": F[L].T @ G_v, f"b{L}": G_v.sum(0)}
    G_h = G_v @ W[L].T
    for i in reversed(range(L)):
        # silu'(a) = s + h - h s: |terms| <= 1 + 2 |a|, and |silu'| <= 1.1 carries errors
        G_a = (SILU_SLOPE + 2 * A[i]) * G_h  # (B, H)
        grads[f"W{i}"], grads[f"b{i}"] = F[i].T @ G_a, G_a.sum(0)
        G_h = G_a @ W[i].T  # (B, in_i)
    if arch["num_classes"]:
        rows = np.full(x.shape[0], arch["num_classes"]) if y is None else y
        grads["E"] = np.zeros(params["E"].shape)
        np.add.at(grads["E"], rows, G_h[:, arch["dim"] + arch["time_features"]:])
    return v_scale, grads


def _numpy_loss_and_grads(mlp_np, x, t, y, target):
    """The loss and dL/dv of fm_numpy/train.py: L = mean(diff^2), dL/dv = 2 diff / (B D)."""
    v = mlp_np.forward(x, t, y)  # (B, D)
    diff = v - target
    loss = float(np.mean(diff * diff))
    grads = mlp_np.backward(diff * (2.0 / diff.size))
    return v, loss, {k: g.copy() for k, g in grads.items()}


def _torch_loss_and_grads(mlp_th, x, t, y, target):
    mlp_th.zero_grad()
    t_th = t if isinstance(t, float) else torch.from_numpy(np.asarray(t))
    v = mlp_th(torch.from_numpy(x), t_th, None if y is None else torch.from_numpy(y))
    loss = ((v - torch.from_numpy(target)) ** 2).mean()
    loss.backward()
    return v.detach(), loss.item(), {k: p.grad for k, p in mlp_th.named_parameters()}


@pytest.mark.parametrize("direction", ["numpy->torch", "torch->numpy"])
@pytest.mark.parametrize("dtype", DTYPES)
@given(arch=architectures(), seed=st.integers(0, 10**6), data=st.data())
def test_forward_loss_and_gradients_agree(dtype, direction, arch, seed, data, tmp_path_factory):
    mlp_np, mlp_th = _moved_pair(arch, seed, dtype, direction, tmp_path_factory.mktemp("w"))
    x, t, y, target = data.draw(batches(arch, dtype), label="batch")
    v_np, loss_np, g_np = _numpy_loss_and_grads(mlp_np, x, t, y, target)
    v_th, loss_th, g_th = _torch_loss_and_grads(mlp_th, x, t, y, target)
    v_scale, g_scales = _magnitudes(mlp_np.params, arch, x, t, y, target)
    rtol = RTOL[dtype]
    assert_close(v_np, v_th, v_scale, rtol, "forward v")
    loss_scale = np.mean((v_scale + np.abs(target)) ** 2)
    assert abs(loss_np - loss_th) <= rtol * loss_scale, f"loss {loss_np!r} != {loss_th!r}"
    assert sorted(g_np) == sorted(g_th) == sorted(mlp_np.params)
    for name in g_np:
        assert_close(g_np[name], g_th[name], g_scales[name], rtol, f"gradient {name}")
    if y is None and arch["num_classes"]:  # only the null row of E gets a gradient
        assert not g_np["E"][: arch["num_classes"]].any()


def _loss_pair(dtype, sched, seed, B):
    """numpy's training loss and fm_torch.objectives.flow_matching_loss on the same batch."""
    from fm_torch.objectives import flow_matching_loss

    arch = {"dim": 3, "hidden": 8, "depth": 2, "time_features": 4, "num_classes": None}
    mlp_np = NumpyMLP(**arch, seed=seed % 1000, dtype=dtype)
    mlp_th = TorchMLP(**arch, seed=seed % 1000, dtype=TORCH_DTYPE[dtype])
    rng = np.random.default_rng(seed)
    x0, x1 = rng.standard_normal((2, B, 3)).astype(dtype)
    t = rng.uniform(0, 1, B).astype(dtype)
    xt, ut = np_paths.AffinePath(np_paths.make_scheduler(sched)).sample(x0, x1, t)
    _, loss_np, _ = _numpy_loss_and_grads(mlp_np, xt, t, None, ut)
    loss_th = flow_matching_loss(
        mlp_th, th_paths.AffinePath(th_paths.make_scheduler(sched)), torch.from_numpy(x1), None,
        torch.from_numpy(x0), torch.from_numpy(t))
    v_scale, _ = _magnitudes(mlp_np.params, arch, xt, t, None, ut)
    loss_scale = np.mean((v_scale + np.abs(ut)) ** 2)
    return loss_np, loss_th.item(), loss_scale


@given(sched=st.sampled_from(["condot", "cosine", "linear_vp"]), seed=seeds, B=st.integers(1, 32))
def test_torch_flow_matching_loss_matches_numpy_loss(sched, seed, B):
    loss_np, loss_th, loss_scale = _loss_pair(np.float32, sched, seed, B)
    assert abs(loss_np - loss_th) <= RTOL[np.float32] * loss_scale, (loss_np, loss_th)


def test_torch_flow_matching_loss_matches_numpy_loss_float64():
    loss_np, loss_th, loss_scale = _loss_pair(np.float64, "condot", 0, 16)
    assert abs(loss_np - loss_th) <= RTOL[np.float64] * loss_scale, (loss_np, loss_th)
