"""SIGTERM outside training: the command unwinds like Ctrl-C, exit 143, and no temporary
file of a half-written output is left behind (fm_numpy/cli.py run_command)."""

import os
import signal
import subprocess
import sys
import time

from fm_numpy.models.mlp import MLP


def test_sigterm_while_sampling_leaves_no_temporary_file(tmp_path):
    model = tmp_path / "model.npz"
    MLP(2, 16, 2, 8, seed=0).save_npz(str(model))
    out = tmp_path / "samples.npz"
    env = {**os.environ, "FM_DUAL_SLOW_WRITE": "60"}  # hold the finished write open
    proc = subprocess.Popen(
        [sys.executable, "-m", "fm_numpy.cli", "sample", "--model", str(model), "-n", "64",
         "--steps", "2", "--out", str(out)], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(p.startswith(".tmp-") for p in os.listdir(tmp_path)):
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "the output's temporary file never appeared"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "terminated" in err and "Traceback" not in err
    assert [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")] == []
    assert not out.exists()
