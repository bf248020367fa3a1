"""Paired comparison of two result sets: is adapter A really better than B on a suite?

Both sides come from the long-form cell CSV the leaderboard writes (``<suite>-cells.csv``):
two adapters of one file (``--a tent --b adabn``), or one or all adapters of two files
(two versions of a method, two machines). Only finished (``status == done``) target-role
cells count. A pair is the same (protocol, batch size, target domain, seed) on both sides —
in two-file mode also the same adapter — so both members share the source model of that
seed and see the same target data; pairing removes that shared variation from the test.

For the differences d = score_a − score_b (in the suite metric's units, higher is better):

- mean difference with a 95% confidence interval, mean ± t(0.975, n−1) · sd(d, ddof=1) / √n;
- primary test: the paired t-test (``scipy.stats.ttest_rel``), two-sided;
- secondary test: the Wilcoxon signed-rank test (``scipy.stats.wilcoxon``), two-sided, zero
  differences dropped (``zero_method="wilcox"``), exact for small n;
- wins / ties / losses of A: d > tol, |d| ≤ tol, d < −tol;
- a verdict from the t-test at level ``alpha`` (0.05 by default).

Statistical unit: by default a pair is one cell, so a suite with T targets and S seeds gives
T·S pairs. Cells of one seed share a source model, so they are not independent and the test is
optimistic when T is large (e.g. 75 corruption × severity targets); ``unit="seed"`` first
averages each side over the paired targets of a seed and tests the S seed means instead.
Per-target rows always pair by seed.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats

from benchmark.errors import ShiftbenchError
from benchmark.report.signed_csv import DIGEST_COLUMN, verify
from benchmark.store import atomic_write_text

Unit = Literal["cell", "seed"]
PAIR_KEY = ["protocol", "batch_size", "domain", "seed"]
REQUIRED_COLUMNS = ["adapter", "protocol", "batch_size", "seed", "domain", "role", "status",
                    "metric", "score"]
ALL = "*"  # marks a row that pools every adapter / every domain
TABLE_COLUMNS = [
    "a", "b", "adapter", "domain", "metric", "unit", "n_pairs", "mean_a", "mean_b", "mean_diff",
    "ci95_low", "ci95_high", "t_stat", "t_p", "wilcoxon_stat", "wilcoxon_p", "wins", "ties",
    "losses", "verdict",
]


def read_cells(path: Path) -> pd.DataFrame:
    """A long-form cell CSV, checked for the columns a comparison needs."""
    path = Path(path)
    if not path.is_file():
        raise ShiftbenchError(
            f"cell file not found: {path}. It is written by `python run.py run --suite <suite>` "
            "into the --leaderboards folder as <suite>-cells.csv; pass that folder with "
            "--leaderboards DIR, or the file itself with --csv-a/--csv-b"
        )
    verify(path)
    try:
        cells = pd.read_csv(path, keep_default_na=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ShiftbenchError(f"cannot read {path} as a cell CSV ({exc})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in cells.columns]
    if missing:
        raise ShiftbenchError(
            f"{path} is not a long-form cell CSV (missing columns: {', '.join(missing)}); "
            "use the <suite>-cells.csv file, not the <suite>.csv leaderboard"
        )
    cells["domain"] = cells["domain"].astype(str)
    cells["adapter"] = cells["adapter"].astype(str)
    return cells.drop(columns=DIGEST_COLUMN)


def select_adapter(cells: pd.DataFrame, name: str, path: Path) -> tuple[str, pd.DataFrame]:
    """Cells of one adapter row: ``name`` is a label (``tent(lr=0.0001)``) or, when it names
    a single label, the adapter's registered name (``tent``)."""
    labels = sorted(cells["adapter"].unique())
    if name in labels:
        return name, cells[cells["adapter"] == name]
    if "name" in cells.columns:
        matching = sorted(cells.loc[cells["name"].astype(str) == name, "adapter"].unique())
        if len(matching) == 1:
            return matching[0], cells[cells["adapter"] == matching[0]]
        if len(matching) > 1:
            raise ShiftbenchError(
                f"adapter {name!r} has several rows in {path}: {', '.join(matching)}; "
                "name one of them exactly"
            )
    raise ShiftbenchError(
        f"adapter {name!r} has no cells in {path}; adapters there: "
        f"{', '.join(labels) if labels else '(none)'}. Run it first "
        f"(`python run.py run --adapters {name} ...`) or pick one of those"
    )


def _usable(cells: pd.DataFrame) -> pd.DataFrame:
    """Finished target cells with a finite score."""
    keep = (cells["role"] == "target") & (cells["status"] == "done") & np.isfinite(cells["score"])
    return cells[keep]


