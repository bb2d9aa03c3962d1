"""Write the reference .npz files of fm_numpy/conformance/reference/ from the closed forms.

    python -m fm_numpy.conformance.make_reference [--out DIR]

Every array is float64 and computed by fm_numpy's own closed forms (paths.py schedulers,
analytic.py oracles, scipy.linalg.expm, diffusion.py); tests/test_conformance.py
regenerates them and compares bit for bit.
"""

import argparse
import os

from fm_numpy.io import save_npz

from . import diffusion_to_flow, guidance, likelihood, path, solver, velocity
from .report import REFERENCE_DIR

MODULES = {"path": path, "solver": solver, "velocity": velocity, "likelihood": likelihood,
           "guidance": guidance, "diffusion_to_flow": diffusion_to_flow}


def build_all():
    """{kind: {name: array}} for every check."""
    return {kind: module.reference_arrays() for kind, module in MODULES.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=REFERENCE_DIR, help="folder (default: the package's)")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    for kind, arrays in build_all().items():
        target = os.path.join(args.out, f"{kind}.npz")
        save_npz(target, **arrays)
        size = os.path.getsize(target)
        print(f"wrote {target} ({len(arrays)} arrays, {size / 1024:.1f} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
