"""Figures from a suite's long-form cell CSV (``<suite>-cells.csv``), as PNG files.

- ``heatmap``: mean score over seeds for every adapter row × target domain.
- ``severity``: for -C style suites (every target named ``<corruption>-<severity>``), error vs
  severity, one line per adapter row: mean over corruptions and seeds, shaded 95% CI over seeds.
- ``batch_size``: score vs test batch size when the cells hold several batch sizes.
- ``online``: online accuracy along a continual stream, when cells carry per-step curves in a
  ``curve`` column (a JSON list of the running accuracy in % after each test batch, in stream
  order); skipped otherwise.

An "adapter row" is a leaderboard row: adapter label, plus protocol and batch size when those
vary in the file. Only finished target cells are plotted. Figures are built with matplotlib's
object API on the Agg canvas (no pyplot, no display, no global state), and every function
returns its ``Figure`` so callers and tests can inspect it.
"""

from __future__ import annotations

import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import stats

from benchmark.report.compare import read_cells
from benchmark.store import atomic_write_bytes

SEVERITY_NAME = re.compile(r"^(?P<corruption>.+)-(?P<severity>\d+)$")
METRIC_LABEL = {"accuracy": "accuracy (%)", "miou": "mIoU (%)"}


def _targets(cells: pd.DataFrame) -> pd.DataFrame:
    done = cells[(cells["role"] == "target") & (cells["status"] == "done")]
    done = done[np.isfinite(done["score"])].copy()
    varies = [c for c in ("protocol", "batch_size") if cells[c].nunique() > 1]

    def label(row: pd.Series) -> str:
        extra = [str(row["protocol"]) if c == "protocol" else f"bs {int(row['batch_size'])}"
                 for c in varies]
        return f"{row['adapter']} ({', '.join(extra)})" if extra else str(row["adapter"])

    done["row"] = done.apply(label, axis=1) if len(done) else pd.Series(dtype=str)
    return done


def _metric(cells: pd.DataFrame) -> str:
    metrics = cells["metric"].dropna().unique()
    return str(metrics[0]) if len(metrics) else "score"


def _mean_ci(values: np.ndarray) -> tuple[float, float]:
    """Mean and 95% t-interval half-width (NaN for one value)."""
    n = len(values)
    mean = float(np.mean(values))
    if n < 2:
        return mean, math.nan
    return mean, float(stats.t.ppf(0.975, n - 1) * np.std(values, ddof=1) / math.sqrt(n))


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def heatmap(cells: pd.DataFrame, suite: str) -> Figure:
    """Adapter rows × target domains, mean score over seeds, annotated when legible."""
    done = _targets(cells)
    metric = _metric(cells)
    domains = list(dict.fromkeys(done["domain"]))
    table = done.pivot_table(index="row", columns="domain", values="score", aggfunc="mean")
    table = table.reindex(columns=domains)
    table = table.loc[table.mean(axis=1).sort_values(ascending=False).index]
    n_seeds = done.groupby(["row", "domain"])["seed"].nunique()
    fig = _new_figure(min(24.0, max(5.0, 1.0 + 0.55 * len(domains))),
                      max(2.5, 1.2 + 0.4 * len(table)))
    ax = fig.add_subplot()
    image = ax.imshow(table.to_numpy(), aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(domains)), domains, rotation=60 if len(domains) > 4 else 0,
                  ha="right" if len(domains) > 4 else "center")
    ax.set_yticks(range(len(table)), table.index)
    ax.set_xlabel("target domain")
    ax.set_ylabel("adapter")
    seeds_text = _seeds_text(n_seeds)
    ax.set_title(f"{suite}: {METRIC_LABEL.get(metric, metric)} per target, mean over "
                 f"{seeds_text}")
    fig.colorbar(image, ax=ax, label=METRIC_LABEL.get(metric, metric))
    if table.size <= 300 and len(domains) <= 40:  # numbers stay legible
        values = table.to_numpy()
        finite = values[np.isfinite(values)]
        middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
        for (i, j), v in np.ndenumerate(values):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=7,
                        color="black" if v > middle else "white")
    return fig


def _seeds_text(n_seeds: pd.Series) -> str:
    if n_seeds.empty:
        return "0 seeds"
    lo, hi = int(n_seeds.min()), int(n_seeds.max())
    return f"{lo} seed{'s' if lo != 1 else ''}" if lo == hi else f"{lo}–{hi} seeds"


def severity_targets(domains: list[str]) -> dict[str, tuple[str, int]] | None:
    """``{domain: (corruption, severity)}`` when every target is ``<corruption>-<severity>``
    with at least two severities; None otherwise (not a -C style suite)."""
    parsed = {}
    for d in domains:
        m = SEVERITY_NAME.match(d)
        if m is None:
            return None
        parsed[d] = (m["corruption"], int(m["severity"]))
    if len({s for _, s in parsed.values()}) < 2:
        return None
    return parsed


