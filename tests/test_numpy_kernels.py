"""fm_numpy.kernels (the fast path) gives bitwise the numbers of the plain lines it replaces."""

import numpy as np
import pytest

from fm_numpy import kernels
from fm_numpy.models.mlp import MLP
from fm_numpy.optim import Adam


@pytest.fixture(params=[1, 2, 3], ids=lambda n: f"{n}threads")
def threads(request, monkeypatch):
    monkeypatch.setenv("FM_NUMPY_THREADS", str(request.param))
    monkeypatch.setattr(kernels, "_THREAD_MIN", 1 << 12)  # small test arrays use threads too
    return request.param


def _pair(dtype, num_classes=None, **kw):
    fast = MLP(3, 100, 3, num_classes=num_classes, dtype=dtype, **kw)
    plain = MLP(3, 100, 3, num_classes=num_classes, dtype=dtype, **kw)
    plain.fast = False
    return fast, plain


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("num_classes", [None, 4])
def test_mlp_fast_equals_plain_bitwise(dtype, num_classes, threads):
    # B = 1000 rows of width 100: ragged blocks (327 rows each) and a thread split
    rng = np.random.default_rng(0)
    B = 1000
    x = (3 * rng.standard_normal((B, 3))).astype(dtype)  # large |a| reaches exp overflow
    t = rng.uniform(0, 1, B).astype(dtype)
    y = rng.integers(0, 5, B) if num_classes else None
    fast, plain = _pair(dtype, num_classes)
    fast.params["b0"][:5] = -1000  # saturate: exp(-a) = inf must give s = 0 both ways
    for k, p in plain.params.items():
        p[...] = fast.params[k]
    v_fast, v_plain = fast.forward(x, t, y), plain.forward(x, t, y)
    assert np.array_equal(v_fast, v_plain)
    assert np.any(fast._cache[0].s[0] == 0)  # the saturated branch was exercised
    dv = rng.standard_normal((B, 3)).astype(dtype)
    g_fast, g_plain = fast.backward(dv), plain.backward(dv)
    for k in g_plain:
        assert g_fast[k].dtype == dtype
        assert np.array_equal(g_fast[k], g_plain[k]), k


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("weight_decay,decoupled", [(0.0, False), (0.1, False), (0.1, True)])
def test_adam_fast_equals_plain_bitwise(dtype, weight_decay, decoupled, threads):
    rng = np.random.default_rng(1)
    shapes = {"W": (300, 400), "b": (400,), "c": (7, 3)}  # one above the thread threshold
    params_f = {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
    params_p = {k: p.copy() for k, p in params_f.items()}
    opt_f = Adam(params_f, lr=1e-2, weight_decay=weight_decay, decoupled=decoupled)
    opt_p = Adam(params_p, lr=1e-2, weight_decay=weight_decay, decoupled=decoupled)
    opt_p.fast = False
    for _ in range(3):
        grads = {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
        opt_f.step({k: g.copy() for k, g in grads.items()})
        opt_p.step(grads)
    for k in shapes:
        assert params_f[k].dtype == dtype
        assert np.array_equal(params_f[k], params_p[k]), k
        assert np.array_equal(opt_f.s[k], opt_p.s[k]), k


def test_kernels_match_their_equations_in_float64():
    # an independent check of the plain formulas themselves: sigmoid by tanh, silu' by
    # the quotient rule
    rng = np.random.default_rng(2)
    a = rng.standard_normal((50, 40))
    b = rng.standard_normal(40)
    a0 = a.copy()
    s, h, da = np.empty_like(a), np.empty_like(a), np.empty_like(a)
    kernels.silu_forward(a, b, s, h)
    z = a0 + b
    sig = 0.5 * (1 + np.tanh(z / 2))
    np.testing.assert_allclose(s, sig, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(h, z * sig, rtol=1e-14, atol=1e-15)
    dh = rng.standard_normal((50, 40))
    kernels.silu_backward(dh, s, h, da)
    np.testing.assert_allclose(da, dh * (sig + z * sig * (1 - sig)), rtol=1e-12, atol=1e-14)


def test_num_threads_reads_the_environment(monkeypatch):
    monkeypatch.setenv("FM_NUMPY_THREADS", "3")
    assert kernels.num_threads() == 3
    monkeypatch.delenv("FM_NUMPY_THREADS")
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    assert kernels.num_threads() == 1  # opt-in only: the BLAS setting does not turn them on


def test_blocks_are_shared_between_threads_and_each_done_once(monkeypatch):
    import threading

    monkeypatch.setenv("FM_NUMPY_THREADS", "2")
    seen, names = [], set()
    has_a_block = {"caller": threading.Event(), "helper": threading.Event()}

    def work(r0, r1):
        name = threading.current_thread().name
        me, other = ("helper", "caller") if name.startswith("fm_numpy") else ("caller", "helper")
        if name not in names:
            # each thread's first block waits until the other thread holds one. No clock
            # decides this: the helper is submitted before the caller drains, both claim
            # from one counter and the waiting thread holds only one block, so the other
            # arrives however loaded the machine is. The bound only ends a broken run (one
            # thread doing everything) instead of hanging the suite.
            names.add(name)
            has_a_block[me].set()
            assert has_a_block[other].wait(600), f"the {other} thread never took a block"
        seen.append((r0, r1))

    kernels._run_rows(work, 4096, 256)  # 1 << 20 numbers, blocks of 128 rows
    assert sorted(seen) == [(r, r + 128) for r in range(0, 4096, 128)]
    assert len(names) == 2


def test_an_error_in_a_helper_thread_reaches_the_caller(monkeypatch):
    import threading

    monkeypatch.setenv("FM_NUMPY_THREADS", "2")
    helper_started = threading.Event()

    def work(r0, r1):
        if threading.current_thread().name.startswith("fm_numpy"):
            helper_started.set()
            raise FloatingPointError("from the helper")
        helper_started.wait(5)

    with pytest.raises(FloatingPointError, match="from the helper"):
        kernels._run_rows(work, 4096, 256)
