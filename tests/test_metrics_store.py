"""Metrics, confidence intervals, hashing, atomic writes and cell-file validation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from benchmark.metrics import Accuracy, expected_calibration_error, mean_std_ci95
from benchmark.registry import Registry, UnknownNameError
from benchmark.store import CorruptCellWarning, ResultStore, atomic_write_text, stable_hash


def test_accuracy_and_entropy_match_direct_computation():
    torch.manual_seed(0)
    logits = torch.randn(50, 4)
    labels = torch.randint(0, 4, (50,))
    metric = Accuracy(4)
    metric.update(logits[:20], labels[:20])
    metric.update(logits[20:], labels[20:])
    result = metric.result()
    assert result["score"] == pytest.approx(100 * (logits.argmax(1) == labels).float().mean())
    p = logits.softmax(1)
    assert result["entropy"] == pytest.approx(-(p * p.log()).sum(1).mean().item(), rel=1e-5)
    assert result["n"] == 50


def test_collapse_is_one_class_for_most_predictions_beyond_its_share_of_labels():
    def result(predicted: list[int], labels: list[int]) -> dict[str, float]:
        metric = Accuracy(10)
        metric.update(torch.nn.functional.one_hot(torch.tensor(predicted), 10).float(),
                      torch.tensor(labels))
        return metric.result()

    balanced = list(range(10)) * 10
    stuck = result([3] * 95 + list(range(5)), balanced)  # one class for 95% of images
    assert stuck["top_class_share"] == pytest.approx(96.0) and stuck["collapsed"] == 1.0
    assert result(balanced, balanced)["collapsed"] == 0.0
    others = [c for c in balanced if c != 3]
    assert result([3] * 49 + others[:51], balanced)["collapsed"] == 0.0  # under one half
    assert result([3] * 50 + others[:50], balanced)["collapsed"] == 1.0
    # a target whose labels are mostly one class: predicting it is not a collapse
    mostly_three = [3] * 80 + list(range(10)) * 2
    assert result(mostly_three, mostly_three)["collapsed"] == 0.0


def test_ece_matches_a_direct_binning():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.1, 1.0, 1000)
    correct = (rng.uniform(size=1000) < conf**2).astype(float)
    expected = 0.0
    for lo in np.arange(15) / 15:
        hi = lo + 1 / 15
        m = (conf > lo) & (conf <= hi)
        if m.any():
            expected += m.mean() * abs(correct[m].mean() - conf[m].mean())
    got = expected_calibration_error(torch.tensor(conf, dtype=torch.float64),
                                     torch.tensor(correct, dtype=torch.float64))
    assert got == pytest.approx(expected, rel=1e-6)


def test_mean_std_ci95_uses_the_t_distribution():
    values = [70.0, 72.5, 69.0]
    mean, std, ci = mean_std_ci95(values)
    assert mean == pytest.approx(np.mean(values))
    assert std == pytest.approx(np.std(values, ddof=1))
    half = stats.t.ppf(0.975, 2) * np.std(values, ddof=1) / math.sqrt(3)
    assert ci == pytest.approx(half)
    assert math.isnan(mean_std_ci95([1.0])[2])


def test_stable_hash_ignores_key_order_but_not_values():
    assert stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": [1, 2], "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 1.5})


def test_atomic_write_leaves_old_content_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "x.json"
    atomic_write_text(path, "old")

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_atomic_writes_get_the_mode_of_a_plain_open(tmp_path):
    """mkstemp creates 0600 files; a leaderboard written atomically must still be readable
    by others exactly as a plainly opened file would be (0o666 minus the umask)."""
    import os
    import stat

    umask = os.umask(0)
    os.umask(umask)
    atomic_write_text(tmp_path / "board.csv", "a,b\n")
    (tmp_path / "plain.csv").write_text("a,b\n")
    mode = stat.S_IMODE((tmp_path / "board.csv").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain.csv").stat().st_mode) == 0o666 & ~umask
    path = ResultStore(tmp_path / "results").save_checkpoint(
        "k", {"w": torch.ones(2)}, {"note": "x"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    # no temporary file left behind: the checkpoint and its recorded sha256
    assert sorted(p.name for p in path.parent.iterdir()) == ["k.safetensors", "k.sha256"]


def test_truncated_or_foreign_cell_files_are_reported_and_ignored(tmp_path):
    store = ResultStore(tmp_path)
    good = {"key": "k1", "suite": "s", "status": "done", "score": 1.0}
    store.save_cell(good)
    text = store.cell_path("s", "k1").read_text()
    loaded = store.load_cell("s", "k1")
    assert loaded is not None and {k: v for k, v in loaded.items() if k != "digest"} == good
    store.cell_path("s", "k2").write_text(text[: len(text) // 2])  # truncated
    store.cell_path("s", "k3").write_text(json.dumps(good))  # key does not match file name
    with pytest.warns(CorruptCellWarning):
        assert store.load_cell("s", "k2") is None
    with pytest.warns(CorruptCellWarning):
        cells = store.cells("s")
    assert [c["key"] for c in cells] == ["k1"]


def test_registry_rejects_duplicates_and_suggests_names():
    reg = Registry("thing")

    @reg.register("adabn")
    class A:
        pass

    with pytest.raises(ValueError, match="already registered"):
        @reg.register("adabn")
        class B:
            pass

    with pytest.raises(UnknownNameError, match="did you mean adabn"):
        reg.get("adbn")


def test_leaderboard_rows_never_mix_adapter_code_versions():
    from benchmark.report.leaderboard import select_cells

    def cell(key, seed, code, when):
        return {"key": key, "label": "mine", "protocol": "episodic", "batch_size": 8,
                "seed": seed, "domain": "t", "adapter_code": code, "finished_at": when,
                "suite_signature": "s"}

    old = [cell("a0", 0, "old", "2026-01-01"), cell("a1", 1, "old", "2026-01-01")]
    new = [cell("b0", 0, "new", "2026-02-01")]  # edited file, re-run on seed 0 only
    chosen = select_cells(old + new, "s", current_keys={"b0"})
    assert [c["key"] for c in chosen] == ["b0"]
    # an old-code run that is the current plan wins over newer cells of other code
    chosen = select_cells(old + new, "s", current_keys={"a0", "a1"})
    assert sorted(c["key"] for c in chosen) == ["a0", "a1"]
