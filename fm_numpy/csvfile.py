"""A numeric CSV table as vectors (N, D) and optional integer labels, via the csv module.

The header is optional: a first row with any cell that is not a number is the header.
`label_column` names the label column (a header name, or a 0-based index when there is no
header); every other column is a feature. Blank lines are skipped. Ragged rows, cells that
are not numbers and labels that are not integers raise ValueError naming the line.
"""

import csv

import numpy as np

__all__ = ["read_csv"]


def _is_number(cell):
    try:
        float(cell)
    except ValueError:
        return False
    return True


def read_csv(path, label_column=None):
    """(x (N, D) float64, labels (N,) int64 or None) of the CSV file at path."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [(i, row) for i, row in enumerate(csv.reader(f), start=1) if row]
    except (UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"{path} is not a readable CSV text file ({e})") from None
    if not rows:
        raise ValueError(f"{path}: the CSV file holds no rows")
    header = None
    if not all(_is_number(c) for c in rows[0][1]):
        header = [c.strip() for c in rows[0][1]]
        rows = rows[1:]
        if not rows:
            raise ValueError(f"{path}: the CSV file has a header but no data rows")
    width = len(header) if header is not None else len(rows[0][1])
    names = header or [str(j) for j in range(width)]
    label = None
    if label_column is not None:
        if str(label_column) in names:
            label = names.index(str(label_column))
        else:
            where = "header" if header is not None else "0-based column indices"
            raise ValueError(f"{path}: no label column {label_column!r} (the {where}: "
                             f"{', '.join(names)})")
    features = [j for j in range(width) if j != label]
    if not features:
        raise ValueError(f"{path}: the CSV file has no feature columns besides the labels")
    x = np.empty((len(rows), len(features)), np.float64)  # (N, D)
    y = np.empty(len(rows), np.float64) if label is not None else None  # (N,)
    for r, (line, row) in enumerate(rows):
        if len(row) != width:
            raise ValueError(f"{path}: line {line} has {len(row)} columns, expected {width} "
                             f"(a ragged row)")
        for k, j in enumerate(features):
            try:
                x[r, k] = float(row[j])
            except ValueError:
                raise ValueError(f"{path}: line {line}, column {names[j]!r}: {row[j]!r} is not "
                                 f"a number") from None
        if label is not None:
            try:
                y[r] = float(row[label])
            except ValueError:
                y[r] = np.nan
            if not (np.isfinite(y[r]) and y[r] == round(y[r])):
                raise ValueError(f"{path}: line {line}: label column {names[label]!r} holds "
                                 f"{row[label]!r}, not an integer")
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        line = rows[int(np.flatnonzero(bad)[0])][0]
        raise ValueError(f"{path}: line {line} holds NaN or Inf values")
    return x, (None if y is None else y.astype(np.int64))
