"""fm_numpy is NumPy + SciPy only: importing any of its modules never imports torch."""

import pkgutil
import subprocess
import sys

import fm_numpy


def test_no_fm_numpy_module_imports_torch():
    modules = sorted(m.name for m in pkgutil.walk_packages(fm_numpy.__path__, "fm_numpy."))
    for name in ("fm_numpy.paths", "fm_numpy.models.mlp", "fm_numpy.conformance.path"):
        assert name in modules  # the walk found the subpackages too
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "leaked = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "print(','.join(leaked))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"torch was imported by fm_numpy: {out.stdout.strip()[:200]}"
