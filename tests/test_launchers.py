"""Launchers and fault handling: worker processes, Ray, concurrent runs on one results
directory, traceback files."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from benchmark.cli import main

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
TIMING = ["adapt_s", "img_per_s", "peak_mb"]
ADAPTERS = "source,adabn,tent"


def args(root: Path, *extra: str) -> list[str]:
    return ["run", "--suite", "tiny-digits", "--adapters", ADAPTERS, "--seeds", "2",
            "--results", str(root / "R"), "--leaderboards", str(root / "L"), "--quiet", *extra]


def board(root: Path) -> pd.DataFrame:
    return pd.read_csv(root / "L" / "tiny-digits.csv").drop(columns=TIMING)


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory) -> Path:
    """A run with two worker processes (each with one torch thread)."""
    root = tmp_path_factory.mktemp("workers2")
    assert main(args(root, "--workers", "2")) == 0
    return root


@pytest.mark.slow
def test_two_workers_compute_every_cell_once_and_match_a_rerun(two_workers, tmp_path):
    cells = pd.read_csv(two_workers / "L" / "tiny-digits-cells.csv")
    assert len(cells) == 3 * 2 * 2 and (cells.status == "done").all()
    checkpoints = list((two_workers / "R" / "checkpoints").glob("*.safetensors"))
    assert len(checkpoints) == 2  # one per seed, although two processes wanted each
    # the same run again reuses every cell and rebuilds the same leaderboard
    before = board(two_workers)
    mtimes = {p: p.stat().st_mtime_ns for p in (two_workers / "R" / "cells").rglob("*.json")}
    assert main(args(two_workers, "--workers", "2")) == 0
    pd.testing.assert_frame_equal(board(two_workers), before)
    assert {p: p.stat().st_mtime_ns
            for p in (two_workers / "R" / "cells").rglob("*.json")} == mtimes


@pytest.mark.slow
def test_two_concurrent_runs_on_one_results_directory_agree(two_workers, tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{ROOT}"}
    script = ("import sys, tiny_suite; from benchmark.cli import main; "
              "import torch; torch.set_num_threads(1); sys.exit(main(sys.argv[1:]))")
    procs = [subprocess.Popen([sys.executable, "-c", script, *args(tmp_path)], env=env,
                              cwd=tmp_path) for _ in range(2)]
    assert [p.wait() for p in procs] == [0, 0]
    cells = pd.read_csv(tmp_path / "L" / "tiny-digits-cells.csv")
    assert len(cells) == 12 and (cells.status == "done").all()
    assert len(list((tmp_path / "R" / "cells" / "tiny-digits").glob("*.json"))) == 12
    # one torch thread per process, as in the two-worker run: the same numbers
    pd.testing.assert_frame_equal(board(tmp_path), board(two_workers))


def test_a_failed_cell_gets_a_traceback_file(tmp_path):
    code = main(["run", "--suite", "tiny-digits", "--adapters", "test-raises-on-photos",
                 "--seeds", "1", "--results", str(tmp_path / "R"),
                 "--leaderboards", str(tmp_path / "L"), "--quiet"])
    assert code == 1
    files = list((tmp_path / "R" / "failures" / "tiny-digits").glob("*.txt"))
    assert len(files) == 1
    text = files[0].read_text()
    assert "Traceback" in text and "deliberate failure on the photo domain" in text


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs shiftbench[ray]")
def test_ray_launcher_gives_the_local_leaderboard(two_workers, tmp_path):
    assert main(args(tmp_path, "--launcher", "ray", "--workers", "2")) == 0
    pd.testing.assert_frame_equal(board(tmp_path), board(two_workers))


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_the_rerun_resumes(tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{ROOT}"}
    script = "import sys, tiny_suite; from benchmark.cli import main; sys.exit(main(sys.argv[1:]))"
    # one process (the local launcher's in-process path): two workers may finish every cell
    # before the interrupt arrives
    command = [sys.executable, "-c", script, *args(tmp_path, "--workers", "1")]
    proc = subprocess.Popen(command, env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    cells = tmp_path / "R" / "cells" / "tiny-digits"
    while proc.poll() is None and not list(cells.glob("*.json")):  # wait for a first cell
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before the interrupt arrived")
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    stored = len(list(cells.glob("*.json")))
    assert 1 <= stored < 12
    assert subprocess.run(command, env=env, cwd=tmp_path).returncode == 0
    assert len(list(cells.glob("*.json"))) == 12


def _stat(pid: int | str) -> list[str] | None:
    """/proc/<pid>/stat after the command name (state, ppid, ...); None once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for folder in Path("/proc").glob("[0-9]*"):
        fields = _stat(folder.name)
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(folder.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux")
def test_a_killed_runner_leaves_no_worker_zygote_or_adapter_process(tmp_path):
    marker = tmp_path / "adapting"
    plugin = tmp_path / "stuck.py"
    plugin.write_text("import time\nfrom pathlib import Path\n"
                      "from benchmark.adapter import Adapter\n"
                      "class Stuck(Adapter):\n"
                      "    def adapt(self, stream):\n"
                      f"        Path({str(marker)!r}).touch()\n"
                      "        time.sleep(600)\n")
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{ROOT}"}
    script = "import sys, tiny_suite; from benchmark.cli import main; sys.exit(main(sys.argv[1:]))"
    command = [sys.executable, "-c", script, "run", "--suite", "tiny-digits", "--seeds", "1",
               "--adapters", f"{plugin}:Stuck", "--workers", "2", "--quiet",
               "--results", str(tmp_path / "R"), "--leaderboards", str(tmp_path / "L")]
    proc = subprocess.Popen(command, env=env, cwd=tmp_path, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while proc.poll() is None and not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert marker.exists(), "the adapter never started"
    tree = _descendants(proc.pid)
    assert len(tree) >= 3  # a worker, its zygote, the adapter process (and helpers)
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 30
    while _alive(tree) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(tree), f"processes outlived the killed runner: {sorted(_alive(tree))}"


def _alive(pids: set[int]) -> set[int]:
    """Those of ``pids`` still running (zombies count as gone)."""
    return {pid for pid in pids if (fields := _stat(pid)) is not None and fields[0] != "Z"}
