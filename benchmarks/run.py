"""Run every benchmark in turn and record their output in docs/benchmarks.md.

    python -m benchmarks.run [--quick] [--only solvers,libraries] [--no-docs]

Each module benchmarks/bench_<name>.py with a `main` is imported and called with
quick=... (or, for a main(argv) entry point, with ["--quick"] / []). A module that is
missing or fails to import is skipped with a message; one that raises is reported and
the run goes on. Every benchmark's output is printed and also copied, with the date,
mode, seconds taken and machine, between the markers of docs/benchmarks.md (replacing
the previous automatic section; the hand-written text around it is kept). Modules that
set MARKDOWN = True print markdown; the others' output goes in a code block.
"""

import argparse
import contextlib
import importlib
import inspect
import io
import os
import platform
import sys
import time
import traceback

BENCHMARKS = ["solvers", "mlp_step", "sampling", "oracle", "unet", "numpy_unet", "diffusion",
              "libraries", "mnist", "conformance", "fewstep", "sample_cpu"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs", "benchmarks.md")
BEGIN = "<!-- bench:begin (written by python -m benchmarks.run; edits here are replaced) -->"
END = "<!-- bench:end -->"


class _Tee(io.TextIOBase):
    """Writes to the terminal and keeps a copy."""

    def __init__(self, stream):
        self.stream, self.copy = stream, io.StringIO()

    def write(self, s):
        self.stream.write(s)
        self.stream.flush()
        return self.copy.write(s)

    def flush(self):
        self.stream.flush()


def _call_main(main, quick):
    params = inspect.signature(main).parameters
    if "quick" in params:
        return main(quick=quick)
    if params:  # main(argv) style
        return main(["--quick"] if quick else [])
    return main()


def run_one(name, quick):
    """(status, seconds, captured output) of benchmarks.bench_<name>."""
    module_name = f"benchmarks.bench_{name}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name:
            return "missing", 0.0, f"{module_name} is not written yet; skipped.\n", False
        return "import failed", 0.0, f"{module_name} could not be imported: {e}\n", False
    if not hasattr(module, "main"):
        return "no main", 0.0, f"{module_name} has no main(); skipped.\n", False
    tee = _Tee(sys.stdout)
    start = time.perf_counter()
    status = "ok"
    with contextlib.redirect_stdout(tee):
        try:
            _call_main(module.main, quick)
        except SystemExit as e:  # an argparse-style main may exit
            status = "ok" if not e.code else f"exit {e.code}"
        except Exception:
            status = "failed"
            print(traceback.format_exc(limit=3))
    return status, time.perf_counter() - start, tee.copy.getvalue(), getattr(
        module, "MARKDOWN", False)


def _machine():
    import numpy

    parts = [platform.platform(terse=True), f"{os.cpu_count()} CPUs",
             f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
             f"python {platform.python_version()}", f"numpy {numpy.__version__}"]
    try:
        import torch

        parts.append(f"torch {torch.__version__}")
    except ImportError:
        pass
    return ", ".join(parts)


def render(results, quick, total):
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    command = "python -m benchmarks.run" + (" --quick" if quick else "")
    lines = [BEGIN, "", f"## Last run: `{command}`",
             "", f"{stamp}; {total:.0f} s in all; {_machine()}.", "",
             "| benchmark | status | seconds |", "|---|---|---:|"]
    lines += [f"| bench_{n} | {s} | {sec:.1f} |" for n, s, sec, _, _ in results]
    for name, status, seconds, text, markdown in results:
        lines += ["", f"### bench_{name} ({status}, {seconds:.0f} s)", ""]
        if markdown and status == "ok":
            lines.append(text.rstrip())
        else:
            lines += ["```text", text.rstrip(), "```"]
    lines += ["", END]
    return "\n".join(lines) + "\n"


def write_docs(section, path=DOCS):
    from fm_numpy.io import atomic_path

    head, tail = "# Benchmarks\n\n", ""
    if os.path.isfile(path):
        with open(path) as f:
            old = f.read()
        if BEGIN in old and END in old:
            head = old[: old.index(BEGIN)]
            tail = old[old.index(END) + len(END):].lstrip("\n")
        else:
            head = old.rstrip("\n") + "\n\n"
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(head + section + ("\n" + tail if tail else ""))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: under 3 minutes")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md")
    args = parser.parse_args(argv)
    names = BENCHMARKS
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = sorted(set(names) - set(BENCHMARKS))
        if unknown:
            parser.error(f"unknown benchmark(s) {', '.join(unknown)}; "
                         f"choose from {', '.join(BENCHMARKS)}")
    start = time.perf_counter()
    results = []
    for name in names:
        print(f"\n=== bench_{name} ===", flush=True)
        status, seconds, text, markdown = run_one(name, args.quick)
        print(f"--- bench_{name}: {status} in {seconds:.1f} s", flush=True)
        results.append((name, status, seconds, text, markdown))
    total = time.perf_counter() - start
    print(f"\nall benchmarks: {total:.1f} s")
    if not args.no_docs:
        write_docs(render(results, args.quick, total))
        print(f"wrote {os.path.relpath(DOCS)}")
    return 0 if all(r[1] in ("ok", "missing") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