def severity_curves(cells: pd.DataFrame, suite: str) -> Figure | None:
    """Error (100 − accuracy; the score itself for other metrics) vs severity, one line per
    adapter row: mean over corruptions of each seed, then mean and 95% CI over seeds."""
    done = _targets(cells)
    parsed = severity_targets(list(dict.fromkeys(done["domain"])))
    if parsed is None:
        return None
    metric = _metric(cells)
    done["corruption"] = done["domain"].map(lambda d: parsed[d][0])
    done["severity"] = done["domain"].map(lambda d: parsed[d][1])
    as_error = metric == "accuracy"
    done["y"] = 100.0 - done["score"] if as_error else done["score"]
    per_seed = done.groupby(["row", "severity", "seed"], sort=True)["y"].mean().reset_index()
    fig = _new_figure(6.4, 4.2)
    ax = fig.add_subplot()
    order = per_seed.groupby("row")["y"].mean().sort_values(ascending=as_error).index
    for row in order:
        points = per_seed[per_seed["row"] == row]
        xs, means, halves = [], [], []
        for severity, group in points.groupby("severity", sort=True):
            mean, half = _mean_ci(group["y"].to_numpy())
            xs.append(severity)
            means.append(mean)
            halves.append(half)
        (line,) = ax.plot(xs, means, marker="o", label=row)
        lo = np.array(means) - np.nan_to_num(np.array(halves))
        hi = np.array(means) + np.nan_to_num(np.array(halves))
        ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15, linewidth=0)
    severities = sorted({s for _, s in parsed.values()})
    corruptions = sorted({c for c, _ in parsed.values()})
    ax.set_xticks(severities)
    ax.set_xlabel("corruption severity")
    ax.set_ylabel("error (%) = 100 − accuracy" if as_error else METRIC_LABEL.get(metric, metric))
    n_seeds = per_seed.groupby("row")["seed"].nunique()
    ax.set_title(f"{suite}: {'error' if as_error else metric} vs severity\n(mean over "
                 f"{len(corruptions)} corruptions; {_seeds_text(n_seeds)}, band = 95% CI)")
    ax.grid(alpha=0.3)
    ax.legend(title="adapter", fontsize=8)
    return fig


def batch_size_curves(cells: pd.DataFrame, suite: str) -> Figure | None:
    """Score vs test batch size (log scale), one line per (adapter, protocol): per seed the
    mean over targets, then mean and 95% CI over seeds."""
    done = _targets(cells)
    if done["batch_size"].nunique() < 2:
        return None
    metric = _metric(cells)
    multi_protocol = done["protocol"].nunique() > 1
    done["line"] = done["adapter"].astype(str) + (
        " (" + done["protocol"].astype(str) + ")" if multi_protocol else "")
    per_seed = done.groupby(["line", "batch_size", "seed"], sort=True)["score"].mean()
    per_seed = per_seed.reset_index()
    fig = _new_figure(6.4, 4.2)
    ax = fig.add_subplot()
    for line_name, points in per_seed.groupby("line", sort=True):
        xs, means, halves = [], [], []
        for bs, group in points.groupby("batch_size", sort=True):
            mean, half = _mean_ci(group["score"].to_numpy())
            xs.append(int(bs))
            means.append(mean)
            halves.append(half)
        (line,) = ax.plot(xs, means, marker="o", label=line_name)
        lo = np.array(means) - np.nan_to_num(np.array(halves))
        hi = np.array(means) + np.nan_to_num(np.array(halves))
        ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15, linewidth=0)
    sizes = sorted(int(b) for b in done["batch_size"].unique())
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.set_xlabel("test batch size (log scale)")
    ax.set_ylabel(METRIC_LABEL.get(metric, metric) + ", mean over targets")
    n_seeds = per_seed.groupby("line")["seed"].nunique()
    ax.set_title(f"{suite}: {metric} vs test batch size\n({_seeds_text(n_seeds)}, band = 95% CI)")
    ax.grid(alpha=0.3)
    ax.legend(title="adapter", fontsize=8)
    return fig


def online_curves(cells: pd.DataFrame, suite: str) -> Figure | None:
    """Online accuracy vs step of the test stream, one line per adapter row (mean over seeds
    of the per-seed stream; a seed's cells are concatenated in file order)."""
    if "curve" not in cells.columns:
        return None
    done = _targets(cells)
    done = done[done["curve"].notna() & (done["curve"].astype(str).str.len() > 0)]
    if done.empty:
        return None
    fig = _new_figure(6.4, 4.2)
    ax = fig.add_subplot()
    for row, group in done.groupby("row", sort=True):
        if "stream_position" in group.columns:  # continual cells: the recorded target order
            group = group.sort_values("stream_position", kind="stable")
        streams = [np.concatenate([np.asarray(json.loads(c), dtype=float) for c in g["curve"]])
                   for _, g in group.groupby("seed", sort=True)]
        length = min(len(s) for s in streams)
        mean = np.mean([s[:length] for s in streams], axis=0)
        ax.plot(np.arange(1, length + 1), mean, label=row)
    ax.set_xlabel("test batch (step of the stream)")
    ax.set_ylabel("online accuracy (%) so far")
    ax.set_title(f"{suite}: online accuracy along the test stream (mean over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(title="adapter", fontsize=8)
    return fig


@dataclass
class PlotResult:
    written: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def save(fig: Figure, path: Path) -> Path:
    """Render ``fig`` to PNG and write it atomically."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=150)
    atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)


def write_plots(suite: str, cells_csv: Path, out_dir: Path) -> PlotResult:
    """Every figure that applies to the suite's cells, as ``<out_dir>/<suite>-<kind>.png``."""
    cells = read_cells(cells_csv)
    result = PlotResult()
    if _targets(cells).empty:
        result.skipped.append(f"all: {cells_csv} has no finished target cells")
        return result
    makers = {
        "heatmap": (heatmap, ""),
        "severity": (severity_curves, "target names are not all <corruption>-<severity> "
                                      "with two or more severities"),
        "batch-size": (batch_size_curves, "the cells have a single batch size"),
        "online": (online_curves, "no cell carries a per-step `curve` (continual streams)"),
    }
    for kind, (make, reason) in makers.items():
        fig = make(cells, suite)
        if fig is None:
            result.skipped.append(f"{kind}: {reason}")
            continue
        result.written.append(save(fig, Path(out_dir) / f"{suite}-{kind}.png"))
    return result
