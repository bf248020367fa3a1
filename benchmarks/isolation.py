"""Cost of label isolation: the default ``python run.py`` with its adapters in their own
processes (the default) against ``--in-process``, side by side in one run.

Each repeat runs both modes on fresh results folders (source models trained in each, as a
first run does), alternating which goes first, and compares the leaderboards' scores,
which must be identical. Prints the median wall times and their ratio. Goal: isolated /
in-process <= 1.05.

    python benchmarks/isolation.py [--repeats 2] [--sandbox]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
SCORES = ["adapter", "score", "std", "ci95", "ece", "entropy", "digits-m", "src:digits"]


def timed_run(work: Path, mode: str) -> tuple[float, pd.DataFrame]:
    flags = {"isolated": [], "in-process": ["--in-process"], "sandbox": ["--sandbox"]}[mode]
    start = time.perf_counter()
    subprocess.run(
        # what `python run.py` without arguments runs, with the output folders moved
        [sys.executable, str(ROOT / "run.py"), "run", "--adapters", "quick",
         "--results", str(work / "results"), "--leaderboards", str(work / "leaderboards"),
         "--quiet", *flags],
        check=True, stdout=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - start
    return wall, pd.read_csv(work / "leaderboards" / "digits.csv")[SCORES]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sandbox", action="store_true", help="also time --sandbox")
    args = parser.parse_args()
    modes = ["in-process", "isolated"] + (["sandbox"] if args.sandbox else [])
    times: dict[str, list[float]] = {m: [] for m in modes}
    boards: dict[str, pd.DataFrame] = {}
    for repeat in range(args.repeats):
        order = modes if repeat % 2 == 0 else modes[::-1]
        for mode in order:
            work = Path(tempfile.mkdtemp(prefix=f"shiftbench-{mode}-"))
            wall, boards[mode] = timed_run(work, mode)
            times[mode].append(wall)
    reference = boards["in-process"]
    print("default `python run.py` (digits, the test-time adapters, 3 seeds), fresh results "
          f"folder each time, median of {args.repeats}")
    print(f"{'mode':<12}{'wall s':>9}{'ratio':>8}  leaderboard scores")
    base = statistics.median(times["in-process"])
    for mode in modes:
        wall = statistics.median(times[mode])
        same = boards[mode].equals(reference)
        print(f"{mode:<12}{wall:>9.1f}{wall / base:>8.3f}  "
              f"{'identical' if same else 'DIFFERENT'}")
    print("goal: isolated / in-process <= 1.05, identical scores")


if __name__ == "__main__":
    main()
