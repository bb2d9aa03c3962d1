"""Every benchmark's quick mode, and the demo's, runs to exit 0 from a fresh copy of the tree.

`make bench-quick` (python -m benchmarks.run --quick) and `make demo` are README commands;
each benchmark here runs in a subprocess, in a copy of the working tree made once into a
temporary folder (no runs/ left by an earlier run, as on a fresh clone: bench_mnist's
quick mode once failed only there). --no-docs keeps docs/benchmarks.md as it is. Marked
slow and bench_quick: together they take about 6 minutes on the 2-core machine, so they run
as their own step, `make test-bench-quick`, which .ci/run runs after `make test` (that one
stays under 10 minutes).
"""

import os
import shutil
import subprocess
import sys

import pytest

from benchmarks.run import BENCHMARKS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tree_files(root):
    """Tracked and untracked-but-not-ignored files of the checkout (its working tree), or
    None outside a git checkout."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                              "--exclude-standard"], cwd=root, capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return [p for p in out.stdout.decode().split("\0") if p]


@pytest.fixture(scope="module")
def fresh_tree(tmp_path_factory):
    dest = tmp_path_factory.mktemp("fresh") / "fm-dual"
    files = _tree_files(ROOT)
    if files is None:
        shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(
            "runs", ".venv", ".git", "__pycache__", ".pytest_cache", ".hypothesis"))
        return dest
    for rel in files:
        src = os.path.join(ROOT, rel)
        if os.path.isfile(src):  # a file deleted but not yet committed is listed too
            os.makedirs(os.path.dirname(dest / rel), exist_ok=True)
            shutil.copy2(src, dest / rel)
    _link_peer_site(dest)
    return dest


def _link_peer_site(dest):
    """The peer libraries some benchmarks compare with (torchcfm, flow_matching) are pip-
    installed into runs/bench/site on first use; the test reuses this checkout's copy when
    there is one and never downloads (PIP_NO_INDEX in _run: without them the benchmarks
    note it and go on)."""
    site = os.path.join(ROOT, "runs", "bench", "site")
    if os.path.isdir(site):
        os.makedirs(dest / "runs" / "bench")
        os.symlink(site, dest / "runs" / "bench" / "site")


def _run(tree, args, timeout=900):
    env = dict(os.environ, HF_HUB_OFFLINE="1", MPLBACKEND="Agg", PIP_NO_INDEX="1",
               PYTHONPATH=str(tree))  # the copy's packages, not the editable install's
    res = subprocess.run([sys.executable, "-m", *args], cwd=tree, env=env, capture_output=True,
                         text=True, timeout=timeout)
    tail = (res.stdout[-3000:] + "\n" + res.stderr[-3000:]).strip()
    return res.returncode, tail


@pytest.mark.slow
@pytest.mark.bench_quick
@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_quick_mode_runs(fresh_tree, name):
    code, tail = _run(fresh_tree, ["benchmarks.run", "--quick", "--no-docs", "--only", name])
    assert code == 0, tail
    assert f"--- bench_{name}: ok" in tail, tail  # run.py reports a failure but goes on


@pytest.mark.slow
@pytest.mark.bench_quick
def test_demo_quick_runs(fresh_tree):
    code, tail = _run(fresh_tree, ["benchmarks.demo", "--quick"])
    assert code == 0, tail
