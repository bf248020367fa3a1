"""CSV files whose every row carries the sha256 of its own fields (``row_sha256``).

The long-form ``<suite>-cells.csv`` is what ``compare`` and ``plot`` read, possibly long after
the run and on another machine. A row damaged on the way -- cut mid-number, edited by hand --
would otherwise pass as a smaller or larger score; with the digest it is refused, naming
the file and the row.
"""

from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path

import pandas as pd

from benchmark.errors import ShiftbenchError

DIGEST_COLUMN = "row_sha256"


def _digest(fields: list[str]) -> str:
    return hashlib.sha256("\x1f".join(fields).encode()).hexdigest()


def to_signed_csv(frame: pd.DataFrame) -> str:
    """``frame`` as CSV text with a last column holding each row's digest."""
    rows = list(csv.reader(io.StringIO(frame.to_csv(index=False, lineterminator="\n"))))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*rows[0], DIGEST_COLUMN])
    for row in rows[1:]:
        writer.writerow([*row, _digest(row)])
    return out.getvalue()


def verify(path: Path) -> None:
    """Raise a one-line :class:`ShiftbenchError` naming ``path`` and the first bad row."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ShiftbenchError(f"cannot read {path} as a cell CSV ({exc})") from None
    if not rows or not rows[0] or rows[0][-1] != DIGEST_COLUMN:
        raise ShiftbenchError(
            f"{path} has no {DIGEST_COLUMN} column, so its rows cannot be checked; rewrite it "
            "with this version (`python run.py run ...` with the same options reuses every "
            "stored cell)")
    width = len(rows[0])
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != width or row[-1] != _digest(row[:-1]):
            raise ShiftbenchError(
                f"{path}, line {number}: the row does not match its {DIGEST_COLUMN} (cut or "
                "edited); nothing from this file is compared -- rewrite it from the cells")
