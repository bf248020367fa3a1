"""`run.py compare`: its numbers against a direct pandas/scipy computation on a fixture."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from cells_fixture import cell_row, frame
from scipy import stats

from benchmark.cli import main
from benchmark.report.signed_csv import to_signed_csv

TARGETS = ["fog", "snow", "blur"]
SEEDS = range(6)


def build_cells() -> pd.DataFrame:
    """Three adapters, three targets, six seeds, plus cells that must not be paired: source
    role cells, one failed tent cell, one adabn cell never run, and one exact tie."""
    rng = np.random.default_rng(7)
    rows = []
    for seed in SEEDS:
        base = {t: 50 + 10 * rng.random() for t in TARGETS}
        for t in TARGETS:
            scores = {"source": base[t] - 8, "adabn": base[t] + rng.normal(0, 1),
                      "tent": base[t] + 1.5 + rng.normal(0, 1)}
            if (seed, t) == (2, "snow"):
                scores["tent"] = scores["adabn"]  # a tie
            for adapter, score in scores.items():
                if (adapter, seed, t) == ("adabn", 3, "blur"):
                    continue  # never run: tent's cell stays unpaired
                status = "failed" if (adapter, seed, t) == ("tent", 4, "snow") else "done"
                rows.append(cell_row(adapter, t, seed, round(score, 2), status=status))
        for adapter in ("source", "adabn", "tent"):
            rows.append(cell_row(adapter, "clean", seed, 99.0, role="source"))
    return frame(rows)


def expected(cells: pd.DataFrame, a: str, b: str, domain: str | None = None) -> dict:
    """Direct computation: inner join of done target cells on (domain, seed)."""
    usable = cells[(cells.role == "target") & (cells.status == "done")]
    if domain is not None:
        usable = usable[usable.domain == domain]
    merged = usable[usable.adapter == a].merge(
        usable[usable.adapter == b], on=["domain", "seed"], suffixes=("_a", "_b"))
    d = merged.score_a - merged.score_b
    n = len(d)
    half = stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / math.sqrt(n)
    return {
        "n_pairs": n, "mean_a": merged.score_a.mean(), "mean_b": merged.score_b.mean(),
        "mean_diff": d.mean(), "ci95_low": d.mean() - half, "ci95_high": d.mean() + half,
        "t_p": stats.ttest_rel(merged.score_a, merged.score_b).pvalue,
        "wilcoxon_p": stats.wilcoxon(merged.score_a, merged.score_b).pvalue,
        "wins": int((d > 0).sum()), "ties": int((d == 0).sum()), "losses": int((d < 0).sum()),
    }


@pytest.fixture
def boards(tmp_path):
    cells = build_cells()
    (tmp_path / "toy-cells.csv").write_text(to_signed_csv(cells))
    return tmp_path, cells


def test_compare_matches_direct_computation(boards, capsys):
    folder, cells = boards
    out = folder / "cmp.csv"
    rc = main(["compare", "--suite", "toy", "--a", "tent", "--b", "adabn",
               "--leaderboards", str(folder), "--out", str(out)])
    assert rc == 0
    table = pd.read_csv(out)
    overall = table[(table.adapter == "*") & (table.domain == "*")].iloc[0]
    want = expected(cells, "tent", "adabn")
    assert want["n_pairs"] == 16  # 18 seeds x targets, minus the failed and the missing cell
    for key, value in want.items():
        assert overall[key] == pytest.approx(value, rel=1e-9), key
    for target in TARGETS:
        row = table[table.domain == target].iloc[0]
        want = expected(cells, "tent", "adabn", target)
        for key in ("n_pairs", "mean_diff", "ci95_low", "ci95_high", "t_p", "wins", "ties",
                    "losses"):
            assert row[key] == pytest.approx(want[key], rel=1e-9), (target, key)
    assert table[table.domain == "snow"].iloc[0].ties == 1
    printed = capsys.readouterr().out
    assert "paired t-test" in printed and "Wilcoxon" in printed
    assert f"{expected(cells, 'tent', 'adabn')['mean_diff']:+.2f}" in printed
    assert "verdict" in printed and overall.verdict in printed


def test_verdict_names_the_better_adapter(boards, capsys):
    folder, cells = boards
    assert main(["compare", "--suite", "toy", "--a", "source", "--b", "adabn",
                 "--leaderboards", str(folder)]) == 0
    p = expected(cells, "source", "adabn")["t_p"]
    assert p < 0.05
    assert f"adabn better than source (paired t-test p={p:.2g})" in capsys.readouterr().out


def test_seed_unit_pairs_seed_means(boards, tmp_path):
    folder, cells = boards
    out = tmp_path / "seed.csv"
    assert main(["compare", "--suite", "toy", "--a", "tent", "--b", "adabn", "--unit", "seed",
                 "--leaderboards", str(folder), "--out", str(out)]) == 0
    overall = pd.read_csv(out).iloc[0]
    usable = cells[(cells.role == "target") & (cells.status == "done")]
    merged = usable[usable.adapter == "tent"].merge(
        usable[usable.adapter == "adabn"], on=["domain", "seed"], suffixes=("_a", "_b"))
    per_seed = merged.groupby("seed")[["score_a", "score_b"]].mean()
    assert overall.n_pairs == len(SEEDS)
    assert overall.t_p == pytest.approx(
        stats.ttest_rel(per_seed.score_a, per_seed.score_b).pvalue, rel=1e-9)


def test_two_files_pair_the_same_adapter(boards, tmp_path, capsys):
    folder, cells = boards
    newer = cells.copy()
    is_tent = newer.adapter == "tent"
    newer.loc[is_tent, "score"] = newer.loc[is_tent, "score"] + 2.0
    newer.loc[is_tent, "code_revision"] = "def"
    (tmp_path / "v2").mkdir()
    (tmp_path / "v2" / "toy-cells.csv").write_text(to_signed_csv(newer))
    out = tmp_path / "files.csv"
    assert main(["compare", "--csv-a", str(tmp_path / "v2" / "toy-cells.csv"),
                 "--csv-b", str(folder / "toy-cells.csv"), "--adapter", "tent",
                 "--out", str(out)]) == 0
    overall = pd.read_csv(out).iloc[0]
    assert overall.n_pairs == 17  # every done tent target cell
    assert overall.mean_diff == pytest.approx(2.0)
    assert overall.wins == 17
    printed = capsys.readouterr().out
    assert "code_revision def" in printed and "code_revision abc" in printed


@pytest.mark.parametrize("argv, message", [
    (["--a", "ptbn", "--b", "adabn"], "adapter 'ptbn' has no cells"),
    (["--a", "tent", "--b", "adabn", "--protocol", "continual"], "has no cells"),
    (["--a", "tent", "--b", "adabn", "--batch-size", "64"], "has no cells"),
    (["--a", "tent", "--b", "tent"], "two different rows"),
])
def test_clear_errors(boards, capsys, argv, message):
    folder, _ = boards
    assert main(["compare", "--suite", "toy", "--leaderboards", str(folder), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_no_pairs_is_explained(tmp_path, capsys):
    rows = [cell_row("tent", "fog", 0, 50.0), cell_row("adabn", "fog", 1, 51.0)]
    (tmp_path / "toy-cells.csv").write_text(to_signed_csv(frame(rows)))
    assert main(["compare", "--suite", "toy", "--a", "tent", "--b", "adabn",
                 "--leaderboards", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no pairs" in err and "seeds [0]" in err and "seeds [1]" in err


def test_missing_cell_file_names_the_path(tmp_path, capsys):
    assert main(["compare", "--suite", "nowhere", "--a", "x", "--b", "y",
                 "--leaderboards", str(tmp_path)]) == 2
    assert str(tmp_path / "nowhere-cells.csv") in capsys.readouterr().err


def test_a_cut_or_edited_row_is_refused(boards, capsys):
    folder, _ = boards
    path = folder / "toy-cells.csv"
    lines = path.read_text().splitlines()
    # a score cut mid-number would otherwise pass as a smaller score
    header, row = lines[0].split(","), lines[1].split(",")
    at = header.index("score")
    row[at] = row[at][:2]
    path.write_text("\n".join([lines[0], ",".join(row), *lines[2:]]) + "\n")
    assert main(["compare", "--suite", "toy", "--a", "tent", "--b", "adabn",
                 "--leaderboards", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{path}, line 2" in err and "row_sha256" in err
