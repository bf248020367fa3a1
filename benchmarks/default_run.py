"""Wall time and peak memory of the default ``python run.py``, then of its re-run.

Runs the default in a subprocess on a fresh results directory, then runs it again (every
cell reused), and prints both against the goals: first run <= 90 s and <= 2 GB peak RSS on
2 cores; re-run <= 5% of the first run's time with a byte-identical leaderboard.

    python benchmarks/default_run.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed_run(work: Path) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    subprocess.run(
        # what `python run.py` without arguments runs, with the output folders moved
        [sys.executable, str(ROOT / "run.py"), "run", "--adapters", "quick",
         "--results", str(work / "results"),
         "--leaderboards", str(work / "leaderboards"), "--quiet"],
        check=True, stdout=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return wall, max(peak_kib, before) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, default=None, help="work directory to keep")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="shiftbench-bench-"))
    work.mkdir(parents=True, exist_ok=True)

    first_s, peak_mb = timed_run(work)
    board = (work / "leaderboards" / "digits.csv").read_bytes()
    second_s, _ = timed_run(work)
    identical = (work / "leaderboards" / "digits.csv").read_bytes() == board

    print("default `python run.py` (suite digits, every quick test-time adapter, 3 seeds)")
    print(f"{'measure':<28}{'value':>12}{'goal':>12}{'ratio to goal':>16}")
    print(f"{'first run wall time (s)':<28}{first_s:>12.1f}{90:>12}{first_s / 90:>16.2f}")
    print(f"{'peak RSS (MB)':<28}{peak_mb:>12.0f}{2048:>12}{peak_mb / 2048:>16.2f}")
    print(f"{'re-run wall time (s)':<28}{second_s:>12.1f}{'':>12}{'':>16}")
    print(f"{'re-run / first run':<28}{second_s / first_s:>12.3f}{0.05:>12.2f}"
          f"{second_s / first_s / 0.05:>16.2f}")
    print(f"leaderboard byte-identical after re-run: {identical}")
    print(f"work directory: {work}")


if __name__ == "__main__":
    main()
