"""The browsable report: one self-contained HTML page per leaderboards folder.

``python run.py report`` (and every ``run``, for its suite) writes a page that is a pure
function of the CSV files the leaderboards already write -- ``<suite>.csv`` (the board) and
``<suite>-cells.csv`` (every cell, each row signed; benchmark.report.signed_csv) -- plus the
published reference rows of ``reported.csv``. Per suite it shows:

- the leaderboard, every row and column of ``<suite>.csv`` as written (same text), sortable by
  any column and filterable by setting, protocol and batch size; rows with failed or missing
  cells stay visible, unranked; published ``reported`` rows are marked and never ranked;
- the figures ``run.py plot`` draws (per-target heatmap, severity, batch-size and online
  curves, each where the cells allow it), inlined as SVG images;
- for every row, the cells behind it with their provenance: seed, domain, status, score, data
  fingerprint, adapter code hash, checkpoint digest, versions and finished time.

An index links the suites, and a footer names every input file with its sha256. Nothing
varies between builds from the same files (no clock, fixed SVG ids), so a rebuilt page is
byte-identical and a changed page means changed results. No network is needed to view it:
styles, the sorting script (plain JavaScript, no framework) and figures are inside the page.
Every text from the files is escaped (Jinja2 autoescaping), so an adapter label or a
hyper-parameter containing markup is shown as text.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import matplotlib
import pandas as pd

from benchmark.errors import ShiftbenchError
from benchmark.report import plots
from benchmark.report.compare import read_cells
from benchmark.report.markdown import REPORTED_CSV, as_metric, load_reported
from benchmark.store import atomic_write_text

CELLS_SUFFIX = "-cells.csv"
# the provenance shown for each cell (columns of <suite>-cells.csv), in this order
PROVENANCE = ["seed", "domain", "role", "status", "score", "n_examples", "data_fingerprint",
              "adapter_code", "checkpoint_sha256", "shiftbench", "code_revision", "torch",
              "torchvision", "python", "device", "finished_at", "error"]
FILTERS = ["setting", "protocol", "batch_size"]  # the board columns a reader can filter on
FIGURES = [("heatmap", plots.heatmap), ("severity", plots.severity_curves),
           ("batch size", plots.batch_size_curves), ("online", plots.online_curves)]
_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("benchmark.report", "templates"),
    autoescape=True, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
    undefined=jinja2.StrictUndefined)


def _is_number(text: str) -> bool:
    """Right-align numbers (CSV text such as '12.5', '3', 'nan' is not a number here)."""
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


_TEMPLATES.filters.update(
    zip=lambda a, b: zip(a, b, strict=True), is_number=_is_number,
    first_of=lambda values, columns, column: values[columns.index(column)])


@dataclass
class Row:
    """One leaderboard row as shown: the CSV's text per column, and the cells behind it."""

    values: list[str]
    kind: str  # "ranked", "unranked" (failed or missing cells) or "reported"
    anchor: str = ""
    cells: list[list[str]] = field(default_factory=list)
    note: str = ""  # reported rows: source and note of the publication


@dataclass
class SuitePage:
    name: str
    anchor: str
    columns: list[str]
    rows: list[Row]
    filters: dict[str, list[str]]  # column -> its distinct values, in board order
    figures: list[tuple[str, str]]  # (title, data: URI of an SVG)
    cell_columns: list[str]  # the PROVENANCE columns the cells file has
    n_cells: int
    skipped: list[str]


def discover(folder: Path) -> list[str]:
    """The suites of a leaderboards folder: every ``<suite>.csv`` with its cells file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ShiftbenchError(f"leaderboards folder not found: {folder} (written by "
                              "`python run.py run`; pass another with --leaderboards DIR)")
    return sorted(p.name[:-len(CELLS_SUFFIX)] for p in folder.glob(f"*{CELLS_SUFFIX}")
                  if (folder / (p.name[:-len(CELLS_SUFFIX)] + ".csv")).is_file())


def _read_text_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    """A CSV as its header and rows of text, exactly as written."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ShiftbenchError(f"cannot read {path} as CSV ({exc})") from None
    if not rows:
        raise ShiftbenchError(f"{path} is empty; rewrite it with `python run.py run ...`")
    return rows[0], rows[1:]


def _anchor(text: str) -> str:
    """A stable HTML id for any text (suite names and labels may hold any character)."""
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _svg_uri(fig: Any) -> str:
    """A figure as a data: URI of an SVG whose bytes depend only on the figure."""
    buffer = io.BytesIO()
    with matplotlib.rc_context({"svg.hashsalt": "shiftbench", "svg.fonttype": "path"}):
        fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    return "data:image/svg+xml;base64," + base64.b64encode(buffer.getvalue()).decode()


