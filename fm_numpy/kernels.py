"""Fast elementwise kernels beside the plain lines of fm_numpy/models/mlp.py and fm_numpy/optim.py.

Each kernel runs exactly the ufunc sequence of the plain code it replaces, element for
element, so its results are bitwise identical (tests/test_numpy_kernels.py proves it in
float32 and float64). What changes is only the order in which memory is visited:

  - row blocks: the work is cut into blocks of about `BLOCK` numbers that stay in the
    L2 cache, and all the ufuncs of one block run before the next block is touched. The
    plain code streams each (B, H) array through memory once per ufunc (six times for
    the SiLU forward); a block version streams it once.
  - threads (opt-in, FM_NUMPY_THREADS=N): NumPy releases the GIL inside a ufunc loop, so
    the blocks can be shared out over `num_threads()` Python threads, each claiming the
    next block when done with one. Small arrays stay
    on the calling thread, where a thread hand-off would cost more than it saves.

Kernels (equations as in the plain code):
    silu_forward:   a <- a + b,  s = 1 / (1 + exp(-a)),  h = a s
    silu_backward:  da = (s + h - h s) dh           (silu'(a) = s + h - h s)
    adam_update:    m <- m + (1 - beta1)(g - m),  s <- beta2 s + (1 - beta2) g g,
                    p <- p - step_size m / (sqrt(s) / sqrt(bias_correction2) + eps)
"""

import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

__all__ = ["BLOCK", "num_threads", "silu_forward", "silu_backward", "adam_update"]

BLOCK = 1 << 15  # numbers per block: 128 KB in float32, several arrays fit in L2 together
# arrays smaller than this run on the calling thread: at (512, 256) a hand-off saves
# less than it risks on a loaded machine (a helper descheduled inside its block)
_THREAD_MIN = 1 << 19
_ONE_BLOCK_MAX = 1 << 17  # on one thread, arrays up to this size are one block (_run_rows)
_pool = None
_pool_threads = 0
_pool_lock = threading.Lock()


def num_threads():
    """Threads for elementwise work: FM_NUMPY_THREADS, else 1.

    One by default: in two side-by-side runs on the shared 2-core machine (load 6 to 12,
    docs/benchmarks.md) two threads made the notebook-size step slower, not faster (a
    helper descheduled inside its block stalls the caller); on a quiet machine they
    halve the SiLU forward's elementwise time. FM_NUMPY_THREADS=2 turns them on.
    """
    value = os.environ.get("FM_NUMPY_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else 1


def _executor(threads):
    global _pool, _pool_threads
    with _pool_lock:
        if _pool is None or _pool_threads != threads:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(threads, thread_name_prefix="fm_numpy")
            _pool_threads = threads
        return _pool


def _run_rows(work, rows, row_size, errstate=None):
    """Call work(r0, r1) for every row block of [0, rows), on up to num_threads() threads.

    Blocks are claimed one at a time from a shared counter by the calling thread and the
    helpers alike, and the call returns as soon as every block is done: a helper that the
    OS has not scheduled yet (a loaded machine) finds nothing left to do, so the kernel is
    never slower than one thread by more than the hand-off. On one thread an array of at
    most _ONE_BLOCK_MAX numbers is one block: it stays in cache between the ufuncs anyway,
    and each block costs its calls (0.71 against 0.57 ms for a (512, 256) SiLU forward).
    `errstate`: np.errstate settings for the helper threads (the caller sets its own; the
    setting is per thread, and setting it once per call, not per block, saves its cost).
    """
    threads = num_threads()
    if threads <= 1 and rows * row_size <= _ONE_BLOCK_MAX:
        work(0, rows)
        return
    step = max(1, BLOCK // max(1, row_size))
    starts = range(0, rows, step)
    threads = min(threads, len(starts))
    if threads <= 1 or rows * row_size < _THREAD_MIN or threading.current_thread().name.startswith(
            "fm_numpy"):
        for r0 in starts:
            work(r0, min(rows, r0 + step))
        return
    claim = itertools.count()  # next() on a count is atomic under the GIL
    lock, finished, state = threading.Lock(), threading.Event(), {"done": 0, "error": None}

    def drain():
        n = 0
        try:
            with np.errstate(**(errstate or {})):
                while (k := next(claim)) < len(starts):
                    work(starts[k], min(rows, starts[k] + step))
                    n += 1
        except BaseException as e:  # handed to the caller, which would wait forever otherwise
            state["error"] = e
            finished.set()
            return
        with lock:
            state["done"] += n
            if state["done"] == len(starts):
                finished.set()

    pool = _executor(threads - 1)
    for _ in range(threads - 1):
        pool.submit(drain)
    drain()
    finished.wait()
    if state["error"] is not None:
        raise state["error"]


def silu_forward(a, b, s, h):
    """In place over (B, H) arrays: a += b; s = sigmoid(a); h = a s (the plain loop's lines)."""

    def work(r0, r1):
        ab, sb = a[r0:r1], s[r0:r1]
        ab += b  # (rows, H)
        np.negative(ab, out=sb)
        np.exp(sb, out=sb)  # overflow ignored (below): exp(-a) = inf gives s = 0 exactly
        sb += 1
        np.reciprocal(sb, out=sb)  # sigmoid(a) = 1 / (1 + exp(-a))
        np.multiply(ab, sb, out=h[r0:r1])  # h = a sigmoid(a)

    with np.errstate(over="ignore"):  # per thread: here, and in the helpers by _run_rows
        _run_rows(work, a.shape[0], a.shape[1], errstate={"over": "ignore"})


def silu_backward(dh, s, h, da):
    """da = (s + h - h s) dh over (B, H) arrays, in the plain backward's order of operations."""

    def work(r0, r1):
        sb, hb, d = s[r0:r1], h[r0:r1], da[r0:r1]
        np.multiply(hb, sb, out=d)  # h s
        np.subtract(hb, d, out=d)  # h - h s
        d += sb  # silu'(a) = s + h - h s
        d *= dh[r0:r1]  # dL/da

    _run_rows(work, da.shape[0], da.shape[1])


def adam_update(p, g, m, s, tmp, beta1, beta2, eps, step_size, bias_correction2_sqrt):
    """One Adam update of p in place (m, s the moments, tmp scratch), as fm_numpy.optim.Adam."""
    flat = [x.reshape(-1) for x in (p, g, m, s, tmp)]
    if not all(np.shares_memory(x, y) for x, y in zip(flat, (p, g, m, s, tmp), strict=True)):
        raise ValueError("adam_update needs contiguous arrays")  # reshape copied
    pf, gf, mf, sf, tf = flat

    def work(r0, r1):
        gb, mb, sb, tb = gf[r0:r1], mf[r0:r1], sf[r0:r1], tf[r0:r1]
        np.subtract(gb, mb, out=tb)
        tb *= 1 - beta1
        mb += tb  # m + (1 - beta1) (g - m)
        sb *= beta2
        np.multiply(gb, 1 - beta2, out=tb)
        tb *= gb
        sb += tb  # beta2 s + (1 - beta2) g g
        np.sqrt(sb, out=tb)
        tb /= bias_correction2_sqrt
        tb += eps  # denominator sqrt(s_hat) + eps
        np.divide(mb, tb, out=tb)
        tb *= step_size
        pf[r0:r1] -= tb

    _run_rows(work, pf.size, 1)