@dataclass
class Comparison:
    """Everything ``compare`` found: the per-scope table, the pairs and how they were made."""

    a: str
    b: str
    metric: str
    unit: Unit
    alpha: float
    table: pd.DataFrame
    pairs: pd.DataFrame
    unpaired_a: int
    unpaired_b: int
    notes: list[str] = field(default_factory=list)

    @property
    def overall(self) -> dict[str, Any]:
        row = self.table[(self.table["adapter"] == ALL) & (self.table["domain"] == ALL)]
        return row.iloc[0].to_dict()


def pair_cells(a: pd.DataFrame, b: pd.DataFrame, key: list[str]) -> pd.DataFrame:
    """Inner join of the usable cells of both sides on ``key``; one row per pair with
    ``score_a``, ``score_b`` and ``diff = score_a - score_b``."""
    sides = []
    for side, frame in (("a", a), ("b", b)):
        frame = _usable(frame)
        duplicated = frame.duplicated(key, keep=False)
        if duplicated.any():
            example = frame.loc[duplicated, key].iloc[0].to_dict()
            raise ShiftbenchError(
                f"side {side} has several cells for {example}; a cell CSV written by the "
                "leaderboard has one per key — was it concatenated from several runs?"
            )
        sides.append(frame[[*key, "metric", "score"]])
    pairs = sides[0].merge(sides[1], on=key, suffixes=("_a", "_b"), validate="one_to_one")
    pairs["diff"] = pairs["score_a"] - pairs["score_b"]
    return pairs.sort_values(key, kind="stable").reset_index(drop=True)


def paired_statistics(
    score_a: np.ndarray, score_b: np.ndarray, alpha: float = 0.05, tie_tol: float = 0.0
) -> dict[str, Any]:
    """Mean difference a − b, its t-interval, paired t-test, Wilcoxon signed-rank test and
    wins/ties/losses of a. Tests that are undefined (n < 2, all differences equal) give NaN."""
    a = np.asarray(score_a, dtype=float)
    b = np.asarray(score_b, dtype=float)
    d = a - b
    n = len(d)
    out: dict[str, Any] = {
        "n_pairs": n, "mean_a": a.mean() if n else math.nan,
        "mean_b": b.mean() if n else math.nan, "mean_diff": d.mean() if n else math.nan,
        "ci95_low": math.nan, "ci95_high": math.nan, "t_stat": math.nan, "t_p": math.nan,
        "wilcoxon_stat": math.nan, "wilcoxon_p": math.nan,
        "wins": int((d > tie_tol).sum()), "ties": int((np.abs(d) <= tie_tol).sum()),
        "losses": int((d < -tie_tol).sum()),
    }
    constant = n >= 2 and bool(np.all(d == d[0]))
    if n >= 2 and not constant:
        sd = d.std(ddof=1)
        half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
        out["ci95_low"], out["ci95_high"] = d.mean() - half, d.mean() + half
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            t = stats.ttest_rel(a, b)
            out["t_stat"], out["t_p"] = float(t.statistic), float(t.pvalue)
            if np.any(d != 0):
                w = stats.wilcoxon(a, b, zero_method="wilcox", alternative="two-sided")
                out["wilcoxon_stat"], out["wilcoxon_p"] = float(w.statistic), float(w.pvalue)
    elif constant:
        out["ci95_low"] = out["ci95_high"] = float(d[0])
    out["verdict"] = _verdict(out, alpha)
    return out


def _verdict(row: dict[str, Any], alpha: float, a: str = "a", b: str = "b") -> str:
    n, diff, p = row["n_pairs"], row["mean_diff"], row["t_p"]
    if n == 0:
        return "no pairs"
    if n < 2:
        return f"too few pairs for a test (n={n})"
    if math.isnan(p):
        if diff == 0:
            return "identical on every pair"
        better, worse = (a, b) if diff > 0 else (b, a)
        return f"{better} better than {worse} on every pair by the same margin (no variance: " \
               "t-test undefined)"
    if p < alpha:
        better, worse = (a, b) if diff > 0 else (b, a)
        return f"{better} better than {worse} (paired t-test p={p:.2g})"
    return f"no significant difference (paired t-test p={p:.2g})"


