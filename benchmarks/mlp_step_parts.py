"""Where one fm_numpy MLP training step spends its time: matrix products against elementwise work.

The pieces of fm_numpy's step (fm_numpy.models.mlp.MLP forward and backward, fm_numpy.optim.Adam,
fm_numpy.ema.EMA) are timed on their own, with the calls the step makes on the buffers it
uses, beside torch's kernels for the same shapes (what a torch MLP step runs: addmm for a
Linear layer, silu and its backward, mm for the weight and input gradients, Adam with its
default foreach update). All pieces are timed in one interleaved loop (the order reversed
every other repetition), in CPU-seconds on one thread, wall-clock seconds on more. Used
by bench_mlp_step (`python -m benchmarks.bench_mlp_step`).

    python -m benchmarks.mlp_step_parts [--size notebook|bench] [--reps N]
"""

import argparse
import time

import numpy as np

SIZES = {"bench": (256, 3, 512), "notebook": (512, 4, 4096)}  # hidden, depth, batch

DIM = 2


def numpy_parts(hidden, depth, batch):
    """{part: fn} over one fm_numpy MLP after a forward pass (float32, the fast kernels)."""
    from fm_numpy import kernels
    from fm_numpy.ema import EMA
    from fm_numpy.models.mlp import MLP
    from fm_numpy.optim import Adam

    rng = np.random.default_rng(0)
    model = MLP(DIM, hidden, depth, dtype=np.float32)
    opt, ema = Adam(model.params, lr=1e-3), EMA(model.params, 0.999)
    x = rng.standard_normal((batch, DIM), dtype=np.float32)  # (B, D)
    t = rng.random(batch, dtype=np.float32)  # (B,)
    dv = 1e-3 * rng.standard_normal((batch, DIM), dtype=np.float32)  # (B, D) dL/dv
    model.forward(x, t)
    model.backward(dv)
    buf, P, G, L = model._cache[0], model.params, model.grads, depth
    h_in = [buf.h0] + buf.h[:-1]  # (B, in) inputs of the layers

    def gemm_forward():
        for i in range(L):
            np.matmul(h_in[i], P[f"W{i}"], out=buf.a[i])  # (B, H)
        return buf.h[L - 1] @ P[f"W{L}"]  # (B, D)

    def silu_forward():
        with np.errstate(over="ignore"):
            for i in range(L):  # a += b drifts by b per call: harmless for a timing
                kernels.silu_forward(buf.a[i], P[f"b{i}"], buf.s[i], buf.h[i])

    def gemm_backward():
        np.matmul(buf.h[L - 1].T, dv, out=G[f"W{L}"])  # (H, D)
        np.matmul(dv, P[f"W{L}"].T, out=buf.dh)  # (B, H)
        for i in reversed(range(L)):
            np.matmul(h_in[i].T, buf.da, out=G[f"W{i}"])  # (in, H)
            if i > 0:
                np.matmul(buf.da, P[f"W{i}"].T, out=buf.dh)  # (B, H)

    def elementwise_backward():
        for i in reversed(range(L)):
            kernels.silu_backward(buf.dh, buf.s[i], buf.h[i], buf.da)  # (B, H)
            np.sum(buf.da, axis=0, out=G[f"b{i}"])  # (H,)

    return {"matmul, forward": gemm_forward, "SiLU forward (bias, sigmoid, product)": silu_forward,
            "matmul, backward (dW and dh)": gemm_backward,
            "SiLU backward and bias sums": elementwise_backward,
            "Adam": lambda: opt.step(G), "EMA": lambda: ema.update(P)}


