"""benchmarks/gpu_check.sh refuses what it cannot do in one line (the GPU run itself is manual;
`bash benchmarks/gpu_check.sh --cpu` is its smoke test, about 1.5 minutes here)."""

import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_unknown_argument_is_one_line_and_exit_2():
    proc = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_check.sh"), "--gpu"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("gpu_check: error: unknown argument --gpu (use --cpu for a "
                                   "CPU smoke test)")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_driver_refuses_cuda_without_a_gpu():
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "gpu_check: error: this torch sees no CUDA device")
