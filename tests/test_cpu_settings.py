"""fm_torch/cpu.py: the thread count, the precision choice and the OpenMP wait policy."""

import subprocess
import sys

import pytest

from fm_torch import cpu


def test_wait_policy_is_set_only_where_the_user_has_not():
    env = {}
    assert cpu.openmp_wait_policy(env) == cpu.WAIT_POLICY
    assert env == cpu.WAIT_POLICY
    for user in ({"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "300000"}):
        env = dict(user)
        assert cpu.openmp_wait_policy(env) == {}
        assert env == user  # the user's choice stands


def test_importing_fm_torch_sets_the_policy_before_torch_loads_openmp():
    code = ("import os; os.environ.pop('OMP_WAIT_POLICY', None); "
            "os.environ.pop('GOMP_SPINCOUNT', None); import fm_torch, torch; "
            "print(os.environ.get('OMP_WAIT_POLICY'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "PASSIVE"


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor : 0\nflags\t\t: fpu sse2 avx2 avx512_bf16 amx_tile\n")
    flags = cpu.cpu_flags(str(info))
    assert {"avx2", "avx512_bf16"} <= flags
    assert cpu.native_bf16(flags)
    assert not cpu.native_bf16({"avx2", "fma"})
    assert cpu.cpu_flags(str(tmp_path / "missing")) == set()


def test_precision_follows_the_cpu_and_the_probe():
    calls = []

    def probe(faster):
        def seconds(bf16):
            calls.append(bf16)
            return {False: 1.0, True: 1.0 / faster}[bf16]
        return seconds

    no_bf16 = cpu.choose_cpu_settings(threads=2, probe=probe(3.0), flags={"avx2"})
    assert no_bf16["bf16"] is False and calls == []  # no native bf16: no probe at all
    assert "no native bf16" in no_bf16["why"]
    assert cpu.choose_cpu_settings(threads=2, probe=probe(1.5), flags={"amx_bf16"})["bf16"]
    # five steps of each, alternated so that a passing load falls on both alike
    assert calls == [False, True, True, False, False, True, True, False, False, True]
    slow = cpu.choose_cpu_settings(threads=2, probe=probe(1.05), flags={"amx_bf16"})
    assert slow["bf16"] is False and "probe" in slow["why"]  # under 10 % faster: fp32
    given = cpu.choose_cpu_settings(threads=1, bf16=True, flags={"avx2"})
    assert given == {"threads": 1, "bf16": True, "why": "1 thread (given), bf16 (given)"}


def test_threads_default_to_the_usable_cores_and_refuse_nonsense():
    assert cpu.choose_cpu_settings(flags=set())["threads"] == cpu.usable_cores() >= 1
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="threads must be a positive integer"):
            cpu.choose_cpu_settings(threads=bad, flags=set())


def test_default_threads_follow_omp_num_threads_else_the_cores():
    assert cpu.default_threads(1, {"OMP_NUM_THREADS": "3"}) == 3
    cores = cpu.usable_cores()
    assert cpu.default_threads(1, {}) == cores
    assert cpu.default_threads(2, {"OMP_NUM_THREADS": "junk"}) == max(1, cores // 2)


def test_probe_compares_medians_so_one_stalled_step_cannot_decide():
    # bf16 truly 1.5x faster, but its first timed step stalls (another process took the core)
    times = {False: [1.0] * 5, True: [9.0] + [1 / 1.5] * 4}

    def probe(bf16):
        return times[bf16].pop(0)

    choice = cpu.choose_cpu_settings(threads=1, probe=probe, flags={"avx512_bf16"})
    assert choice["bf16"] is True and "1000 ms in fp32, 667 ms in bf16" in choice["why"]


def test_step_probe_warms_each_precision_once_and_leaves_no_gradients():
    import torch

    class Field(torch.nn.Module):  # v(x, t, y), as the probe calls it
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(3, 3)

        def forward(self, x, t, y=None):
            calls.append(torch.is_autocast_enabled("cpu"))
            return self.linear(x) * t[:, None]

    calls = []
    model = Field()
    probe = cpu.step_probe(model, (3,), None, batch=4)
    assert probe(False) >= 0 and probe(False) >= 0 and probe(True) >= 0
    assert calls == [False, False, False, True, True]  # a warm-up before the first of each
    assert all(p.grad is None for p in model.parameters())


def test_configure_cpu_probes_on_the_threads_the_run_will_use(monkeypatch):
    import torch

    seen = []

    def fake_step_probe(*args):
        seen.append(torch.get_num_threads())
        return lambda bf16: 1.0

    before = torch.get_num_threads()
    monkeypatch.delenv("FM_TORCH_BF16", raising=False)  # conftest pins fp32: let it choose
    monkeypatch.setattr(cpu, "step_probe", fake_step_probe)
    monkeypatch.setattr(cpu, "cpu_flags", lambda cpuinfo=None: {"amx_bf16"})
    try:
        for threads in (1, 2):
            choice = cpu.configure_cpu(None, (2,), None, 8, threads=threads)
            assert seen[-1] == threads == choice["threads"] == torch.get_num_threads()
            assert choice["bf16"] is False  # equal times: not 10 % faster
    finally:
        torch.set_num_threads(before)


def _config(out):
    import json

    with open(out / "config.json") as f:
        return json.load(f)


def test_train_records_and_prints_its_cpu_choice(tmp_path, monkeypatch, capsys):
    from fm_torch.train import train

    monkeypatch.delenv("FM_TORCH_BF16", raising=False)  # conftest pins fp32: let it choose
    monkeypatch.setattr(cpu, "cpu_flags", lambda cpuinfo=None: {"avx2"})  # no native bf16
    train(tmp_path / "a", progress=True, data="moons", steps=3, batch=16, hidden=8, depth=1,
          threads=1)
    config = _config(tmp_path / "a")
    assert config["bf16"] is False and config["cpu"]["threads"] == 1
    assert "no native bf16" in config["cpu"]["why"]
    assert capsys.readouterr().out.count("fm-torch train: 1 thread (given), fp32") == 1
    # a native-bf16 CPU: the probe of the real step decides, and says what it measured
    monkeypatch.setattr(cpu, "cpu_flags", lambda cpuinfo=None: {"amx_bf16"})
    train(tmp_path / "b", progress=False, data="moons", steps=3, batch=16, hidden=8, depth=1,
          threads=1)
    assert "probe: a step takes" in _config(tmp_path / "b")["cpu"]["why"]
    # given, and a resume that changes the precision (allowed: docs/torch.md)
    train(tmp_path / "c", progress=False, data="moons", steps=2, batch=16, hidden=8, depth=1,
          threads=1, bf16=True)
    assert _config(tmp_path / "c")["bf16"] is True
    train(tmp_path / "c", resume=True, progress=False, steps=4, threads=1)
    assert _config(tmp_path / "c")["bf16"] is True  # the run's own precision when not given
    train(tmp_path / "c", resume=True, progress=False, steps=6, threads=1, bf16=False)
    assert _config(tmp_path / "c")["bf16"] is False


def test_fm_torch_bf16_sets_the_default_precision_and_refuses_nonsense(tmp_path, monkeypatch):
    from fm_torch.train import train

    assert cpu.env_bf16({}) is None and cpu.env_bf16({"FM_TORCH_BF16": ""}) is None
    assert cpu.env_bf16({"FM_TORCH_BF16": "1"}) is True
    assert cpu.env_bf16({"FM_TORCH_BF16": "0"}) is False
    with pytest.raises(ValueError, match="FM_TORCH_BF16 must be 0 or 1"):
        cpu.env_bf16({"FM_TORCH_BF16": "yes"})
    monkeypatch.setattr(cpu, "cpu_flags", lambda cpuinfo=None: {"amx_bf16"})  # would probe
    monkeypatch.setattr(cpu, "step_probe", lambda *a: pytest.fail("probed despite the env"))
    monkeypatch.setenv("FM_TORCH_BF16", "1")
    train(tmp_path / "a", progress=False, data="moons", steps=2, batch=16, hidden=8, depth=1,
          threads=1)
    assert _config(tmp_path / "a")["bf16"] is True
    assert _config(tmp_path / "a")["cpu"]["why"] == "1 thread (given), bf16 (FM_TORCH_BF16)"
    train(tmp_path / "b", progress=False, data="moons", steps=2, batch=16, hidden=8, depth=1,
          threads=1, bf16=False)  # the flag wins over the environment
    assert _config(tmp_path / "b")["bf16"] is False
    assert _config(tmp_path / "b")["cpu"]["why"].endswith("fp32 (given)")
