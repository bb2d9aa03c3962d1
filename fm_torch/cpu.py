"""Threads and precision for training on a CPU: chosen once per run, printed, recorded.

Threads. torch runs its intra-op work on OpenMP threads (libgomp in the pip builds). At
the end of every parallel region a thread that is done waits for the others, and by
default it *spins* for a while before it sleeps. When another process holds one of the
cores, the thread that lives there is descheduled, and its partner spins through a whole
scheduler time slice at every one of the thousands of barriers of a training step: on the
2-core build machine two threads then ran a U-Net step 2.8-5.4x slower than one thread
(docs/benchmarks.md, "Threads under load"). A waiting thread that yields instead of
spinning (OMP_WAIT_POLICY=PASSIVE, or a short GOMP_SPINCOUNT) removes the collapse. libgomp
reads these variables once, when torch loads it, so `openmp_wait_policy()` must run
before `import torch` (fm_torch/__init__.py calls it); a value the user set is kept.

Precision. bf16 autocast helps a CPU with native bf16 arithmetic (AVX512-BF16, AMX):
measured 1.3-2x on such an Intel part (issue 24). Without it the casts cost more than
they save, so fp32 is chosen there without a probe; with it, a short probe of the real
training step decides (bf16 only when it is at least 10 % faster; five steps of each,
alternated, on the run's thread count, so that a load that comes and goes cannot decide).
"""

import os
import time

__all__ = ["WAIT_POLICY", "openmp_wait_policy", "usable_cores", "cpu_flags",
           "native_bf16", "choose_cpu_settings", "step_probe",
           "default_threads", "env_bf16", "configure_cpu"]

# what fm_torch sets unless the user chose: see the module docstring and docs/benchmarks.md
WAIT_POLICY = {"OMP_WAIT_POLICY": "PASSIVE"}
BF16_MIN_SPEEDUP = 1.10
PROBE_ROUNDS = 5  # timed steps of each precision in the probe


def openmp_wait_policy(environ=os.environ):
    """Set WAIT_POLICY's variables where the user has not; returns those set now."""
    if any(k in environ for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")):
        return {}
    environ.update(WAIT_POLICY)
    return dict(WAIT_POLICY)


def usable_cores():
    """The cores this process may run on (its affinity mask; os.cpu_count() elsewhere)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_flags(cpuinfo="/proc/cpuinfo"):
    """The CPU's feature flags (Linux); an empty set where they cannot be read."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16(flags=None):
    """True when the CPU multiplies bf16 natively (AVX512-BF16 or AMX-BF16)."""
    flags = cpu_flags() if flags is None else flags
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def choose_cpu_settings(threads=None, bf16=None, probe=None, flags=None, cores=None,
                        rounds=PROBE_ROUNDS, bf16_from="given"):
    """{"threads": n, "bf16": bool, "why": str} for a CPU run.

    threads: the given count, else `cores` (default: the usable cores). bf16: the given
    choice; else fp32 on a CPU without native bf16; else `probe(bf16) -> seconds` of one
    training step decides (bf16 when at least BF16_MIN_SPEEDUP times faster): `rounds`
    calls of each precision, alternated fp32, bf16, bf16, fp32, ... so that a load that
    comes and goes falls on both alike, and the medians compared. Without a probe a
    native-bf16 CPU gets bf16. `bf16_from` names where a given bf16 came from (the text).
    """
    if threads is not None and (isinstance(threads, bool) or int(threads) != threads
                                or threads < 1):
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    n = int(threads) if threads is not None else (cores or usable_cores())
    why = [f"{n} thread{'s' if n > 1 else ''} ({'given' if threads else 'usable cores'})"]
    if bf16 is not None:
        why.append(f"{'bf16' if bf16 else 'fp32'} ({bf16_from})")
        return {"threads": n, "bf16": bool(bf16), "why": ", ".join(why)}
    if not native_bf16(flags):
        why.append("fp32 (no native bf16 on this CPU: no avx512_bf16 / amx_bf16)")
        return {"threads": n, "bf16": False, "why": ", ".join(why)}
    if probe is None:
        why.append("bf16 (native bf16 on this CPU)")
        return {"threads": n, "bf16": True, "why": ", ".join(why)}
    seconds = {False: [], True: []}
    for r in range(rounds):
        for use in ((False, True) if r % 2 == 0 else (True, False)):
            seconds[use].append(probe(use))
    fp32_s, bf16_s = (sorted(seconds[use])[rounds // 2] for use in (False, True))
    use = fp32_s >= BF16_MIN_SPEEDUP * bf16_s
    why.append(f"{'bf16' if use else 'fp32'} (probe: a step takes {1000 * fp32_s:.0f} ms in "
               f"fp32, {1000 * bf16_s:.0f} ms in bf16, medians of {rounds})")
    return {"threads": n, "bf16": use, "why": ", ".join(why)}


def step_probe(model, shape, num_classes, batch):
    """probe(bf16) -> seconds of one forward and backward pass of `model` on a batch of
    `batch` random samples of `shape` (its own generator: the run's draws are untouched;
    the gradients are cleared again). The first call of each precision is a warm-up,
    untimed; the thread count is whatever torch has when it is called."""
    import torch

    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(0)
    x = torch.randn((batch, *shape), generator=g).to(device)  # (B, ...)
    t = torch.rand(batch, generator=g).to(device)  # (B,)
    y = None if not num_classes else torch.randint(0, num_classes, (batch,), generator=g)
    y = None if y is None else y.to(device)
    warm = set()

    def step(bf16):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            v = model(x, t, y)  # (B, ...)
        v.float().square().mean().backward()
        model.zero_grad(set_to_none=True)

    def seconds(bf16):
        if bf16 not in warm:
            warm.add(bf16)
            step(bf16)
        start = time.perf_counter()
        step(bf16)
        return time.perf_counter() - start

    return seconds


def default_threads(world_size=1, environ=os.environ):
    """OMP_NUM_THREADS where the user set it, else the usable cores shared among the
    world_size processes of this machine (at least 1)."""
    try:
        given = int(environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        given = 0
    return given if given >= 1 else max(1, usable_cores() // max(1, int(world_size)))


def env_bf16(environ=os.environ):
    """FM_TORCH_BF16: "1" bf16, "0" fp32, unset or empty None (the run chooses)."""
    value = environ.get("FM_TORCH_BF16", "").strip()
    if value not in ("", "0", "1"):
        raise ValueError(f"FM_TORCH_BF16 must be 0 or 1, got {value!r}")
    return None if value == "" else value == "1"


def configure_cpu(model, shape, num_classes, batch, threads=None, bf16=None, world_size=1):
    """Choose and apply (torch.set_num_threads) the threads and precision of a CPU run.

    Default threads: default_threads(world_size); default precision: FM_TORCH_BF16 where
    set (env_bf16; the test suite sets 0, so that its numbers do not depend on the CPU),
    else the probe's choice. The probe calls `model` 12 times outside the training loop."""
    import torch

    from_env = bf16 is None and env_bf16() is not None
    if from_env:
        bf16 = env_bf16()
    cores = default_threads(world_size)
    n = choose_cpu_settings(threads, bf16=False, cores=cores)["threads"]  # checks `threads`
    torch.set_num_threads(n)  # the probe times the step on the run's own threads
    probe = step_probe(model, shape, num_classes, batch) if bf16 is None else None
    return choose_cpu_settings(threads, bf16, probe, cores=cores,
                               bf16_from="FM_TORCH_BF16" if from_env else "given")
