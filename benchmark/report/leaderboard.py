"""Leaderboards: a pure function of the stored cells, rebuilt after every run.

``<suite>.csv`` has one row per (adapter, protocol, batch size):

- ``score``: mean over target domains and seeds of the suite's metric, in percent, higher is
  better. Only seeds whose target cells are all done count.
- ``std``: sample standard deviation (ddof=1) over seeds of the per-seed mean over targets.
- ``ci95``: half-width of the 95% confidence interval of the mean over seeds,
  t-distribution with seeds-1 degrees of freedom (empty for one seed).
- ``worst_seed``: the lowest per-seed mean over targets, so one bad seed shows even when the
  mean and its interval look ordinary.
- ``collapsed`` (classification): how many seeds have a target cell where the model answers
  nearly one class: one class takes at least half of the predictions and at least twice its
  share of the labels (the cell's ``collapsed`` metric, benchmark.metrics.Accuracy).
- one column per target domain (mean over seeds), and ``src:<domain>`` for the source
  domain's own test split (not part of ``score``).
- ``adapt_s``: mean wall seconds per target cell spent in the adapter (attach, adapt,
  predict); ``img_per_s``: target images per second of that time; ``peak_mb``: peak memory
  (process peak RSS on CPU, peak allocated on CUDA).
- ``iou/<class>`` (segmentation): each class's IoU, mean over the target cells that score
  it (a class absent from a cell's ground truth and predictions has no IoU there).
- ``status``: ``ok``, or how many cells failed or are missing.
- ``isolation``: how the row's adapter code was kept from the labels (the weakest over its
  cells): ``sandbox``, ``isolated`` (its own process, the default) or ``in-process``
  (debugging; nothing enforced). See benchmark.engine.isolation.

Corruption suites (whose ``target_factors()`` give every target a ``corruption`` and a
``severity``, e.g. cifar10-c, digits-c) replace the per-target columns -- 75 of them -- by:

- ``mean_error``: 100 - accuracy, averaged over all targets (each target: mean over seeds).
- ``mCE(vs source)``: mean corruption error (Hendrycks & Dietterich, ICLR 2019) with this
  suite's ``source`` adapter row as the baseline: per corruption, the row's error summed over
  severities divided by the source row's, averaged over corruptions, x 100 (source itself
  = 100; lower is better). ``mCE_baseline`` says what was used, or why ``mCE`` is empty
  (no finished ``source`` cells on these data).
- ``c:<corruption>``: error averaged over severities; ``s:<k>``: error averaged over
  corruptions at severity k.

The per-target scores stay in the long form.

``<suite>-cells.csv`` is the long form: one row per cell, plus one column per further metric
a suite reports (e.g. ``iou/road`` for segmentation; ``pixel_accuracy``), after the fixed ones.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from benchmark.adapter import uses_source_images
from benchmark.metrics import mean_std_ci95
from benchmark.report import markdown
from benchmark.report.signed_csv import to_signed_csv
from benchmark.store import ResultStore, atomic_write_text
from benchmark.suite import Suite

ROW_KEY = ["adapter", "protocol", "batch_size"]
ISOLATION_STRENGTH = ["in-process", "isolated", "sandbox"]


def _strength(isolation: str) -> int:
    """Rank of an isolation mode, weakest first; unknown (older cells) is weakest."""
    return ISOLATION_STRENGTH.index(isolation) if isolation in ISOLATION_STRENGTH else -1
CELL_COLUMNS = [
    "adapter", "protocol", "batch_size", "setting", "seed", "domain", "role", "status",
    "isolation", "metric", "score", "ece", "entropy", "n_examples", "adapt_s", "img_per_s",
    "peak_mb",
    "error", "name", "hparams", "adapter_code", "data_fingerprint", "checkpoint_sha256",
    "shiftbench", "code_revision", "torch", "torchvision", "python", "device", "finished_at",
    "key", "protocol_params", "stream_position", "curve",
    "adapted_batches", "batches", "cost_ratio",
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
            "role": c["role"], "status": c["status"],
            "isolation": c.get("isolation", "in-process"), "metric": c["metric"],
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
            "finished_at": c.get("finished_at", ""), "key": c["key"],
            "protocol_params": json.dumps(c.get("protocol_params", {}), sort_keys=True),
            "stream_position": c.get("stream_position", math.nan),
            # continual streams: online accuracy after each batch of this target
            "curve": json.dumps(c["curve"]) if "curve" in c else "",
            # the online protocol: batches adapted on, of all, and the counted cost
            "adapted_batches": c.get("adapted_batches", math.nan),
            "batches": c.get("batches", math.nan), "cost_ratio": c.get("cost_ratio", math.nan),
            **extra,
        })
    frame = pd.DataFrame(rows, columns=CELL_COLUMNS + sorted(extra_columns))
    return frame.sort_values(["adapter", "protocol", "batch_size", "seed", "role", "domain"],
                             kind="stable").reset_index(drop=True)


MCE_COLUMN = "mCE(vs source)"
MCE_BASELINE = "source"  # adapter label of the mCE baseline row


def corruption_grid(
    suite: Suite, targets: list[str] | None = None
) -> dict[str, tuple[str, int]] | None:
    """target -> (corruption, severity) when every target has both factors and the metric is
    accuracy (error = 100 - accuracy); otherwise None (an ordinary board)."""
    targets = list(suite.targets) if targets is None else targets
    factors = suite.target_factors()
    if suite.metric != "accuracy" or not factors:
        return None
    if not all(t in factors and {"corruption", "severity"} <= factors[t].keys()
               for t in targets):
        return None
    return {t: (str(factors[t]["corruption"]), int(factors[t]["severity"])) for t in targets}


def _mean(values: list[float]) -> float:
    """Mean, or NaN if any value is NaN (an incomplete group has no average)."""
    return sum(values) / len(values) if values else math.nan


def corruption_columns(
    errors: dict[str, float], baseline: dict[str, float] | None,
    grid: dict[str, tuple[str, int]],
) -> dict[str, float]:
    """mean_error, mCE (NaN without a complete baseline), c:<corruption> and s:<k> from
    per-target errors (NaN when a target has no finished cell)."""
    corruptions = list(dict.fromkeys(c for c, _ in grid.values()))
    severities = sorted({s for _, s in grid.values()})
    ratios = []
    for c in corruptions:
        domains = [t for t, (c2, _) in grid.items() if c2 == c]
        own = sum(errors[t] for t in domains)
        base = sum(baseline[t] for t in domains) if baseline is not None else math.nan
        ratios.append(own / base if base > 0 else math.nan)  # NaN propagates through sums
    columns = {"mean_error": _mean([errors[t] for t in grid]),
               MCE_COLUMN: 100 * _mean(ratios)}
    for c in corruptions:
        columns[f"c:{c}"] = _mean([errors[t] for t, (c2, _) in grid.items() if c2 == c])
    for k in severities:
        columns[f"s:{k}"] = _mean([errors[t] for t, (_, s) in grid.items() if s == k])
    return columns


def _baseline_errors(cells: pd.DataFrame, grid: dict[str, tuple[str, int]]
                     ) -> tuple[dict[str, float] | None, str]:
    """The source row's error per target (mean over its seeds; the source adapter predicts
    the same at every protocol and batch size) and a note saying what was used."""
    done = cells[(cells.adapter == MCE_BASELINE) & (cells.role == "target")
                 & (cells.status == "done")]
    errors = {t: 100 - done[done.domain == t].score.mean() for t in grid}
    missing = [t for t, e in errors.items() if math.isnan(e)]
    if missing:
        shown = ", ".join(missing[:3]) + (f" (+{len(missing) - 3} more)" if len(missing) > 3
                                           else "")
        return None, (f"missing: no finished '{MCE_BASELINE}' cells for {shown}; run the "
                      f"'{MCE_BASELINE}' adapter on this suite")
    return errors, f"{MCE_BASELINE} ({done.seed.nunique()} seeds)"


def board_frame(
    suite: Suite, cells: pd.DataFrame, targets: list[str] | None = None
) -> pd.DataFrame:
    """One row per (adapter, protocol, batch size) over ``targets`` (default: all of the
    suite's; a run restricted with ``--targets`` ranks on its own targets)."""
    targets = list(suite.targets) if targets is None else list(targets)
    cells = cells[cells.role.eq("source") | cells.domain.isin(targets)]
    src_col = f"src:{suite.source}"
    grid = corruption_grid(suite, targets)
    calibration = suite.metric == "accuracy"
    if grid is not None:
        baseline, baseline_note = _baseline_errors(cells, grid)
    per_class = _per_class_columns(suite, cells)  # segmentation
    rows = []
    for (adapter, protocol, batch_size), group in cells.groupby(ROW_KEY, sort=True):
        done = group[group.status == "done"]
        tgt = done[done.role == "target"]
        per_seed, collapsed_seeds = [], 0
        for _, seed_cells in tgt.groupby("seed"):
            if set(seed_cells.domain) == set(targets):
                per_seed.append(seed_cells.score.mean())
                if "collapsed" in seed_cells:
                    collapsed_seeds += bool(seed_cells.collapsed.eq(1).any())
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
            "worst_seed": min(per_seed, default=math.nan),
            **({"collapsed": collapsed_seeds} if calibration else {}),
            # calibration of the same predictions: mean over target cells (classification)
            **({"ece": tgt.ece.mean(), "entropy": tgt.entropy.mean()} if calibration else {}),
            **{t: tgt[tgt.domain == t].score.mean() for t in targets},
            src_col: done[done.role == "source"].score.mean(),
            "adapt_s": tgt.adapt_s.mean(),
            "img_per_s": tgt.n_examples.sum() / total_s if total_s > 0 else math.nan,
            "peak_mb": done.peak_mb.max(),
            "status": status,
            # the weakest isolation any of its cells ran under (engine.isolation)
            "isolation": min(done.isolation, key=_strength, default=""),
        }
        # per-class IoU over the target cells (NaN where a class is absent from a cell)
        row.update({c: pd.to_numeric(tgt[c], errors="coerce").mean() for c in per_class})
        batches = pd.to_numeric(tgt.batches, errors="coerce")
        if batches.notna().any():  # the online protocol: share of batches adapted on
            adapted = pd.to_numeric(tgt.adapted_batches, errors="coerce")
            row["adapted"] = adapted.sum() / batches.sum()
            row["cost_ratio"] = pd.to_numeric(tgt.cost_ratio, errors="coerce").mean()
        if grid is not None:
            row.update(corruption_columns({t: 100 - row.pop(t) for t in targets}, baseline,
                                          grid))
            row["mCE_baseline"] = baseline_note
        rows.append(row)
    board = pd.DataFrame(rows)
    if board.empty:
        return board
    ranked = board.status.eq("ok") & board.seeds.gt(0)
    # rows that used source images at test time (setting ...+src) are ranked among
    # themselves, listed after the source-free ranking: never silently mixed into it
    board["_src"] = board.setting.map(uses_source_images).astype(bool)
    board["rank"] = pd.NA
    for uses in (False, True):
        rows = ranked & board._src.eq(uses)
        board.loc[rows, "rank"] = board.loc[rows, "score"].rank(ascending=False, method="min")
    board["_unranked"] = ~ranked
    board = board.sort_values(["_unranked", "_src", "score", "adapter"],
                              ascending=[True, True, False, True],
                              kind="stable").drop(columns=["_unranked", "_src"])
    board["rank"] = board["rank"].astype("Int64")
    detail = targets
    if grid is not None:  # per-target columns live in the cells file
        detail = [c for c in board.columns
                  if c == "mean_error" or c.startswith(("mCE", "c:", "s:"))]
    columns = ["rank", "adapter", "protocol", "setting", "batch_size", "metric", "score",
               "std", "ci95", "seeds", "worst_seed", *(["collapsed"] if calibration else []),
               *(["ece", "entropy"] if calibration else []), *detail,
               src_col, *per_class, "adapt_s", "img_per_s", "peak_mb", "status", "isolation",
               *[c for c in ("adapted", "cost_ratio") if c in board.columns]]
    return board[columns].reset_index(drop=True)


