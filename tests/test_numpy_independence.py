"""fm_numpy is NumPy + SciPy only: importing any of its modules never imports torch."""

import pkgutil
import subprocess
import sys

import fm_numpy


def test_no_fm_numpy_module_imports_torch():
    modules = sorted(f"fm_numpy.{m.name}" for m in pkgutil.iter_modules(fm_numpy.__path__))
    assert "fm_numpy.paths" in modules and "fm_numpy.mlp" in modules  # the walk found them
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "leaked = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "print(','.join(leaked))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"torch was imported by fm_numpy: {out.stdout.strip()[:200]}"
