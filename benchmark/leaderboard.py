"""Leaderboards: a pure function of the stored cells, rebuilt after every run.

``<suite>.csv`` has one row per (adapter, protocol, batch size):

- ``score``: mean over target domains and seeds of the suite's metric, in percent, higher is
  better. Only seeds whose target cells are all done count.
- ``std``: sample standard deviation (ddof=1) over seeds of the per-seed mean over targets.
- ``ci95``: half-width of the 95% confidence interval of the mean over seeds,
  t-distribution with seeds-1 degrees of freedom (empty for one seed).
- one column per target domain (mean over seeds), and ``src:<domain>`` for the source
  domain's own test split (not part of ``score``).
- ``adapt_s``: mean wall seconds per target cell spent in the adapter (attach, adapt,
  predict); ``img_per_s``: target images per second of that time; ``peak_mb``: peak memory
  (process peak RSS on CPU, peak allocated on CUDA).
- ``status``: ``ok``, or how many cells failed or are missing.

``<suite>-cells.csv`` is the long form: one row per cell, plus one column per further metric
a suite reports (e.g. ``iou/road`` for segmentation; ``pixel_accuracy``), after the fixed ones.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from benchmark import markdown
from benchmark.metrics import mean_std_ci95
from benchmark.store import ResultStore, atomic_write_text
from benchmark.suite import Suite

ROW_KEY = ["adapter", "protocol", "batch_size"]
CELL_COLUMNS = [
    "adapter", "protocol", "batch_size", "setting", "seed", "domain", "role", "status",
    "metric", "score", "ece", "entropy", "n_examples", "adapt_s", "img_per_s", "peak_mb",
    "error", "name", "hparams", "adapter_code", "data_fingerprint", "checkpoint_sha256",
    "shiftbench", "code_revision", "torch", "torchvision", "python", "device", "finished_at",
    "key",
]


def select_cells(
    cells: list[dict[str, Any]], suite_signature: str | None, current_keys: set[str]
) -> list[dict[str, Any]]:
    """One cell per (adapter label, protocol, batch size, seed, domain): cells of the current
    plan win; otherwise the most recently finished. Cells made on other data, recipe or torch
    version (another suite signature) are not comparable and are left out, and so are cells
    of an adapter label made with another version of its code than the winning cells: a row
    never mixes results from an edited adapter file with results from the old one."""
    ranked = sorted(cells, key=lambda c: (c["key"] in current_keys, c.get("finished_at", "")))
    comparable = [c for c in ranked
                  if suite_signature is None or c.get("suite_signature") == suite_signature]
    code = {c["label"]: c.get("adapter_code") for c in comparable}  # the winner's code
    chosen: dict[tuple, dict[str, Any]] = {}
    for cell in comparable:
        if cell.get("adapter_code") != code[cell["label"]]:
            continue
        ident = (cell["label"], cell["protocol"], cell["batch_size"], cell["seed"], cell["domain"])
        chosen[ident] = cell
    return list(chosen.values())


def cells_frame(cells: list[dict[str, Any]]) -> pd.DataFrame:
    rows = []
    extra_columns: set[str] = set()  # every other metric key (e.g. iou/<class>) -> a column
    for c in cells:
        v = c.get("versions", {})
        metrics = c.get("metrics", {})
        extra = {k: round(x, 4) if isinstance(x, float) else x
                 for k, x in metrics.items() if k not in CELL_COLUMNS}
        extra_columns.update(extra)
        rows.append({
            "adapter": c["label"], "protocol": c["protocol"], "batch_size": c["batch_size"],
            "setting": c.get("setting", ""), "seed": c["seed"], "domain": c["domain"],
            "role": c["role"], "status": c["status"], "metric": c["metric"],
            "score": c.get("score", math.nan), "ece": metrics.get("ece", math.nan),
            "entropy": metrics.get("entropy", math.nan),
            "n_examples": c.get("n_examples", math.nan), "adapt_s": c.get("adapt_s", math.nan),
            "img_per_s": c.get("img_per_s", math.nan), "peak_mb": c.get("peak_mb", math.nan),
            "error": c.get("error", ""), "name": c["adapter"],
            "hparams": repr(sorted(c.get("hparams", {}).items())),
            "adapter_code": c.get("adapter_code", ""),
            "data_fingerprint": c.get("data_fingerprint", ""),
            "checkpoint_sha256": c.get("checkpoint", {}).get("sha256", ""),
            "shiftbench": v.get("shiftbench", ""), "code_revision": v.get("code_revision", ""),
            "torch": v.get("torch", ""), "torchvision": v.get("torchvision", ""),
            "python": v.get("python", ""), "device": c.get("device", {}).get("device", ""),
            "finished_at": c.get("finished_at", ""), "key": c["key"], **extra,
        })
    frame = pd.DataFrame(rows, columns=CELL_COLUMNS + sorted(extra_columns))
    return frame.sort_values(["adapter", "protocol", "batch_size", "seed", "role", "domain"],
                             kind="stable").reset_index(drop=True)


def board_frame(suite: Suite, cells: pd.DataFrame) -> pd.DataFrame:
    targets = list(suite.targets)
    src_col = f"src:{suite.source}"
    rows = []
    for (adapter, protocol, batch_size), group in cells.groupby(ROW_KEY, sort=True):
        done = group[group.status == "done"]
        tgt = done[done.role == "target"]
        per_seed = []
        for _, seed_cells in tgt.groupby("seed"):
            if set(seed_cells.domain) == set(targets):
                per_seed.append(seed_cells.score.mean())
        score, std, ci95 = mean_std_ci95(per_seed)
        n_failed = int((group.status == "failed").sum())
        seeds_seen = group.seed.nunique()
        missing = seeds_seen * (len(targets) + 1) - len(done) - n_failed
        status = "ok"
        if n_failed or missing:
            parts = [f"{n_failed} failed"] if n_failed else []
            parts += [f"{missing} missing"] if missing else []
            status = ", ".join(parts)
        total_s = tgt.adapt_s.sum()
        row = {
            "adapter": adapter, "protocol": protocol, "batch_size": int(batch_size),
            "setting": group.setting.iloc[0], "metric": suite.metric,
            "score": score, "std": std, "ci95": ci95, "seeds": len(per_seed),
            **{t: tgt[tgt.domain == t].score.mean() for t in targets},
            src_col: done[done.role == "source"].score.mean(),
            "adapt_s": tgt.adapt_s.mean(),
            "img_per_s": tgt.n_examples.sum() / total_s if total_s > 0 else math.nan,
            "peak_mb": done.peak_mb.max(),
            "status": status,
        }
        rows.append(row)
    board = pd.DataFrame(rows)
    if board.empty:
        return board
    ranked = board.status.eq("ok") & board.seeds.gt(0)
    board["rank"] = pd.NA
    board.loc[ranked, "rank"] = board.loc[ranked, "score"].rank(ascending=False, method="min")
    board["_unranked"] = ~ranked
    board = board.sort_values(["_unranked", "score", "adapter"], ascending=[True, False, True],
                              kind="stable").drop(columns="_unranked")
    board["rank"] = board["rank"].astype("Int64")
    columns = ["rank", "adapter", "protocol", "setting", "batch_size", "metric", "score",
               "std", "ci95", "seeds", *targets, src_col, "adapt_s", "img_per_s", "peak_mb",
               "status"]
    return board[columns].reset_index(drop=True)


_DECIMALS = {"score": 2, "std": 2, "ci95": 2, "adapt_s": 3, "img_per_s": 1, "peak_mb": 0,
             "ece": 2, "entropy": 4}


def _rounded(frame: pd.DataFrame, suite: Suite) -> pd.DataFrame:
    decimals = dict(_DECIMALS)
    decimals.update({d: 2 for d in suite.targets})
    decimals[f"src:{suite.source}"] = 2
    return frame.round({k: v for k, v in decimals.items() if k in frame.columns})


def build(
    suite: Suite, store: ResultStore, current_keys: set[str] | None = None,
    suite_signature: str | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    cells = select_cells(store.cells(suite.name), suite_signature, current_keys or set())
    long = cells_frame(cells)
    return _rounded(board_frame(suite, long), suite), _rounded(long, suite)


def write(
    suite: Suite, store: ResultStore, out_dir: Path, current_keys: set[str] | None = None,
    suite_signature: str | None = None,
) -> tuple[pd.DataFrame, list[Path]]:
    """Rebuild and atomically write ``<suite>.csv``, ``<suite>-cells.csv`` and ``<suite>.md``
    (the same board as markdown, with published reference rows; see benchmark.markdown)."""
    board, long = build(suite, store, current_keys, suite_signature)
    out_dir = Path(out_dir)
    paths = [out_dir / f"{suite.name}.csv", out_dir / f"{suite.name}-cells.csv"]
    atomic_write_text(paths[0], board.to_csv(index=False, lineterminator="\n"))
    atomic_write_text(paths[1], long.to_csv(index=False, lineterminator="\n"))
    paths.append(out_dir / f"{suite.name}.md")
    atomic_write_text(paths[2], markdown.render_for_suite(suite, board))
    return board, paths


def format_table(board: pd.DataFrame) -> str:
    if board.empty:
        return "(no results)"
    shown = board.drop(columns=["metric"]).copy()
    return shown.to_string(index=False, na_rep="")
