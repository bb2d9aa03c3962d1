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
    assert calls == [False, True]
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


def test_probe_takes_the_median_after_a_warm_up():
    counter = []
    assert cpu.probe_seconds(lambda: counter.append(1), reps=3) >= 0
    assert len(counter) == 4


def _config(out):
    import json

    with open(out / "config.json") as f:
        return json.load(f)


def test_train_records_and_prints_its_cpu_choice(tmp_path, monkeypatch, capsys):
    from fm_torch.train import train

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