def torch_parts(hidden, depth, batch):
    """{part: fn}: torch's kernels for the same shapes (float32, torch's current threads)."""
    import torch
    from torch.nn import functional as F

    gen = torch.Generator().manual_seed(0)
    widths = [DIM + 1] + [hidden] * depth + [DIM]  # Meta's notebook network: [x, t] in
    W = [torch.randn(widths[i], widths[i + 1], generator=gen) / widths[i] ** 0.5
         for i in range(depth + 1)]
    b = [torch.zeros(widths[i + 1]) for i in range(depth + 1)]
    h = [torch.randn(batch, w, generator=gen) for w in widths[:-1]]  # (B, in) layer inputs
    a = [torch.randn(batch, hidden, generator=gen) for _ in range(depth)]  # (B, H)
    dv = torch.randn(batch, DIM, generator=gen)  # (B, D)
    dh = torch.randn(batch, hidden, generator=gen)  # (B, H)
    params = [torch.nn.Parameter(w.clone()) for w in W + b]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    opt = torch.optim.Adam(params, lr=1e-3)

    def gemm_forward():
        for i in range(depth + 1):
            torch.addmm(b[i], h[i] if i < depth else a[-1], W[i])  # (B, out)

    def gemm_backward():
        torch.mm(a[-1].T, dv)  # (H, D)
        torch.mm(dv, W[depth].T)  # (B, H)
        for i in reversed(range(depth)):
            torch.mm(h[i].T, dh)  # (in, H)
            if i > 0:
                torch.mm(dh, W[i].T)  # (B, H)

    def elementwise_backward():
        for i in range(depth):
            torch.ops.aten.silu_backward(dh, a[i]).sum(0)  # (B, H), bias gradient (H,)

    return {"matmul, forward": gemm_forward,
            "SiLU forward (bias, sigmoid, product)": lambda: [F.silu(x) for x in a],
            "matmul, backward (dW and dh)": gemm_backward,
            "SiLU backward and bias sums": elementwise_backward,
            "Adam": opt.step}


def measure(hidden, depth, batch, reps, clock=None):
    """{part: (fm_numpy median s, torch median s or None)} from one interleaved loop.

    clock: default time.process_time on one thread (CPU-seconds: a loaded machine's
    preemptions, which fall on long calls more than on short ones, are left out), else
    wall-clock (CPU time would count the BLAS threads' spinning)."""
    import torch

    from benchmarks.common import blas_threads

    if clock is None:
        clock = time.process_time if blas_threads() == 1 else time.perf_counter
    with torch.no_grad():
        fns = {("fm_numpy", k): f for k, f in numpy_parts(hidden, depth, batch).items()}
        fns.update({("torch", k): f for k, f in torch_parts(hidden, depth, batch).items()})
        for f in fns.values():  # warm-up: buffers, allocator, thread pools
            f()
        times = {name: [] for name in fns}
        for r in range(reps):  # interleaved, the order reversed every other repetition
            for name in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
                start = clock()
                fns[name]()
                times[name].append(clock() - start)
    parts = [k for who, k in fns if who == "fm_numpy"]
    return {k: (float(np.median(times["fm_numpy", k])),
                float(np.median(times["torch", k])) if ("torch", k) in times else None)
            for k in parts}


def report(parts, step_s=None):
    """A markdown table of the parts: ms, share of their sum, torch's ms for the same shapes."""
    total = sum(v[0] for v in parts.values())
    lines = ["| part | fm_numpy ms | share | torch kernels, same shapes, ms |",
             "|---|---:|---:|---:|"]
    for k, (mine, theirs) in parts.items():
        lines.append(f"| {k} | {1e3 * mine:.2f} | {mine / total:.0%} | "
                     f"{'-' if theirs is None else f'{1e3 * theirs:.2f}'} |")
    gemm = sum(v[0] for k, v in parts.items() if k.startswith("matmul"))
    lines += ["", f"Matrix products {gemm / total:.0%} of the parts' sum, elementwise work "
              f"(SiLU, bias sums, Adam, EMA) {1 - gemm / total:.0%}."]
    if step_s:
        lines[-1] += (f" The parts add up to {1e3 * total:.1f} ms; a whole step (draws, path, "
                      f"loss, checks included) took {1e3 * step_s:.1f} ms.")
    return "\n".join(lines)


def main(argv=None):
    from benchmarks.common import blas_threads

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="notebook")
    parser.add_argument("--reps", type=int, default=9)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(blas_threads())
    hidden, depth, batch = SIZES[args.size]
    print(f"{args.size} size (hidden {hidden}, depth {depth}, batch {batch}), "
          f"{blas_threads()} thread(s):\n")
    print(report(measure(hidden, depth, batch, args.reps)))


if __name__ == "__main__":
    main()
