"""benchmarks/bench_attention.py: each arm runs the attention path it names, and the quick
mode prints both paths and their ratio."""

import torch.nn.functional as F

from benchmarks.bench_attention import PATHS, _step_fn, main


def test_each_arm_takes_its_path(monkeypatch):
    calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    for name, fused in PATHS.items():
        calls.clear()
        _step_fn(8, 4, False, 1, fused)()
        assert len(calls) == (1 if fused else 0), name


def test_quick_mode_prints_both_paths_and_their_ratio(capsys):
    assert main(["--quick"]) == 0
    rows = {line.split("|")[1].strip(): line.strip("|").split("|")[1:]
            for line in capsys.readouterr().out.splitlines() if line.startswith("| ")}
    for path in PATHS:
        assert all(float(cell) > 0 for cell in rows[path]), rows[path]
    assert all(float(cell.strip().rstrip("x")) > 0 for cell in rows["written-out / fused"])