def _per_class_columns(suite: Suite, cells: pd.DataFrame) -> list[str]:
    """The cells' ``iou/<class>`` columns in the suite's class order (others after, sorted)."""
    present = {c for c in cells.columns if c.startswith("iou/")}
    if not present:
        return []
    names = getattr(suite.make_metric(), "class_names", None) or []
    ordered = [f"iou/{n}" for n in names if f"iou/{n}" in present]
    return ordered + sorted(present - set(ordered))


_DECIMALS = {"score": 2, "std": 2, "ci95": 2, "worst_seed": 2, "adapt_s": 3, "img_per_s": 1,
             "peak_mb": 0, "ece": 2, "entropy": 4, "adapted": 3, "cost_ratio": 2}


def _rounded(frame: pd.DataFrame, suite: Suite) -> pd.DataFrame:
    decimals = dict(_DECIMALS)
    decimals.update({d: 2 for d in suite.targets})
    decimals.update({c: 2 for c in frame.columns
                     if c in ("mean_error", MCE_COLUMN) or c.startswith(("c:", "s:", "iou/"))})
    decimals[f"src:{suite.source}"] = 2
    return frame.round({k: v for k, v in decimals.items() if k in frame.columns})


def build(
    suite: Suite, store: ResultStore, current_keys: set[str] | None = None,
    suite_signature: str | None = None, targets: list[str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    cells = select_cells(store.cells(suite.name), suite_signature, current_keys or set())
    long = cells_frame(cells)
    return _rounded(board_frame(suite, long, targets), suite), _rounded(long, suite)


def write(
    suite: Suite, store: ResultStore, out_dir: Path, current_keys: set[str] | None = None,
    suite_signature: str | None = None, targets: list[str] | None = None,
) -> tuple[pd.DataFrame, list[Path]]:
    """Rebuild and atomically write ``<suite>.csv``, ``<suite>-cells.csv`` and ``<suite>.md``
    (the same board as markdown, with published reference rows; see benchmark.report.markdown)."""
    board, long = build(suite, store, current_keys, suite_signature, targets)
    out_dir = Path(out_dir)
    paths = [out_dir / f"{suite.name}.csv", out_dir / f"{suite.name}-cells.csv"]
    atomic_write_text(paths[0], board.to_csv(index=False, lineterminator="\n"))
    atomic_write_text(paths[1], to_signed_csv(long))
    paths.append(out_dir / f"{suite.name}.md")
    atomic_write_text(paths[2], markdown.render_for_suite(suite, board))
    return board, paths


def format_table(board: pd.DataFrame) -> str:
    if board.empty:
        return "(no results)"
    shown = board.drop(columns=["metric"]).copy()
    return shown.to_string(index=False, na_rep="")
