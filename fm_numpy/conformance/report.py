"""The report every check returns, and the helpers the checks share.

A `Report` holds `findings` (one line each: `code: what is wrong, the measured number;
fix: ...`), `notes` (observations that do not fail the check) and `rows`, the table the
command line prints (check, measured, tolerance, verdict). `passed` is True exactly when
there are no findings. The code before the colon is stable (tests and scripts match on
it); the text after it is for people.
"""

import os
import traceback

import numpy as np

__all__ = ["Report", "load_reference", "REFERENCE_DIR", "call_user", "UserError", "rel_err"]

REFERENCE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference")


class UserError(Exception):
    """The user's callable raised; `message` is its exception in one line."""

    def __init__(self, exc):
        self.exc = exc
        frames = traceback.extract_tb(exc.__traceback__)
        where = f" at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno}" if frames else ""
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        self.message = f"{type(exc).__name__}{where}: {first}"[:200]
        super().__init__(self.message)


def call_user(fn, *args, **kwargs):
    """fn(*args, **kwargs) with any exception wrapped in UserError (so a check can report it)."""
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 -- any failure of user code is a finding
        raise UserError(e) from e


def rel_err(a, b):
    """max |a - b| / max(1, max |b|): relative error on a unit-order scale."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return np.inf
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))


class Report:
    """Result of one check: passed, findings (one line each), notes and table rows."""

    def __init__(self, kind, subject=""):
        self.kind = kind
        self.subject = subject
        self.findings = []
        self.notes = []
        self.rows = []

    @property
    def passed(self):
        return not self.findings

    @property
    def codes(self):
        """The diagnosis codes of the findings, in order (the text before each colon)."""
        return [f.split(":", 1)[0] for f in self.findings]

    def fail(self, code, text):
        if f"{code}: {text}" not in self.findings:
            self.findings.append(f"{code}: {text}")

    def note(self, text):
        self.notes.append(text)

    def row(self, check, measured, tolerance, ok):
        self.rows.append((check, measured, tolerance, "ok" if ok else "FAIL"))
        return ok

    def table(self):
        """The report as a plain-text table, then the findings and notes."""
        head = ("check", "measured", "tolerance", "verdict")
        rows = [head] + [tuple(str(c) for c in r) for r in self.rows]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = [f"fm-numpy check {self.kind}: {self.subject}".rstrip(": ")]
        for k, r in enumerate(rows):
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
            if k == 0:
                lines.append("  ".join("-" * w for w in widths))
        if self.findings:
            lines.append(f"FAILED: {len(self.findings)} finding(s)")
            lines += [f"  - {f}" for f in self.findings]
        else:
            lines.append("PASSED")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def __repr__(self):
        return f"Report({self.kind!r}, passed={self.passed}, findings={self.findings!r})"


def load_reference(kind):
    """The reference arrays of one check (fm_numpy/conformance/reference/<kind>.npz)."""
    path = os.path.join(REFERENCE_DIR, f"{kind}.npz")
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}
