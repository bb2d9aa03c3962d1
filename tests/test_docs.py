"""The docs cannot rot: every code reference in docs/*.md and README.md must resolve.

Convention (docs/math.md states it for readers too):

- A *reference* is an inline code span of the form `path/to/file.py::Qualified.name`,
  with the path relative to the repository root and the name a dotted chain of classes,
  functions and module- or class-level assigned names (`AffinePath.sample`,
  `SCHEDULERS`, `MLP.backward`). The file must exist and the name must resolve by
  walking the file's syntax tree (`ast`); nothing is imported, so checking a torch file
  costs no torch import.
- A *reference line* is a markdown line holding at least one reference.
- An *excerpt* is a fenced block opened by exactly ```` ```python ```` whose opening
  fence follows a reference line, with only blank lines between them. Every excerpt
  must appear verbatim in the source of *every* object cited on that reference line:
  its non-blank lines, each stripped of leading and trailing whitespace, must equal a
  run of consecutive non-blank lines (each stripped) of the object's source (from its
  `def`/`class` line, decorators included, to its last line). Fenced blocks of any
  other language (```` ```bash ````, ```` ```text ````, plain ```` ``` ````) are never
  checked, nor is a python block that does not follow a reference line.

Every broken reference and excerpt of every file is collected first and reported in one
failure, so one run lists all that needs fixing.
"""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

REFERENCE = re.compile(r"`([A-Za-z0-9_./-]+\.py)::([A-Za-z_][A-Za-z0-9_.]*)`")
FENCE_OPEN = re.compile(r"^\s*```(\S*)\s*$")
FENCE_CLOSE = re.compile(r"^\s*```\s*$")


def doc_files(root):
    """docs/*.md and README.md under root, those that exist, in a fixed order."""
    files = sorted((root / "docs").glob("*.md"))
    if (root / "README.md").exists():
        files.append(root / "README.md")
    return files


def parse_doc(text):
    """Split markdown text into reference lines and their excerpts.

    Returns a list of (line_number, [(file, name), ...], excerpt_or_None); line numbers
    start at 1. Reference-looking spans inside fenced blocks are ignored.
    """
    lines = text.splitlines()
    entries = []
    i = 0
    while i < len(lines):
        opened = FENCE_OPEN.match(lines[i])
        if opened:  # a fenced block that no reference line claimed: skip it whole
            i += 1
            while i < len(lines) and not FENCE_CLOSE.match(lines[i]):
                i += 1
            i += 1
            continue
        refs = REFERENCE.findall(lines[i])
        if not refs:
            i += 1
            continue
        line_number = i + 1
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        excerpt = None
        if j < len(lines):
            opened = FENCE_OPEN.match(lines[j])
            if opened and opened.group(1) == "python":
                k = j + 1
                body = []
                while k < len(lines) and not FENCE_CLOSE.match(lines[k]):
                    body.append(lines[k])
                    k += 1
                if k == len(lines):
                    raise ValueError(f"line {j + 1}: fenced block is never closed")
                excerpt = body
                j = k + 1
            else:
                j = i + 1
        else:
            j = i + 1
        entries.append((line_number, refs, excerpt))
        i = j
    return entries


def _children(node):
    """Named children of a module or class body: defs, classes and assigned names."""
    named = {}
    for child in getattr(node, "body", []):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            named[child.name] = child
        elif isinstance(child, ast.Assign):
            for target in child.targets:
                if isinstance(target, ast.Name):
                    named[target.id] = child
        elif isinstance(child, ast.AnnAssign) and isinstance(child.target, ast.Name):
            named[child.target.id] = child
    return named


def resolve(source, qualname):
    """The source lines of `qualname` in a module's source text, or raise LookupError."""
    node = ast.parse(source)
    parts = qualname.split(".")
    for depth, part in enumerate(parts):
        named = _children(node)
        if part not in named:
            where = ".".join(parts[:depth]) or "module level"
            raise LookupError(f"no {part!r} at {where}")
        node = named[part]
        if depth < len(parts) - 1 and not isinstance(node, ast.ClassDef):
            raise LookupError(f"{'.'.join(parts[: depth + 1])} is not a class")
    first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    return source.splitlines()[first - 1 : node.end_lineno]


def contains_run(haystack, needle):
    """Whether the stripped non-blank lines of needle are a consecutive run in haystack's."""
    hay = [s.strip() for s in haystack if s.strip()]
    pin = [s.strip() for s in needle if s.strip()]
    if not pin:
        return False
    return any(hay[k : k + len(pin)] == pin for k in range(len(hay) - len(pin) + 1))


def check_docs(root):
    """All problems in root's docs as 'doc:line: message' strings, and the reference count."""
    problems = []
    count = 0
    sources = {}
    for doc in doc_files(root):
        label = doc.relative_to(root).as_posix()
        try:
            entries = parse_doc(doc.read_text(encoding="utf-8"))
        except ValueError as err:
            problems.append(f"{label}: {err}")
            continue
        for line_number, refs, excerpt in entries:
            where = f"{label}:{line_number}"
            if excerpt is not None and not any(s.strip() for s in excerpt):
                problems.append(f"{where}: empty python excerpt")
            for file, qualname in refs:
                count += 1
                path = root / file
                if not path.is_file():
                    problems.append(f"{where}: {file} does not exist")
                    continue
                if file not in sources:
                    sources[file] = path.read_text(encoding="utf-8")
                try:
                    segment = resolve(sources[file], qualname)
                except SyntaxError as err:
                    problems.append(f"{where}: {file} does not parse: {err}")
                    continue
                except LookupError as err:
                    problems.append(f"{where}: {file}::{qualname} does not resolve ({err})")
                    continue
                if excerpt is not None and any(s.strip() for s in excerpt):
                    if not contains_run(segment, excerpt):
                        first = next(s.strip() for s in excerpt if s.strip())
                        problems.append(
                            f"{where}: excerpt starting {first!r} is not in {file}::{qualname}"
                        )
    return problems, count


