"""The peer libraries the benchmarks compare with (Meta's flow_matching, torchcfm, POT):
pip-installed at benchmark time, never a dependency of the packages."""

import os
import subprocess
import sys

from benchmarks.common import ROOT

__all__ = ["SITE", "PACKAGES", "ensure_packages"]

SITE = os.path.join(ROOT, "runs", "bench", "site")
PACKAGES = {"flow_matching": "flow_matching==1.0.10", "torchcfm": "torchcfm==1.0.7",
            "ot": "pot==0.9.7.post1"}


def ensure_packages():
    """Install the compared packages into SITE (once) and put it on sys.path; returns notes."""
    notes = []
    missing = [spec for mod, spec in PACKAGES.items()
               if not os.path.isdir(os.path.join(SITE, mod))]
    if missing:
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", SITE,
               *missing]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            if proc.returncode:
                notes.append(f"pip install {' '.join(missing)} failed: "
                             f"{proc.stderr.strip().splitlines()[-1:]}")
        except (OSError, subprocess.TimeoutExpired) as e:
            notes.append(f"pip install {' '.join(missing)} failed: {e}")
    if os.path.isdir(SITE) and SITE not in sys.path:
        sys.path.append(SITE)  # after the venv: never shadows an installed package
    return notes
