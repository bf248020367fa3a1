"""The runner end to end on the tiny suite: cells, resume, failures, leaderboards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from benchmark.cli import main
from benchmark.engine.runner import RunConfig, Runner
from benchmark.specs import AdapterSpec

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
TIMING = ["adapt_s", "img_per_s", "peak_mb"]


def run_cli(tmp_path, *extra):
    return main(["run", "--suite", "tiny-digits", "--results", str(tmp_path / "R"),
                 "--leaderboards", str(tmp_path / "L"), "--quiet", *extra])


def test_run_writes_leaderboard_and_a_rerun_reuses_every_cell(tmp_path):
    args = ["--adapters", "source,adabn,ptbn,tent", "--seeds", "2"]
    assert run_cli(tmp_path, *args) == 0
    board_path = tmp_path / "L" / "tiny-digits.csv"
    first = board_path.read_bytes()
    board = pd.read_csv(board_path)
    for col in ["rank", "adapter", "protocol", "metric", "score", "std", "ci95", "seeds",
                "digits-m", "src:digits", "adapt_s", "img_per_s", "peak_mb", "status"]:
        assert col in board.columns
    assert sorted(board.adapter) == ["adabn", "ptbn", "source", "tent"]
    assert (board.status == "ok").all() and (board.seeds == 2).all()
    assert list(board["rank"]) == sorted(board["rank"])
    assert board.score.is_monotonic_decreasing

    cells = pd.read_csv(tmp_path / "L" / "tiny-digits-cells.csv")
    assert len(cells) == 4 * 2 * 2  # adapters x seeds x (source + target domain)
    # score is the mean over targets and seeds of the cells
    tent = cells[(cells.adapter == "tent") & (cells.role == "target")]
    assert board.set_index("adapter").loc["tent", "score"] == pytest.approx(
        tent.score.mean(), abs=0.006)

    cell_files = sorted((tmp_path / "R" / "cells" / "tiny-digits").glob("*.json"))
    record = json.loads(cell_files[0].read_text())
    for field in ["data_fingerprint", "recipe", "checkpoint", "hparams", "protocol",
                  "batch_size", "n_examples", "metric", "higher_is_better", "versions"]:
        assert field in record
    assert {"shiftbench", "torch", "torchvision", "python"} <= set(record["versions"])

    mtimes = {p: p.stat().st_mtime_ns for p in cell_files}
    start = time.perf_counter()
    assert run_cli(tmp_path, *args) == 0
    assert time.perf_counter() - start < 20
    assert board_path.read_bytes() == first
    assert {p: p.stat().st_mtime_ns for p in cell_files} == mtimes  # nothing recomputed


def test_results_are_deterministic_across_fresh_result_stores(tmp_path):
    config = dict(suite="tiny-digits", adapters=[AdapterSpec("ptbn"), AdapterSpec("tent")],
                  seeds=[0], progress=False)
    a = Runner(RunConfig(results=tmp_path / "a", leaderboards=tmp_path / "La", **config)).run()
    b = Runner(RunConfig(results=tmp_path / "b", leaderboards=tmp_path / "Lb", **config)).run()
    cols = ["adapter", "score", "digits-m", "src:digits"]
    pd.testing.assert_frame_equal(a.board[cols], b.board[cols])


def test_a_failing_adapter_is_one_failed_cell_and_the_run_goes_on(tmp_path):
    code = run_cli(tmp_path, "--adapters", "source,test-raises-on-photos", "--seeds", "1")
    assert code == 1  # exit code = number of failed cells
    cells = pd.read_csv(tmp_path / "L" / "tiny-digits-cells.csv")
    failed = cells[cells.status == "failed"]
    assert len(failed) == 1
    assert failed.iloc[0].domain == "digits-m"
    assert "deliberate failure" in failed.iloc[0].error
    assert (cells[cells.adapter == "source"].status == "done").all()
    board = pd.read_csv(tmp_path / "L" / "tiny-digits.csv").set_index("adapter")
    assert board.loc["test-raises-on-photos", "status"] == "1 failed"
    assert pd.isna(board.loc["test-raises-on-photos", "rank"])
    assert board.loc["source", "rank"] == 1
    stored = [json.loads(p.read_text())
              for p in (tmp_path / "R" / "cells" / "tiny-digits").glob("*.json")]
    assert any("Traceback" in c.get("traceback", "") for c in stored if c["status"] == "failed")


def test_nan_predictions_fail_the_cell(tmp_path):
    assert run_cli(tmp_path, "--adapters", "test-nan", "--seeds", "1") == 2
    cells = pd.read_csv(tmp_path / "L" / "tiny-digits-cells.csv")
    assert (cells.status == "failed").all()
    assert cells.error.str.contains("non-finite").all()


def test_hyperparameters_are_part_of_the_cell_key(tmp_path):
    args = ["--adapters", "tent,tent(lr=1e-4)", "--seeds", "1"]
    assert run_cli(tmp_path, *args) == 0
    board = pd.read_csv(tmp_path / "L" / "tiny-digits.csv")
    assert sorted(board.adapter) == ["tent", "tent(lr=0.0001)"]
    assert board.score.nunique() == 2


def test_unknown_adapter_is_a_clear_error(tmp_path, capsys):
    assert run_cli(tmp_path, "--adapters", "adabnn") == 2
    err = capsys.readouterr().err
    assert "unknown adapter 'adabnn'" in err and "did you mean adabn" in err


@pytest.mark.slow
def test_kill_at_any_moment_then_rerun_equals_an_uninterrupted_run(tmp_path):
    """SIGKILL the run mid-way (twice, at different moments); the resumed leaderboard
    equals the leaderboard of a run that was never interrupted."""
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{ROOT}"}
    script = ("import sys, tiny_suite; from benchmark.cli import main; "
              "sys.exit(main(sys.argv[1:]))")

    def command(name):
        return [sys.executable, "-c", script, "run", "--suite", "tiny-digits",
                "--adapters", "source,adabn,tent", "--seeds", "2",
                "--results", str(tmp_path / name / "R"),
                "--leaderboards", str(tmp_path / name / "L"), "--quiet"]

    for delay in (6.0, 9.0):
        proc = subprocess.Popen(command("killed"), env=env, cwd=tmp_path)
        time.sleep(delay)  # not synchronisation: just "some moment during the run"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert subprocess.run(command("killed"), env=env, cwd=tmp_path).returncode == 0
    assert subprocess.run(command("clean"), env=env, cwd=tmp_path).returncode == 0

    killed = pd.read_csv(tmp_path / "killed" / "L" / "tiny-digits.csv").drop(columns=TIMING)
    clean = pd.read_csv(tmp_path / "clean" / "L" / "tiny-digits.csv").drop(columns=TIMING)
    pd.testing.assert_frame_equal(killed, clean)
    leftovers = list((tmp_path / "killed" / "R").rglob("*.tmp"))
    assert all(p.name.startswith(".") for p in leftovers)  # only hidden temporaries, never cells


class _Served:
    """The scoring side's answer to image requests, counting round trips."""

    def __init__(self, images):
        self.images_of, self.requests = images, 0

    def images(self, stream, positions):
        self.requests += 1
        return self.images_of[positions].clone()


def test_stream_images_are_read_ahead_in_blocks_and_each_batch_is_a_private_copy():
    from benchmark.adapter import TargetStream
    from benchmark.engine.evaluate import SOURCE_STREAM, _RemoteImages

    images = torch.rand(1000, 3, 8, 8)
    served = _Served(images)
    remote = _RemoteImages(served, 0, len(images))
    remote.READ_AHEAD_BYTES = 300 * images[0].numel() * 4  # blocks of 300 images
    stream = TargetStream(remote, batch_size=32)
    batches = list(stream)
    assert torch.equal(torch.cat(batches), images)
    assert served.requests == 5  # 32 first, then 300, 300, 300, 68 -- not 32 round trips
    batches[0].zero_()  # an adapter editing its input in place
    assert torch.equal(next(iter(stream)), images[:32])
    shuffled = torch.randperm(1000)[:50]
    assert torch.equal(remote[shuffled], images[shuffled])  # any order still works

    source = _Served(images)
    for _ in TargetStream(_RemoteImages(source, SOURCE_STREAM, 1000), batch_size=100):
        pass
    assert source.requests == 10  # the source stream is fetched exactly as read
