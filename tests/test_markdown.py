"""Markdown leaderboards: same rows and numbers as the CSV; reported rows kept apart."""

from __future__ import annotations

import pandas as pd
import pytest

from benchmark.report import leaderboard
from benchmark.report.markdown import REPORTED_COLUMNS, REPORTED_CSV, load_reported
from benchmark.store import ResultStore
from suites.digits import Digits


def stored_cell(suite, adapter, domain, role, seed, score, status="done"):
    return {
        "key": f"{adapter}-{domain}-{seed}", "suite": suite.name, "adapter": adapter,
        "label": adapter, "protocol": "episodic", "batch_size": 128, "setting": "tta",
        "seed": seed, "domain": domain, "role": role, "status": status, "metric": "accuracy",
        "score": score, "metrics": {"ece": 3.0, "entropy": 0.4}, "n_examples": 600,
        "adapt_s": 0.25 + seed / 100, "img_per_s": 2400.0, "peak_mb": 800.0 + seed,
        "finished_at": f"2025-01-01T00:00:0{seed}+00:00",
        **({"error": "RuntimeError: boom"} if status == "failed" else {}),
    }


def fill_store(root, suite):
    store = ResultStore(root)
    scores = {"source": [40.1, 43.7, 41.9], "adabn": [55.3, 58.0, 52.2],
              "tent": [57.1, 56.4, 59.9]}
    for adapter, per_seed in scores.items():
        for seed, score in enumerate(per_seed):
            for i, target in enumerate(suite.targets):
                status = "failed" if (adapter, seed, i) == ("tent", 2, 0) else "done"
                store.save_cell(stored_cell(suite, adapter, target, "target", seed, score + i,
                                            status))
            store.save_cell(stored_cell(suite, adapter, suite.source, "source", seed, 98.0 + seed))
    return store


def markdown_tables(text):
    """Every pipe table in the text as a list of rows of cell strings (header first)."""
    tables, current = [], []
    for line in text.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            if not set(line.replace("|", "")) <= set("-: "):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
    if current:
        tables.append(current)
    return tables


def as_number(text):
    return float("nan") if text == "–" else float(text)


def check_rows_match(board, header, rows, columns):
    assert [r[header.index("adapter")] for r in rows] == list(board.adapter)
    for (_, expected), row in zip(board.iterrows(), rows, strict=True):
        for csv_col, md_col in columns.items():
            want = expected[csv_col]
            got = as_number(row[header.index(md_col)])
            if pd.isna(want):
                assert got != got, (csv_col, row)
            else:
                assert got == pytest.approx(float(want), abs=1e-9), (csv_col, row)


class ManyTargets(Digits):
    """Digits with ten -C style targets: the per-target columns move to a second table."""

    name = "digits"
    targets = tuple(f"{c}-{s}" for c in ("fog", "snow") for s in range(1, 6))


@pytest.mark.parametrize("suite_cls", [Digits, ManyTargets])
def test_markdown_matches_csv(tmp_path, suite_cls):
    suite = suite_cls()
    store = fill_store(tmp_path / "results", suite)
    board, paths = leaderboard.write(suite, store, tmp_path / "boards")
    md_path = tmp_path / "boards" / "digits.md"
    assert md_path in paths and md_path.is_file()
    csv = pd.read_csv(tmp_path / "boards" / "digits.csv")
    text = md_path.read_text()
    assert "accuracy" in text and "episodic" in text and "n = 2–3" in text
    assert "t(0.975, n−1) · std / √n" in text
    main, *rest = markdown_tables(text)
    header, rows = main[0], main[1:]
    assert len(rows) == len(csv) == 3
    assert [r[0] for r in rows] == ["1", "2", "–"]  # tent has a failed cell: unranked
    scores = [r[header.index("score ± ci95")].split(" ± ") for r in rows]
    csv = csv.assign(_score=[s[0] for s in scores],
                     _ci=[s[1] if len(s) > 1 else "–" for s in scores])
    for (_, r), (score, ci) in zip(csv.iterrows(), zip(csv._score, csv._ci, strict=True),
                                   strict=True):
        assert float(score) == pytest.approx(r.score)
        assert (ci == "–") == pd.isna(r.ci95)
        if ci != "–":
            assert float(ci) == pytest.approx(r.ci95)
    costs = {"std": "std", "seeds": "seeds", "batch_size": "batch", "adapt_s": "adapt s",
             "img_per_s": "img/s", "peak_mb": "peak MB"}
    check_rows_match(csv, header, rows, costs)
    detail = {t: t for t in (*suite.targets, f"src:{suite.source}")}
    if rest:  # many targets: a second table in the same row order
        check_rows_match(csv, rest[0][0], rest[0][1:], detail)
        assert suite.targets[0] not in header
    else:
        check_rows_match(csv, header, rows, detail)
    assert [r[-1] for r in rows] == list(csv.status)


def test_reported_rows_only_for_their_suite_and_never_ranked(tmp_path):
    class Cifar(Digits):
        name = "cifar10-c"

    suite = Cifar()
    store = fill_store(tmp_path / "results", suite)
    board, _ = leaderboard.write(suite, store, tmp_path / "boards")
    text = (tmp_path / "boards" / "cifar10-c.md").read_text()
    measured, reported = markdown_tables(text)
    assert all(r[0] == "*reported*" for r in reported[1:]) and len(reported) == 4
    tent = next(r for r in reported[1:] if r[1] == "Tent")
    assert tent[reported[0].index("published")] == "error 18.6"
    assert float(tent[reported[0].index("as accuracy")]) == pytest.approx(81.4)
    assert len(measured) - 1 == len(board) == 3
    assert "Tent" not in set(board.adapter)
    csv_text = (tmp_path / "boards" / "cifar10-c.csv").read_text()
    assert "18.6" not in csv_text and "reported" not in csv_text
    digits_board, _ = leaderboard.write(Digits(), fill_store(tmp_path / "r2", Digits()),
                                        tmp_path / "b2")
    assert "reported" not in (tmp_path / "b2" / "digits.md").read_text().lower()


def test_shipped_reference_rows():
    reported = load_reported(REPORTED_CSV)
    assert list(reported.columns) == REPORTED_COLUMNS
    assert set(reported.suite) == {"cifar10-c", "gta5-cityscapes", "mnist-svhn", "imagenet-c",
                                   "mnist-usps", "mnist-usps-h5"}
    from benchmark.registry import SUITES

    assert all(suite in SUITES for suite in reported.suite)  # rows name real suites
    imagenet = reported[reported.suite == "imagenet-c"].set_index("adapter")
    assert imagenet.loc["tent", "score"] < imagenet.loc["ptbn", "score"] \
        < imagenet.loc["source", "score"]
    assert reported.score.notna().all() and (reported.source.str.len() > 10).all()
    tent = reported[reported.suite == "cifar10-c"].set_index("adapter")
    assert set(tent.metric) == {"error"}  # stored as published: error, not accuracy
    assert tent.loc["tent", "score"] < tent.loc["ptbn", "score"] < tent.loc["source", "score"]
    ibn = reported[reported.method.str.startswith("IBN-Net50")].set_index("method")
    assert ibn.loc["IBN-Net50-b", "score"] > ibn.loc["IBN-Net50-a", "score"]
