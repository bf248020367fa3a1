"""Stored artifacts are verified, bad input stops a run early, slow adapters time out."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from benchmark.cli import main
from benchmark.engine.runner import RunConfig, Runner
from benchmark.specs import AdapterSpec
from benchmark.store import CorruptCellWarning, ResultStore, file_sha256


def _run(results: Path, adapters: list[AdapterSpec], **kw) -> Runner:
    config = RunConfig(suite="tiny-digits", adapters=adapters, seeds=[0], results=results,
                       leaderboards=results / "boards", progress=False, **kw)
    runner = Runner(config)
    runner.summary = runner.run()  # type: ignore[attr-defined]
    return runner


def test_checkpoints_are_byte_reproducible(tmp_path: Path) -> None:
    state = {"b.weight": torch.randn(3, 4), "a.bias": torch.randn(2)}
    meta = {"z": "1", "a": "2", "m": "3"}
    ResultStore(tmp_path / "1").save_checkpoint("k", state, meta)
    ResultStore(tmp_path / "2").save_checkpoint("k", state, dict(reversed(meta.items())))
    one, two = (file_sha256(tmp_path / d / "checkpoints" / "k.safetensors") for d in "12")
    assert one == two


def test_corrupted_checkpoint_and_edited_cell_are_detected_and_recomputed(
        tmp_path: Path) -> None:
    first = _run(tmp_path, [AdapterSpec("source")])
    scores = {c["domain"]: c["score"] for c in first.store.cells("tiny-digits")}
    (checkpoint,) = (tmp_path / "checkpoints").glob("*.safetensors")
    data = bytearray(checkpoint.read_bytes())
    data[-5] ^= 0xFF  # a tensor byte: same size, still loads without the digest check
    checkpoint.write_bytes(bytes(data))
    cell_file = next((tmp_path / "cells" / "tiny-digits").glob("*.json"))
    cell = json.loads(cell_file.read_text())
    cell["score"] = 99.0
    cell_file.write_text(json.dumps(cell))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        second = _run(tmp_path, [AdapterSpec("source")])
    messages = [str(w.message) for w in caught if issubclass(w.category, CorruptCellWarning)]
    assert any(str(checkpoint) in m and "sha256" in m for m in messages), messages
    assert any(str(cell_file) in m and "digest" in m for m in messages), messages
    # the edited cell recomputed (with a retrained model), the intact one reused
    assert (second.summary.done, second.summary.skipped) == (1, 1)
    assert {c["domain"]: c["score"] for c in second.store.cells("tiny-digits")} == scores
    board = (tmp_path / "boards" / "tiny-digits.csv").read_text()
    assert "99.0" not in board


def test_bad_input_is_a_usage_error_before_any_cell(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    base = ["run", "--suite", "tiny-digits", "--seeds", "1", "--quiet"]
    results = tmp_path / "results"
    assert main([*base, "--results", str(results), "--adapters", "tent(lr=abc)"]) == 2
    assert "lr='abc' must be a float" in capsys.readouterr().err
    assert not (results / "cells").exists()
    afile = tmp_path / "file"
    afile.write_text("")
    assert main([*base, "--results", str(afile)]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main([*base, "--results", str(results), "--leaderboards", str(afile)]) == 2
    assert "is a file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:  # argparse's own usage error
        main([*base, "--results", str(results), "--cell-timeout", "-1"])
    assert exited.value.code == 2
    named_like_builtin = tmp_path / "mine.py"
    named_like_builtin.write_text("from adapters.tent import Tent as Base\n"
                                  "class Tent(Base):\n    pass\n")
    assert main([*base, "--results", str(results), "--adapters",
                 f"source,{named_like_builtin}:Tent"]) == 2
    assert "already taken" in capsys.readouterr().err
    assert not (results / "cells").exists()


def test_a_slow_adapter_times_out_as_a_failed_cell(tmp_path: Path) -> None:
    slow = tmp_path / "slow.py"
    slow.write_text("import time\nfrom benchmark.adapter import Adapter\n"
                    "class Sleeper(Adapter):\n"
                    "    def adapt(self, stream):\n        time.sleep(600)\n")
    runner = _run(tmp_path / "r", [AdapterSpec("source"), AdapterSpec.parse(f"{slow}:Sleeper")],
                  cell_timeout=3.0)
    cells = runner.store.cells("tiny-digits")
    status = {(c["label"], c["domain"]): c["status"] for c in cells}
    assert status[("sleeper", "digits-m")] == "failed"
    assert status[("source", "digits-m")] == "done"
    failed = next(c for c in cells if c["status"] == "failed")
    assert "cell-timeout" in failed["error"]
    text = Path(failed["traceback_file"]).read_text()
    assert text.startswith("# suite tiny-digits, adapter sleeper, protocol episodic")


def test_one_name_from_two_sources_in_one_results_store_is_refused(tmp_path: Path,
                                                                    capsys) -> None:
    body = ("from benchmark.adapter import Adapter\n"
            "class Foo(Adapter):\n    def setup(self, model):\n        model.eval()\n")
    first, second = tmp_path / "a" / "foo.py", tmp_path / "b" / "foo.py"
    for path in (first, second):
        path.parent.mkdir()
        path.write_text(body)
    base = ["run", "--suite", "tiny-digits", "--seeds", "1", "--quiet",
            "--results", str(tmp_path / "R"), "--leaderboards", str(tmp_path / "L")]
    assert main([*base, "--adapters", f"{first}:Foo"]) == 0
    cells = len(list((tmp_path / "R" / "cells" / "tiny-digits").glob("*.json")))
    assert main([*base, "--adapters", f"{second}:Foo"]) == 2
    err = capsys.readouterr().err
    assert "already holds" in err and str(first) in err and str(second) in err
    assert len(list((tmp_path / "R" / "cells" / "tiny-digits").glob("*.json"))) == cells


def test_editing_a_training_time_adapter_trains_a_new_model(tmp_path: Path) -> None:
    """Its cells re-run (their key has the code hash) *and* its source model retrains: the
    checkpoint's identity covers the code that trained it, not only name and settings."""
    path = tmp_path / "trainer.py"
    path.write_text("import torch\nfrom benchmark.adapter import Adapter\n"
                    "class Trainer(Adapter):\n    changes_training = True\n"
                    "    def extra_loss(self, model):\n        return None\n")

    def checkpoints() -> set[str]:
        runner = Runner(RunConfig(suite="tiny-digits", adapters=[AdapterSpec.parse(
            f"{path}:Trainer")], seeds=[0], results=tmp_path / "R", progress=False))
        runner.close()
        return {c.identity["checkpoint"] for c in runner.plan()}

    before = checkpoints()
    assert checkpoints() == before
    path.write_text(path.read_text().replace("return None", "return 0.0 * sum(p.sum() for p "
                                             "in model.parameters())"))
    after = checkpoints()
    assert len(before) == len(after) == 1 and before != after