def test_docs_references_resolve():
    problems, count = check_docs(ROOT)
    assert not problems, f"{len(problems)} broken doc reference(s):\n" + "\n".join(problems)
    if (ROOT / "docs" / "math.md").exists():
        assert count > 0, "docs/math.md exists but no reference was found: is the regex wrong?"


# ---- the checker itself must be able to fail -------------------------------------------

GOOD_MODULE = '''\
import numpy as np

SCALE = 2.0


class Path:
    """A toy."""

    def sample(self, x0, x1, t):
        xt = t * x1 + (1 - t) * x0  # (B, D)
        ut = x1 - x0  # (B, D)
        return xt, ut


@staticmethod
def helper(x):
    return SCALE * x
'''


def _write_tree(tmp_path, doc_text):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text(GOOD_MODULE, encoding="utf-8")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text(doc_text, encoding="utf-8")


def test_checker_accepts_a_correct_doc(tmp_path):
    doc = (
        "The path, `pkg/mod.py::Path.sample`:\n\n"
        "```python\n"
        "    xt = t * x1 + (1 - t) * x0  # (B, D)\n"
        "ut = x1 - x0  # (B, D)\n"
        "```\n\n"
        "Also `pkg/mod.py::SCALE` and `pkg/mod.py::Path`, and a decorated one:\n"
        "`pkg/mod.py::helper`\n"
        "```python\n"
        "@staticmethod\n"
        "```\n"
        "A loose block is not checked:\n\n"
        "```python\n"
        "this line is in no file\n"
        "```\n"
        "Nor is one after a reference but in another language: `pkg/mod.py::helper`\n"
        "```bash\n"
        "echo not python\n"
        "```\n"
    )
    _write_tree(tmp_path, doc)
    problems, count = check_docs(tmp_path)
    assert problems == []
    assert count == 5


def test_checker_reports_every_broken_reference_at_once(tmp_path):
    doc = (
        "Missing file `pkg/nope.py::Path.sample`.\n"
        "Missing method `pkg/mod.py::Path.train`.\n"
        "Not a class `pkg/mod.py::helper.inner`.\n"
        "Stale excerpt `pkg/mod.py::Path.sample`\n\n"
        "```python\n"
        "xt = t * x1 + (1 - t) * x0  # (B, 1)\n"
        "```\n"
        "Excerpt lines out of order `pkg/mod.py::Path.sample`\n"
        "```python\n"
        "ut = x1 - x0  # (B, D)\n"
        "xt = t * x1 + (1 - t) * x0  # (B, D)\n"
        "```\n"
        "Excerpt in the file but not in the cited object `pkg/mod.py::helper`\n"
        "```python\n"
        "ut = x1 - x0  # (B, D)\n"
        "```\n"
        "Twin references: the excerpt must be in both `pkg/mod.py::Path.sample` "
        "and `pkg/mod.py::helper`\n"
        "```python\n"
        "return SCALE * x\n"
        "```\n"
    )
    _write_tree(tmp_path, doc)
    problems, count = check_docs(tmp_path)
    assert count == 8
    assert len(problems) == 7, "\n".join(problems)
    text = "\n".join(problems)
    assert "docs/a.md:1: pkg/nope.py does not exist" in text
    assert "docs/a.md:2: pkg/mod.py::Path.train does not resolve" in text
    assert "docs/a.md:3: pkg/mod.py::helper.inner does not resolve" in text
    assert "docs/a.md:4: excerpt starting 'xt = t * x1 + (1 - t) * x0  # (B, 1)'" in text
    assert "docs/a.md:9: excerpt starting 'ut = x1 - x0  # (B, D)'" in text
    assert "docs/a.md:14: excerpt starting 'ut = x1 - x0  # (B, D)' is not in " in text
    assert (
        "docs/a.md:18: excerpt starting 'return SCALE * x' is not in pkg/mod.py::Path.sample"
        in text
    )


def test_checker_rejects_an_unclosed_fence(tmp_path):
    _write_tree(tmp_path, "`pkg/mod.py::Path.sample`\n```python\nut = x1 - x0  # (B, D)\n")
    problems, _ = check_docs(tmp_path)
    assert len(problems) == 1 and "never closed" in problems[0]


@pytest.mark.parametrize(
    "qualname, first_line",
    [("Path.sample", "def sample(self, x0, x1, t):"), ("SCALE", "SCALE = 2.0"),
     ("helper", "@staticmethod"), ("Path", "class Path:")],
)
def test_resolve_returns_the_object_source(qualname, first_line):
    assert resolve(GOOD_MODULE, qualname)[0].strip() == first_line
