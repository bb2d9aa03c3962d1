"""benchmarks/bench_vs_torchcfm.py: our recipe is the demo's, torchcfm's model is called its way.

The budget runs themselves are benchmarks (minutes of CPU); here only the pieces that decide
what is compared: the settings handed to fm_torch.train are the ones `fm-torch train` builds
from the demo's flags (benchmarks/demo.py's TORCH_TRAIN), apart from the horizon the budget
sets, and the wrapper gives torchcfm's model(t, x, y) one time per sample.
"""

import torch

from benchmarks.bench_vs_torchcfm import CfmVelocity, demo_settings
from benchmarks.demo import TORCH_TRAIN

BUDGET_SET = {"steps", "warmup", "ckpt_every", "sample_every"}  # set by the budget, not the demo


def test_demo_settings_are_what_the_cli_builds_from_the_demo_flags(monkeypatch, tmp_path):
    import fm_torch.train
    from fm_torch.cli import main

    seen = {}

    def fake_train(out, **kwargs):  # the CLI's call, captured instead of training
        seen.update(kwargs)
        return None, []

    monkeypatch.setattr(fm_torch.train, "train", fake_train)
    assert main(["train", *TORCH_TRAIN, "--out", str(tmp_path / "run")]) == 0
    cli = {k: v for k, v in seen.items() if v is not None and k not in BUDGET_SET}
    ours = demo_settings()
    for key, value in ours.items():
        assert cli[key] == value, key
    # every demo flag except the budget's arrived: none was dropped on the way
    flags = {f.lstrip("-").replace("-", "_") for f in TORCH_TRAIN[::2]}
    assert set(ours) == flags - BUDGET_SET
    assert ours["lr"] == 2e-3 and ours["mults"] == [1, 2, 2] and ours["batch"] == 128


class _Recorder(torch.nn.Module):
    def forward(self, t, x, y=None):
        self.t, self.y = t, y
        return x * t[:, None, None, None] + (0 if y is None else y[:, None, None, None])


def test_torchcfm_wrapper_calls_model_t_x_y_with_one_time_per_sample():
    inner = _Recorder()
    v = CfmVelocity(inner)
    x = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(0))  # (3, 1, 2, 2)
    y = torch.tensor([0, 4, 9])
    out = v(x, torch.tensor(0.25, dtype=torch.float64), y)  # a solver's scalar float64 time
    assert inner.t.shape == (3,) and inner.t.dtype == x.dtype
    assert torch.equal(inner.t, torch.full((3,), 0.25))
    assert torch.equal(inner.y, y)
    torch.testing.assert_close(out, x * 0.25 + y[:, None, None, None], rtol=0, atol=0)
    per_sample = torch.tensor([0.0, 0.5, 1.0])
    v(x, per_sample, y)
    assert torch.equal(inner.t, per_sample)
