"""The CUDA paths, run only where torch sees a CUDA device (the gate is the machine, not a
caught failure): bf16 autocast and torch.compile (inductor, the GPU default) train and
give the float32 eager run's losses within their tolerances. On a CPU-only machine this
reports as skipped; the CPU versions of the same paths are in tests/test_torch_sync.py.
Never run yet: no GPU was lent to the session that wrote it."""

import pytest
import torch

from fm_torch.train import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device: the GPU paths need one")

TOY = dict(data="8gaussians", hidden=16, depth=2, batch=64, lr=1e-2, toy_pool=2048,
           sample_every=1000, ckpt_every=5)


def _losses(run):
    return [v for _, v, _ in run[1]]


def test_cuda_fp32_bf16_and_compile_train(tmp_path):
    eager = _losses(train(tmp_path / "e", progress=False, device="cuda", steps=5, **TOY))
    bf16 = _losses(train(tmp_path / "b", progress=False, device="cuda", steps=5, bf16=True,
                         **TOY))
    compiled = _losses(train(tmp_path / "c", progress=False, device="cuda", steps=5,
                             compile=True, **TOY))
    assert all(v == v for v in eager + bf16 + compiled)  # finite, not NaN
    assert bf16 != eager  # bf16 changed the arithmetic
    for a, b in zip(bf16, eager, strict=True):
        assert abs(a - b) <= 0.05 * abs(b)  # bf16 keeps about 3 significant digits
    for a, b in zip(compiled, eager, strict=True):
        assert abs(a - b) <= 1e-3 * abs(b)  # a fused graph may reorder float32 sums (TF32 off)

