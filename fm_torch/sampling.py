"""Sampling many points in chunks (the torch twin of fm_numpy/sampling.py).

Rows of a batch move independently under dx/dt = v(x, t), so integrating `chunk` rows
at a time and keeping only each chunk's end state (odeint(..., only_last=True)) gives
the whole batch's result with the memory of one chunk. `check_output_fits` and
`NpzStreamWriter` (files, no tensors) are fm_numpy's. `sample` integrates a trained
network from x0 to t = 1 (plots, reflow, the CLIs; fm_torch.train re-exports it).
"""

import torch

from fm_numpy.sampling import DEFAULT_CHUNK, NpzStreamWriter, _check_chunk, check_output_fits
from fm_torch.solvers import odeint

__all__ = ["DEFAULT_CHUNK", "IMAGE_CHUNK_CPU", "default_chunk", "sample", "bf16_forward",
           "sample_in_chunks", "check_output_fits", "NpzStreamWriter"]

# Images integrated at a time by a U-Net on a CPU: the activations of 100 MNIST images stay
# in cache, 2.3x faster an image than 500 in fp32 (docs/benchmarks.md, "Sampling on a CPU").
IMAGE_CHUNK_CPU = 100


def default_chunk(images, device):
    """Rows integrated at a time when the user names none: IMAGE_CHUNK_CPU for images on a
    CPU, DEFAULT_CHUNK otherwise (points, or a GPU, where larger batches keep it busy)."""
    on_cpu = str(device).split(":")[0] == "cpu"  # a bad device name is refused where used
    return IMAGE_CHUNK_CPU if images and on_cpu else DEFAULT_CHUNK


def bf16_forward(model):
    """model(x, t, y) with the network under bf16 autocast and its output cast back to x's
    dtype: the matrix products run in bf16, the ODE state and the solver's steps stay in
    x's dtype (float32 for images), so rounding enters only through v."""

    def forward(x, t, y=None):
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            v = model(x, t, y)  # (B, ...) bf16
        return v.to(x.dtype)

    return forward


@torch.no_grad()
def sample(model, x0, y=None, guidance=1.0, method="midpoint", steps=20, return_nfe=False,
           bf16=False, guidance_interval=None):
    """Integrate dx/dt = v(x, t) from x0 (t=0) to t=1 on a uniform grid of `steps` intervals.

    With labels y, v is classifier-free guided: v_uncond + w (v_cond - v_uncond), only for
    t in guidance_interval (t_lo, t_hi) when one is given (ClassifierFreeGuidance).
    A MeanFlow model with method "euler" takes `steps` average-velocity steps instead
    (fm_torch.meanflow.sample; NFE = steps); a diffusion model's flow starts at its t_min
    (its own flow_sample); neither takes bf16 (the network under bf16 autocast,
    bf16_forward) or a guidance interval. Returns the trajectory (steps + 1, *x0.shape)
    [and the NFE].
    """
    from fm_torch.solvers import ClassifierFreeGuidance

    own_sampler = hasattr(model, "flow_sample") or (getattr(model, "mean_flow", False)
                                                     and method == "euler")
    if own_sampler and (bf16 or guidance_interval is not None):
        raise ValueError("bf16 sampling and a guidance interval are for the flow ODE; this "
                         "diffusion or MeanFlow model samples its own way")

    if hasattr(model, "flow_sample"):  # a diffusion model's flow starts at t_min
        return model.flow_sample(x0, y, guidance, method, steps, return_nfe)
    if getattr(model, "mean_flow", False) and method == "euler":
        from fm_torch.meanflow import sample as meanflow_sample

        xs = meanflow_sample(model, x0, steps, y, guidance)  # (steps + 1, *x0.shape)
        return (xs, int(steps)) if return_nfe else xs
    if int(steps) < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    if bf16:
        model = bf16_forward(model)
    v = ClassifierFreeGuidance(model, y, guidance, guidance_interval) if y is not None else (
        lambda x, t: model(x, t, None))
    t_grid = torch.linspace(0, 1, int(steps) + 1, dtype=torch.float64)
    return odeint(v, x0, t_grid, method=method, return_nfe=return_nfe)


@torch.no_grad()
def sample_in_chunks(v, x0, t_grid, method="euler", chunk=DEFAULT_CHUNK, y=None, n=None,
                     sink=None, progress=None):
    """x(t_grid[-1]) for every row of x0, integrating `chunk` rows at a time.

    x0: a tensor (N, ...), or a callable draw(k) returning the next k rows (then n = N is
    required; torch.randn from one generator gives the rows of one big draw when every
    chunk holds a multiple of 16 numbers). v(x, t), or v(x, t, y[lo:hi]) with labels y.
    sink: None (returns one (N, ...) tensor on x0's device) or sink(x1_rows), called in
    row order (then nothing is returned). progress: optional progress(rows_done).
    """
    chunk = _check_chunk(chunk)
    draw = x0 if callable(x0) else None
    if draw is None:
        n = len(x0)
    elif n is None or int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer when x0 is a callable, got {n!r}")
    n = int(n)
    if y is not None and len(y) != n:
        raise ValueError(f"y must have {n} labels, got {len(y)}")
    out = None
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        rows = draw(hi - lo) if draw is not None else x0[lo:hi]
        field = v if y is None else (lambda x, t, _y=y[lo:hi]: v(x, t, _y))
        x1 = odeint(field, rows, t_grid, method=method, only_last=True)  # (hi - lo, ...)
        if sink is not None:
            sink(x1)
        else:
            if out is None:
                out = x1.new_empty((n,) + tuple(x1.shape[1:]))  # (N, ...)
            out[lo:hi] = x1
        if progress is not None:
            progress(hi - lo)
    return out