def _rows(
    pairs: pd.DataFrame, a: str, b: str, metric: str, unit: Unit, alpha: float, tie_tol: float,
    by_adapter: bool,
) -> list[dict[str, Any]]:
    rows = []

    def add(adapter: str, domain: str, frame: pd.DataFrame, row_unit: Unit) -> None:
        if row_unit == "seed":  # one pair per (protocol, batch size, seed): mean over targets
            group_key = ["adapter", "protocol", "batch_size", "seed"] if "adapter" in frame \
                else ["protocol", "batch_size", "seed"]
            frame = frame.groupby(group_key, sort=True)[["score_a", "score_b"]].mean()
        st = paired_statistics(frame["score_a"].to_numpy(), frame["score_b"].to_numpy(),
                               alpha, tie_tol)
        st["verdict"] = _verdict(st, alpha, a, b)
        rows.append({"a": a, "b": b, "adapter": adapter, "domain": domain, "metric": metric,
                     "unit": row_unit, **st})

    add(ALL, ALL, pairs, unit)
    if by_adapter:
        for adapter, frame in pairs.groupby("adapter", sort=True):
            add(str(adapter), ALL, frame, unit)
    for domain, frame in pairs.groupby("domain", sort=False):
        add(ALL, str(domain), frame, "cell")
    return rows


