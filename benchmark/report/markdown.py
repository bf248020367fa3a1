"""Markdown leaderboards: ``<suite>.md`` beside ``<suite>.csv``, for a README or an appendix.

The table shows the same rows, in the same order, with the same numbers as the CSV (rounded
as there); only the layout differs (``score ± ci95``). Numbers published by papers are kept
in ``leaderboards/reported.csv`` and, when their suite matches, listed in a separate
*reported* table under the ranking — never ranked with measured rows, never in the CSV.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from benchmark.engine.protocols import PROTOCOLS
from benchmark.errors import ShiftbenchError
from benchmark.provenance import PROJECT_ROOT
from benchmark.store import file_sha256
from benchmark.suite import Suite

REPORTED_CSV = PROJECT_ROOT / "leaderboards" / "reported.csv"
REPORTED_COLUMNS = ["suite", "method", "adapter", "setting", "protocol", "metric", "score",
                    "architecture", "source", "note"]

METRIC_TEXT = {
    "accuracy": "top-1 accuracy (%), higher is better",
    "miou": "mean intersection over union over classes (%), higher is better",
}
# decimals as in the CSV (benchmark.report.leaderboard rounds the same way)
DECIMALS = {"score": 2, "std": 2, "ci95": 2, "worst_seed": 2, "adapt_s": 3, "img_per_s": 1,
            "peak_mb": 0}
COST_HEADERS = {"adapt_s": "adapt s", "img_per_s": "img/s", "peak_mb": "peak MB"}
MAX_INLINE_DETAIL = 8  # more per-target columns than this go to a second table
FIXED = ["rank", "adapter", "protocol", "setting", "batch_size", "metric", "score", "std", "ci95",
         "seeds", "worst_seed", "collapsed", "adapt_s", "img_per_s", "peak_mb", "status"]


def load_reported(path: Path = REPORTED_CSV) -> pd.DataFrame:
    """Published reference numbers; empty when the file is absent (e.g. a wheel install)."""
    path = Path(path)
    if not path.is_file():
        return pd.DataFrame(columns=REPORTED_COLUMNS)
    frame = pd.read_csv(path, dtype={"adapter": str}, keep_default_na=False,
                        na_values={"score": [""]})
    missing = [c for c in REPORTED_COLUMNS if c not in frame.columns]
    if missing:
        raise ShiftbenchError(
            f"{path} lacks columns {', '.join(missing)}; it needs {', '.join(REPORTED_COLUMNS)}"
        )
    return frame


def as_metric(published: str, score: float, metric: str) -> float:
    """A published number in the suite's metric: as is, 100 - error for accuracy (exact),
    NaN when no exact conversion exists."""
    if published == metric:
        return score
    if published == "error" and metric == "accuracy":
        return 100.0 - score
    return math.nan


def _cell(value: Any, decimals: int = 2) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{decimals}f}"
    return str(value).replace("|", "\\|")


def _table(header: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---:" if i in right else "---" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _metric_text(suite: Suite) -> str:
    """The metric in words; a class-averaged metric names the classes it averages over."""
    text = METRIC_TEXT.get(suite.metric, suite.metric)
    names = getattr(suite.make_metric(), "class_names", None)
    if suite.metric == "miou" and names:
        text = (f"mean intersection over union over {len(names)} classes "
                f"({', '.join(names)}), in %, higher is better; per-class IoU in `iou/<class>`")
    return text


def _header(suite: Suite, board: pd.DataFrame, csv_name: str) -> list[str]:
    metric = suite.metric
    seeds = sorted({int(s) for s in board["seeds"]}) if not board.empty else []
    seeds_text = (str(seeds[0]) if len(seeds) == 1 else
                  f"{seeds[0]}–{seeds[-1]} (varies by row)" if seeds else "none")
    protocols = list(dict.fromkeys(board["protocol"])) if not board.empty else []
    n_targets = len(suite.targets)
    lines = [f"# Leaderboard: `{suite.name}`", ""]
    summary = suite.summary()
    if summary:
        lines += [summary, ""]
    lines += [
        f"- **Metric**: `{metric}` — {_metric_text(suite)}. Rows are ranked by "
        "`score`; rows with failed or missing cells are listed unranked at the bottom.",
        "- **Protocol**: " + ("; ".join(
            f"`{p}` ({PROTOCOLS[p].description})" if p in PROTOCOLS else f"`{p}`"
            for p in protocols)
            or "–") + ".",
        f"- **Seeds**: n = {seeds_text} per row (each seed trains its own source model).",
        f"- **score** = mean over the {n_targets} target domain(s) and the n seeds of the "
        "per-cell score; a seed counts only when all its target cells finished.",
        "- **± ci95** = t(0.975, n−1) · std / √n, the half-width of the 95% confidence interval "
        "of the mean over seeds; **std** = sample standard deviation (ddof = 1) over seeds of "
        "the per-seed mean over targets. Empty for one seed. **worst seed** = the lowest "
        "per-seed mean.",
        *(["- **collapsed** = seeds with a target cell where one class takes at least half of "
           "the predictions and at least twice its share of the labels (a model answering "
           "nearly one class)."] if suite.metric == "accuracy" else []),
        f"- **Per-target columns**: mean over seeds; `src:{suite.source}` is the source domain's "
        "own test split (not part of score).",
        "- **Cost**: `adapt s` = mean wall seconds per target cell spent in the adapter "
        "(attach, adapt, predict); `img/s` = target images per second of that time; "
        "`peak MB` = peak memory (process RSS on CPU, allocated on CUDA).",
        f"- Same rows and numbers as `{csv_name}`; every cell is in `{suite.name}-cells.csv`.",
        "",
    ]
    return lines


def _reported_section(suite: Suite, reported: pd.DataFrame, source: str) -> list[str]:
    rows = reported[reported["suite"] == suite.name]
    if rows.empty:
        return []
    lines = [
        "## Reported in the literature (not measured here)",
        "",
        "Numbers published by the papers, for orientation only: other architectures, training "
        "recipes and data versions, so they are **not** part of the ranking above. "
        f"`as {suite.metric}` converts a published error (100 − error) when that is exact; "
        f"rows from `{source}`.",
        "",
    ]
    header = ["", "method", "shiftbench adapter", "setting", "protocol", "architecture",
              "published", f"as {suite.metric}", "source", "note"]
    body = []
    for _, r in rows.iterrows():
        metric, score = str(r["metric"]).lower(), float(r["score"])
        converted = as_metric(metric, score, suite.metric)
        body.append(["*reported*", _cell(r["method"]), _cell(r["adapter"] or "–"),
                     _cell(r["setting"]), _cell(r["protocol"]), _cell(r["architecture"]),
                     f"{metric} {score:g}", _cell(converted), _cell(r["source"]),
                     _cell(r["note"])])
    return lines + _table(header, body, right={6, 7}) + [""]


def render(
    suite: Suite, board: pd.DataFrame, reported: pd.DataFrame | None = None,
    reported_source: str = "leaderboards/reported.csv", csv_name: str | None = None,
) -> str:
    """The markdown leaderboard of ``board`` (the rounded frame written to ``<suite>.csv``)."""
    csv_name = csv_name or f"{suite.name}.csv"
    lines = _header(suite, board, csv_name)
    if board.empty:
        lines += ["(no results yet)", ""]
    else:
        targets = [t for t in suite.targets if t in board.columns]
        extra = [c for c in board.columns if c not in FIXED and c not in targets]
        detail = targets + extra  # per-target columns, src:<source>, other per-row metrics
        inline = len(detail) <= MAX_INLINE_DETAIL
        header = ["rank", "adapter", "protocol", "setting", "batch", "score ± ci95", "std",
                  "seeds", "worst seed"]
        collapse = "collapsed" in board.columns
        if collapse:
            header.append("collapsed")
        if inline:
            header += detail
        header += [COST_HEADERS[c] for c in COST_HEADERS if c in board.columns] + ["status"]
        body, detail_body = [], []
        for _, r in board.iterrows():
            score = _cell(r["score"], 2)
            if not (isinstance(r["ci95"], float) and math.isnan(r["ci95"])):
                score += f" ± {_cell(r['ci95'], 2)}"
            row = [_cell(r["rank"]), _cell(r["adapter"]), _cell(r["protocol"]),
                   _cell(r["setting"]), _cell(r["batch_size"]), score, _cell(r["std"], 2),
                   _cell(r["seeds"]), _cell(r["worst_seed"], 2)]
            if collapse:
                row.append(_cell(r["collapsed"]))
            details = [_cell(r[c], DECIMALS.get(c, 2)) for c in detail]
            if inline:
                row += details
            else:
                detail_body.append([_cell(r["rank"]), _cell(r["adapter"]), _cell(r["protocol"]),
                                    _cell(r["batch_size"]), *details])
            row += [_cell(r[c], DECIMALS[c]) for c in COST_HEADERS if c in board.columns]
            row.append(_cell(r["status"]))
            body.append(row)
        numeric = {i for i, h in enumerate(header)
                   if h not in {"adapter", "protocol", "setting", "status"}}
        lines += _table(header, body, numeric) + [""]
        if not inline:
            lines += ["### Per-target scores (mean over seeds; rows in the order above)", ""]
            d_header = ["rank", "adapter", "protocol", "batch", *detail]
            lines += _table(d_header, detail_body,
                            {i for i in range(len(d_header)) if i not in {1, 2}}) + [""]
    if reported is not None:
        lines += _reported_section(suite, reported, reported_source)
    return "\n".join(lines).rstrip() + "\n"


def render_for_suite(suite: Suite, board: pd.DataFrame, reported_path: Path = REPORTED_CSV) -> str:
    """``render`` with the shipped reference rows; their file's sha256 names the version used."""
    reported = load_reported(reported_path)
    source = "leaderboards/reported.csv"
    if Path(reported_path).is_file():
        source += f", sha256 {file_sha256(Path(reported_path))[:12]}"
    return render(suite, board, reported, source)
