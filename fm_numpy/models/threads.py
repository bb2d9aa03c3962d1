"""Data parallelism over threads for fm_numpy's networks: the batch of one step is cut into
K slices, each slice runs forward and backward on its own replica in its own thread, and
the parameter gradients of the slices are added.

Why it is exact: every network here (MLP, ResMLP, ConvUNet) maps each sample on its own
(LayerNorm and GroupNorm normalise within a sample, never across the batch), so a slice's
outputs are those rows of the whole batch's outputs. The training loss is a mean over the
whole batch, and its gradient dL/dv = 2 (v - ut) / (B D) is computed for the whole batch
before it is cut, so the gradient is a sum over samples and therefore over slices:

    dL/dtheta = sum_k sum_{b in slice k} (dL/dv_b)^T dv_b/dtheta

The sums run in another order than one pass over the batch, so the result equals it up
to rounding (tests/test_numpy_threads.py).

Why it is fast: NumPy releases the GIL inside its array loops and BLAS calls, and the
ConvUNet's step is mostly large array work (im2col copies, GroupNorm, SiLU, matrix
products), so two slices keep two cores busy. The slices are coarse (half a batch each
for two threads), so a thread the OS does not schedule costs at most its own slice: the
step is then about as slow as one thread, never much slower. fm_torch needs no twin of
this file: torch spreads each operation over its intra-op threads (`--threads`).

BLAS threads: each slice's matrix products would otherwise start the BLAS's own threads
too (OpenBLAS uses every core by default), K slices x C BLAS threads on C cores, which
made a user set OMP_NUM_THREADS=1 by hand. With threadpoolctl installed (the optional
extra `fm-dual[threads]`) the BLAS runs on one thread while the slices run, and on its
usual count again between steps; without it the behaviour is the old one, and one line
on stderr says how to avoid the oversubscription.
"""

import copy
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext

import numpy as np

__all__ = ["ThreadedModel", "default_threads", "threaded", "blas_one_thread"]

_BLAS_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
_controller = []  # [threadpoolctl.ThreadpoolController or None], built once
_HINT = ("fm_numpy: batch slices run on {k} threads, each with the BLAS's own threads; "
         "pip install threadpoolctl (fm-dual[threads]) or set OMP_NUM_THREADS=1 to avoid "
         "oversubscribing the cores\n")


def blas_one_thread():
    """A context manager that holds the loaded BLAS libraries at one thread (threadpoolctl),
    or a no-op when threadpoolctl is not installed. The controller is built once (listing
    the loaded libraries costs about 2 ms; a limit through it about 20 us)."""
    if not _controller:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _controller.append(None)
        else:
            import scipy.linalg  # noqa: F401  (load SciPy's BLAS too, so it is limited)

            _controller.append(ThreadpoolController())
    ctl = _controller[0]
    return nullcontext() if ctl is None else ctl.limit(limits=1, user_api="blas")


def default_threads(arch):
    """Batch slices run at once: 1 for the MLP (small 2-D batches; it has its own
    kernels, fm_numpy/kernels.py), else the cores this process may use, at most 4."""
    if arch == "mlp":
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(4, cores or 1))


def threaded(model, arch, threads=None):
    """`model` on `threads` slices (default `default_threads(arch)`), or model itself for 1."""
    threads = default_threads(arch) if threads is None else threads
    if int(threads) != threads or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads}")
    return ThreadedModel(model, threads) if threads > 1 else model


class ThreadedModel:
    """`model` (any fm_numpy network with forward/backward/params/grads) run on `threads`
    batch slices at once. `forward` and `backward` behave as the model's; every other
    attribute (params, save_npz, config, ...) is the model's own."""

    def __init__(self, model, threads):
        threads = int(threads)
        if threads < 1:
            raise ValueError(f"threads must be a positive integer, got {threads}")
        self.model = model
        self.threads = threads
        # replicas share the parameter arrays (the optimizer updates them in place) and
        # keep their own gradients, forward caches and (the MLP's) activation buffers
        self.replicas = []
        for _ in range(threads):
            replica = copy.copy(model)
            replica.grads = {k: np.zeros_like(p) for k, p in model.params.items()}
            replica._cache = None
            if hasattr(model, "_buffers"):
                replica._buffers = type(model._buffers)()
            self.replicas.append(replica)
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="fm_numpy_dp")
        self._slices = None
        blas_one_thread()  # build the controller now, outside the timed steps
        if _controller[0] is None and not any(os.environ.get(v) for v in _BLAS_VARS):
            sys.stderr.write(_HINT.format(k=threads))

    def __getattr__(self, name):
        return getattr(self.__dict__["model"], name)

    def _cut(self, B):
        """Up to `threads` contiguous slices of range(B), as even as possible."""
        bounds = np.linspace(0, B, min(self.threads, B) + 1).round().astype(int)
        return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def forward(self, x, t, y=None):
        """v = model(x, t, y), slice by slice on the replicas; (B, dim)."""
        x = np.asarray(x)
        B = x.shape[0]
        t = np.asarray(t)
        y = None if y is None else np.asarray(y)
        slices = self._cut(B)

        def part(replica, s):
            ts = t if t.ndim == 0 else t[s]  # a scalar t (or label) is every sample's
            ys = y if y is None or y.ndim == 0 else y[s]
            return replica.forward(x[s], ts, ys)

        with blas_one_thread():  # the slices are the parallelism: one BLAS thread each
            v = list(self._pool.map(part, self.replicas, slices))
        self._slices = slices
        return np.concatenate(v, axis=0)  # (B, dim)

    __call__ = forward

    def backward(self, dv):
        """model.backward(dv) for the last forward's batch: the replicas' gradients of
        their slices of dv (scaled for the whole batch), added; returns model.grads."""
        if self._slices is None:
            raise ValueError("backward needs a forward pass first")
        dv = np.asarray(dv)
        slices = self._slices
        if dv.shape[0] != slices[-1].stop:
            raise ValueError(f"dv must have {slices[-1].stop} rows, got {dv.shape[0]}")
        used = self.replicas[:len(slices)]
        with blas_one_thread():
            grads = list(self._pool.map(lambda r, s: r.backward(dv[s]), used, slices))
        G = self.model.grads
        for name, g in G.items():
            np.copyto(g, grads[0][name])
            for other in grads[1:]:
                g += other[name]  # sum over slices of the per-sample gradients
        return G
