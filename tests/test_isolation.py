"""Label isolation: hostile adapters run through the real runner, by default and sandboxed.

An attack that finds the labels of its stream predicts them, which would score 100; one
that finds nothing predicts like the source model. So a row equal to ``source``'s, cell by
cell, means the attack got nothing and changed nothing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmark.engine.runner import RunConfig, Runner
from benchmark.specs import AdapterSpec

HOSTILE = Path(__file__).with_name("hostile_adapters.py")
ATTACKS = {"gc": "GcWalker", "frames": "FrameWalker", "files": "FileReader",
           "writer": "ResultsWriter", "patcher": "Patcher"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A results folder holding the tiny-digits source model (trained once)."""
    results = tmp_path_factory.mktemp("trained")
    config = RunConfig(suite="tiny-digits", adapters=[AdapterSpec("source")], seeds=[0],
                       results=results, leaderboards=results / "boards", progress=False)
    Runner(config).run()
    return results


def run(tmp_path: Path, trained: Path, isolation: str, attacks: list[str],
        monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, float]]:
    results = tmp_path / isolation
    shutil.copytree(trained / "checkpoints", results / "checkpoints")
    data_root = tmp_path / "data"
    data_root.mkdir(exist_ok=True)
    monkeypatch.setenv("SHIFTBENCH_TEST_DATA_ROOT", str(data_root))
    monkeypatch.setenv("SHIFTBENCH_TEST_RESULTS", str(results))
    specs = [AdapterSpec("source")]
    specs += [AdapterSpec.parse(f"{HOSTILE}:{ATTACKS[a]}") for a in attacks]
    # source first: its cells are on disk when the attacks run
    config = RunConfig(suite="tiny-digits", adapters=specs, seeds=[0], results=results,
                       leaderboards=tmp_path / f"boards-{isolation}", progress=False,
                       isolation=isolation, data_root=data_root)
    runner = Runner(config)
    (data_root / "labels.json").write_text(json.dumps(
        runner.suite.load("digits-m", "test").labels.tolist()))
    summary = runner.run()
    assert summary.failed == 0, summary.failures
    scores: dict[str, dict[str, float]] = {}
    for cell in runner.store.cells("tiny-digits"):
        scores.setdefault(cell["label"], {})[cell["domain"]] = cell["score"]
        assert cell["isolation"] == isolation
    return scores


def test_memory_attacks_and_patching_get_nothing_in_a_normal_run(
        tmp_path: Path, trained: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scores = run(tmp_path, trained, "isolated", ["gc", "frames", "patcher"], monkeypatch)
    source = scores["source"]
    assert source["digits-m"] < 95  # a perfect score would mean labels leaked
    for name in ("hostile-gc", "hostile-frames", "hostile-patcher"):
        assert scores[name] == source, name


def test_every_attack_gets_nothing_in_the_sandbox(
        tmp_path: Path, trained: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scores = run(tmp_path, trained, "sandbox", list(ATTACKS), monkeypatch)
    source = scores["source"]
    for attack in ATTACKS:
        assert scores[f"hostile-{attack}"] == source, attack


def test_in_process_mode_is_marked_and_not_protected(
        tmp_path: Path, trained: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The debugging mode enforces nothing (as documented): the gc walk finds the labels.
    Its cells say so."""
    scores = run(tmp_path, trained, "in-process", ["gc"], monkeypatch)
    assert scores["hostile-gc"]["digits-m"] == 100.0
    board = (tmp_path / "boards-in-process" / "tiny-digits.csv").read_text()
    assert "in-process" in board


def test_file_attacks_succeed_without_the_sandbox(
        tmp_path: Path, trained: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a normal run does not promise: files are readable (the sandbox is for that)."""
    scores = run(tmp_path, trained, "isolated", ["files"], monkeypatch)
    assert scores["hostile-files"]["digits-m"] == 100.0
