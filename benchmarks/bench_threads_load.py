"""Threads under load: the demo U-Net's training step on 1 and 2 threads, with OpenMP's
waiting threads spinning (libgomp's default) or passive (what fm_torch sets), on a quiet
machine and beside a competing process that keeps one core busy.

    python -m benchmarks.bench_threads_load            # 5 rounds, medians
    python -m benchmarks.bench_threads_load --quick    # 1 round of 2 steps each

Each variant runs in a fresh process (libgomp reads OMP_WAIT_POLICY once, when torch
loads it); the variants are interleaved round by round, so a change of the machine's
load hits them alike. Prints ms per step (batch 128 or --batch, AdamW) and the ratio to 1
thread. The short spin (GOMP_SPINCOUNT=10000) spins briefly, then sleeps. --bf16 runs the
step under bf16 autocast, as `fm-torch train` does on a CPU with native bf16.
"""

import argparse
import json
import os
import subprocess
import sys
import time

VARIANTS = {  # name: (threads, environment)
    "1 thread": (1, {}),
    "2 threads, spinning wait": (2, {"OMP_WAIT_POLICY": "ACTIVE"}),
    "2 threads, passive wait": (2, {"OMP_WAIT_POLICY": "PASSIVE"}),
    "2 threads, short spin": (2, {"GOMP_SPINCOUNT": "10000"}),
}

STEP = """
import json, sys, time, torch
torch.set_num_threads({threads})
from fm_torch.models.unet import UNet
torch.manual_seed(0)
model = UNet(channels=1, base=16, mults=(1, 2, 2), num_classes=10)
opt = torch.optim.AdamW(model.parameters(), 1e-3)
x = torch.randn({batch}, 1, 28, 28); t = torch.rand({batch}); y = torch.randint(0, 10, ({batch},))
def step():
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled={bf16}):
        loss = ((model(x, t, y) - x) ** 2).mean()
    opt.zero_grad(); loss.backward(); opt.step()
step()
times = []
for _ in range({steps}):
    start = time.perf_counter(); step(); times.append(time.perf_counter() - start)
print(json.dumps(sorted(times)[len(times) // 2]))
"""


def _busy():
    """A process that keeps one core busy until killed."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def _time(threads, env, steps, batch, bf16=False):
    environ = {k: v for k, v in os.environ.items()
               if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}
    script = STEP.format(threads=threads, steps=steps, batch=batch, bf16=bool(bf16))
    out = subprocess.run([sys.executable, "-c", script], env={**environ, **env},
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_threads_load")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per process")
    parser.add_argument("--batch", type=int, default=128, help="images per step (default 128)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (default fp32)")
    parser.add_argument("--quick", action="store_true", help="1 round of 2 steps")
    args = parser.parse_args(argv)
    rounds, steps = (1, 2) if args.quick else (args.rounds, args.steps)
    print(f"cpu: {_model_name()}, {os.cpu_count()} cores, torch threads vs OpenMP wait policy"
          f" (batch {args.batch}, {'bf16 autocast' if args.bf16 else 'fp32'})")
    for load in ("quiet", "one core busy"):
        busy = _busy() if load != "quiet" else None
        try:
            time.sleep(0.5 if busy else 0)
            seconds = {name: [] for name in VARIANTS}
            for _ in range(rounds):
                for name, (threads, env) in VARIANTS.items():
                    seconds[name].append(_time(threads, env, steps, args.batch, args.bf16))
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()
        base = sorted(seconds["1 thread"])[len(seconds["1 thread"]) // 2]
        print(f"\n{load}:")
        for name, values in seconds.items():
            median = sorted(values)[len(values) // 2]
            print(f"  {name:26s} {1000 * median:7.0f} ms/step  x{median / base:.2f} of 1 thread"
                  f"   (rounds: {', '.join(f'{1000 * v:.0f}' for v in values)})")
    return 0


def _model_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
