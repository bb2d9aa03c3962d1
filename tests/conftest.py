"""Shared test set-up: hypothesis profiles.

HYPOTHESIS_PROFILE=ci (the default for a plain `pytest`) is fixed and derandomised, so a run
is reproducible. HYPOTHESIS_PROFILE=explore (what `make test` and .ci/run use) runs the same
number of examples, so the suite takes as long, but from a seed that changes every run:
HYPOTHESIS_SEED if set, otherwise a fresh random one. The seed is printed at the start and
at the end of the log, with the command that replays it. HYPOTHESIS_PROFILE=thorough runs
many more examples for local checks.
"""

import os
import random

from hypothesis import HealthCheck, core, settings

_COMMON = dict(deadline=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=25, derandomize=True, **_COMMON)
settings.register_profile("explore", max_examples=25, derandomize=False, **_COMMON)
settings.register_profile("thorough", max_examples=500, **_COMMON)

# fm-torch train picks bf16 where the CPU has native bf16 and a probe finds it faster: the
# suite's numbers (cross-package agreement to 1e-9, bitwise resumes) are fp32 numbers on
# every CPU, and a probe would call the tests' recording networks. Subprocesses inherit it.
# tests/test_cpu_settings.py removes it where it tests the choice itself.
os.environ.setdefault("FM_TORCH_BF16", "0")

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
settings.load_profile(PROFILE)
SEED = None
if PROFILE != "ci":
    # hypothesis' own pytest option --hypothesis-seed sets this same global
    SEED = int(os.environ.get("HYPOTHESIS_SEED") or random.SystemRandom().randrange(2**32))
    core.global_force_seed = SEED


def _seed_line():
    return (f"hypothesis seed {SEED} (profile {PROFILE!r}; replay: "
            f"HYPOTHESIS_PROFILE={PROFILE} HYPOTHESIS_SEED={SEED} make test)")


def pytest_configure(config):
    config.addinivalue_line("markers", "bench_quick: a benchmark's quick mode (make "
                            "test-bench-quick; make test leaves them out)")


def pytest_report_header(config):
    return _seed_line() if SEED is not None else None


def pytest_terminal_summary(terminalreporter):
    if SEED is not None:
        terminalreporter.write_line(_seed_line())