def _reported_rows(suite: str, columns: list[str], reported: pd.DataFrame,
                   metric: str) -> list[Row]:
    rows = []
    for _, r in reported[reported["suite"] == suite].iterrows():
        published, score = str(r["metric"]).lower(), float(r["score"])
        converted = as_metric(published, score, metric)
        shown = {"rank": "reported", "adapter": f"{r['method']} [{r['adapter'] or '–'}]",
                 "protocol": str(r["protocol"]), "setting": str(r["setting"]),
                 "metric": metric,
                 "score": "" if math.isnan(converted) else f"{converted:g}",
                 "status": f"published {published} {score:g}; {r['architecture']}"}
        rows.append(Row([shown.get(c, "") for c in columns], "reported",
                        note=f"{r['source']}. {r['note']}"))
    return rows


def suite_page(folder: Path, suite: str, reported: pd.DataFrame) -> SuitePage:
    """Everything the page shows for one suite, from its two CSV files."""
    folder = Path(folder)
    board_path, cells_path = folder / f"{suite}.csv", folder / f"{suite}{CELLS_SUFFIX}"
    typed = read_cells(cells_path)  # verifies every row's digest before anything is shown
    columns, board = _read_text_rows(board_path)
    for needed in ("adapter", "protocol", "batch_size", "status"):
        if needed not in columns:
            raise ShiftbenchError(f"{board_path} is not a leaderboard CSV (no '{needed}' "
                                  "column); pass the folder that `run.py run` writes")
    cell_header, cell_rows = _read_text_rows(cells_path)
    index = {c: i for i, c in enumerate(cell_header)}
    shown = [c for c in PROVENANCE if c in index]
    behind: dict[tuple[str, str, str], list[list[str]]] = {}
    for cell in cell_rows:
        key = (cell[index["adapter"]], cell[index["protocol"]], cell[index["batch_size"]])
        behind.setdefault(key, []).append([cell[index[c]] for c in shown])
    at = {c: i for i, c in enumerate(columns)}
    rows = []
    for values in board:
        key = (values[at["adapter"]], values[at["protocol"]], values[at["batch_size"]])
        ranked = "rank" in at and values[at["rank"]] != "" and values[at["status"]] == "ok"
        rows.append(Row(values, "ranked" if ranked else "unranked",
                        anchor=f"c-{_anchor(suite)}-{_anchor(repr(key))}",
                        cells=behind.get(key, [])))
    metric = board[0][at["metric"]] if board and "metric" in at else ""
    rows += _reported_rows(suite, columns, reported, metric)
    filters = {c: list(dict.fromkeys(v[at[c]] for v in board)) for c in FILTERS if c in at}
    figures, skipped = [], []
    finished = typed[(typed["role"] == "target") & (typed["status"] == "done")]
    if finished.empty:
        skipped.append("figures: no finished target cells")
    else:
        for title, make in FIGURES:
            fig = make(typed, suite)
            if fig is None:
                skipped.append(title)
            else:
                figures.append((title, _svg_uri(fig)))
    return SuitePage(suite, f"s-{_anchor(suite)}", columns, rows, filters, figures, shown,
                     len(cell_rows), skipped)


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def render(folder: Path, suites: list[str] | None = None) -> str:
    """The page for ``suites`` (default: every suite in ``folder``) as HTML text."""
    folder = Path(folder)
    available = discover(folder)
    suites = available if suites is None else list(suites)
    missing = [s for s in suites if s not in available]
    if missing:
        raise ShiftbenchError(
            f"no results for {', '.join(missing)} in {folder} (it needs <suite>.csv and "
            f"<suite>{CELLS_SUFFIX}; run `python run.py run --suite {missing[0]}` first)"
            + (f"; this folder has: {', '.join(available)}" if available else ""))
    if not suites:
        raise ShiftbenchError(f"{folder} holds no leaderboards (<suite>.csv with "
                              f"<suite>{CELLS_SUFFIX}); run `python run.py run` first")
    reported_path = folder / "reported.csv"
    if not reported_path.is_file():
        reported_path = REPORTED_CSV
    reported = load_reported(reported_path)
    pages = [suite_page(folder, s, reported) for s in suites]
    inputs = [(f"{s}{ext}", _sha256(folder / f"{s}{ext}"))
              for s in suites for ext in (".csv", CELLS_SUFFIX)]
    if reported_path.is_file():
        where = "this folder" if reported_path.parent == folder else "shipped with shiftbench"
        inputs.append((f"reported.csv ({where})", _sha256(reported_path)))
    return _TEMPLATES.get_template("report.html.j2").render(
        pages=pages, filters=FILTERS, inputs=inputs)


def write(folder: Path, out: Path | None = None, suites: list[str] | None = None) -> Path:
    """Render and atomically write the page (default ``<folder>/report.html``)."""
    out = Path(out) if out is not None else Path(folder) / "report.html"
    atomic_write_text(out, render(folder, suites))
    return out