def _domain_order(pairs: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """Keep targets in the order the cell file lists them (the suite's order)."""
    order = {d: i for i, d in enumerate(dict.fromkeys(cells["domain"]))}
    return pairs.assign(_o=pairs["domain"].map(order)).sort_values(
        ["_o", "seed"], kind="stable").drop(columns="_o").reset_index(drop=True)


def _filter(cells: pd.DataFrame, protocol: str | None, batch_size: int | None) -> pd.DataFrame:
    if protocol is not None:
        cells = cells[cells["protocol"] == protocol]
    if batch_size is not None:
        cells = cells[cells["batch_size"] == batch_size]
    return cells


def _check_pairs(pairs: pd.DataFrame, a_cells: pd.DataFrame, b_cells: pd.DataFrame,
                 a: str, b: str) -> str:
    """The common metric; a clear error when nothing pairs up."""
    if pairs.empty:
        def describe(frame: pd.DataFrame) -> str:
            frame = _usable(frame)
            if frame.empty:
                return "no finished target cells"
            combos = sorted({f"{p}/bs{int(bs)}" for p, bs in
                             zip(frame["protocol"], frame["batch_size"], strict=True)})
            return (f"{len(frame)} finished target cells ({', '.join(combos)}; seeds "
                    f"{sorted(frame['seed'].unique().tolist())})")
        raise ShiftbenchError(
            f"no pairs: {a} has {describe(a_cells)}, {b} has {describe(b_cells)}; pairs need "
            "the same protocol, batch size, target domain and seed on both sides "
            "(select with --protocol / --batch-size, or run the missing cells)"
        )
    metrics = set(pairs["metric_a"]) | set(pairs["metric_b"])
    if len(metrics) > 1:
        raise ShiftbenchError(
            f"the two sides use different metrics ({', '.join(sorted(metrics))}); scores are "
            "not comparable — are the cell files from the same suite?"
        )
    return metrics.pop()


def compare_adapters(
    cells: pd.DataFrame, a: str, b: str, path: Path, *, protocol: str | None = None,
    batch_size: int | None = None, unit: Unit = "cell", alpha: float = 0.05,
    tie_tol: float = 0.0,
) -> Comparison:
    """Adapter ``a`` against adapter ``b`` within one cell file."""
    cells = _filter(cells, protocol, batch_size)
    label_a, a_cells = select_adapter(cells, a, path)
    label_b, b_cells = select_adapter(cells, b, path)
    if label_a == label_b:
        raise ShiftbenchError(f"--a and --b both select {label_a!r}; name two different rows")
    pairs = pair_cells(a_cells, b_cells, PAIR_KEY)
    metric = _check_pairs(pairs, a_cells, b_cells, label_a, label_b)
    pairs = _domain_order(pairs, cells)
    table = pd.DataFrame(_rows(pairs, label_a, label_b, metric, unit, alpha, tie_tol, False),
                         columns=TABLE_COLUMNS)
    return Comparison(label_a, label_b, metric, unit, alpha, table, pairs,
                      unpaired_a=len(_usable(a_cells)) - len(pairs),
                      unpaired_b=len(_usable(b_cells)) - len(pairs))


def _provenance(cells: pd.DataFrame, columns: list[str]) -> str:
    parts = []
    for col in columns:
        if col in cells.columns:
            values = sorted({str(v) for v in cells[col].dropna() if str(v)})
            if values:
                parts.append(f"{col} {', '.join(v[:12] for v in values)}")
    return "; ".join(parts)


def compare_files(
    cells_a: pd.DataFrame, cells_b: pd.DataFrame, path_a: Path, path_b: Path, *,
    adapter: str | None = None, protocol: str | None = None, batch_size: int | None = None,
    unit: Unit = "cell", alpha: float = 0.05, tie_tol: float = 0.0,
) -> Comparison:
    """The same adapter(s) in two cell files: ``adapter`` alone, or every adapter both have."""
    cells_a = _filter(cells_a, protocol, batch_size)
    cells_b = _filter(cells_b, protocol, batch_size)
    label_a = str(path_a) if Path(path_a).name == Path(path_b).name else Path(path_a).name
    label_b = str(path_b) if Path(path_a).name == Path(path_b).name else Path(path_b).name
    if adapter is not None:
        name_a, cells_a = select_adapter(cells_a, adapter, path_a)
        name_b, cells_b = select_adapter(cells_b, adapter, path_b)
        # compare the row the user named even if its label differs between versions
        cells_a = cells_a.assign(adapter=adapter)
        cells_b = cells_b.assign(adapter=adapter)
    pairs = pair_cells(cells_a, cells_b, ["adapter", *PAIR_KEY])
    metric = _check_pairs(pairs, cells_a, cells_b, label_a, label_b)
    pairs = _domain_order(pairs, cells_a)
    by_adapter = pairs["adapter"].nunique() > 1
    table = pd.DataFrame(_rows(pairs, label_a, label_b, metric, unit, alpha, tie_tol,
                               by_adapter), columns=TABLE_COLUMNS)
    notes = []
    fp_col = "data_fingerprint"
    if fp_col in cells_a.columns and fp_col in cells_b.columns:
        fa = set(_usable(cells_a)[fp_col].dropna().astype(str))
        fb = set(_usable(cells_b)[fp_col].dropna().astype(str))
        if fa and fb and fa != fb:
            notes.append("warning: the two files were made on different data (data_fingerprint "
                         "differs); differences may come from the data, not the method")
    for label, cells in ((label_a, cells_a), (label_b, cells_b)):
        made_with = _provenance(_usable(cells), ["shiftbench", "code_revision", "torch",
                                                 "device"])
        if made_with:
            notes.append(f"{label}: {made_with}")
    return Comparison(label_a, label_b, metric, unit, alpha, table, pairs,
                      unpaired_a=len(_usable(cells_a)) - len(pairs),
                      unpaired_b=len(_usable(cells_b)) - len(pairs), notes=notes)


def _fmt(value: Any, spec: str = ".2f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def format_report(result: Comparison) -> str:
    """The comparison as text: a header, the per-scope table and the verdict line."""
    o = result.overall
    unit_text = ("one pair per (protocol, batch size, target, seed)" if result.unit == "cell"
                 else "one pair per (protocol, batch size, seed), mean over paired targets")
    lines = [
        f"a = {result.a}   b = {result.b}   metric: {result.metric} (higher is better)",
        f"pairs: {unit_text}; {len(result.pairs)} paired cells"
        + (f", unpaired: {result.unpaired_a} of a, {result.unpaired_b} of b"
           if result.unpaired_a or result.unpaired_b else ""),
        "difference d = a - b; 95% CI = mean(d) ± t(0.975, n-1)·sd(d)/√n; primary test: paired "
        "t-test (two-sided), secondary: Wilcoxon signed-rank (two-sided, zeros dropped)",
        "",
    ]
    shown = []
    for _, r in result.table.iterrows():
        shown.append({
            "adapter": "all" if r["adapter"] == ALL else r["adapter"],
            "target": "all" if r["domain"] == ALL else r["domain"],
            "n": int(r["n_pairs"]), "mean a": _fmt(r["mean_a"]), "mean b": _fmt(r["mean_b"]),
            "a - b": _fmt(r["mean_diff"], "+.2f"),
            "95% CI": f"[{_fmt(r['ci95_low'], '+.2f')}, {_fmt(r['ci95_high'], '+.2f')}]",
            "t-test p": _fmt(r["t_p"], ".3g"), "Wilcoxon p": _fmt(r["wilcoxon_p"], ".3g"),
            "W/T/L": f"{r['wins']}/{r['ties']}/{r['losses']}",
        })
    frame = pd.DataFrame(shown)
    if (frame["adapter"] == "all").all():
        frame = frame.drop(columns="adapter")
    lines.append(frame.to_string(index=False))
    lines.append("")
    lines.extend(result.notes)
    if 0 < o["n_pairs"] < 6:
        lines.append(f"note: with {o['n_pairs']} pairs the two-sided Wilcoxon test cannot reach "
                     "p < 0.05 (needs 6 or more non-zero differences); rely on the t-test or "
                     "run more seeds")
    lines.append(f"verdict (alpha={result.alpha:g}, {o['n_pairs']} pairs): {o['verdict']}")
    return "\n".join(lines)


def write_csv(result: Comparison, path: Path) -> Path:
    """The per-scope table as CSV (``*`` = all adapters / all targets), written atomically."""
    path = Path(path)
    atomic_write_text(path, result.table.to_csv(index=False, lineterminator="\n"))
    return path
