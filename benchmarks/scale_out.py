"""Scale-out and re-run: 1 worker vs ``--workers 2`` vs Ray with 2 CPUs, and a re-run.

Each launcher runs the same grid on a fresh results directory, in a subprocess, timed from
start to exit: suite ``digits``, adapters source, adabn and tent, 4 seeds. The seeds' source
models are independent, so the cells split into independent work. Then the finished 1-worker
run is repeated (every cell reused). Goals: workers 2 / 1 speed-up >= 1.7;
re-run <= 5% of the first run. Ray runs only when it is installed (shiftbench[ray]).

    python benchmarks/scale_out.py [--seeds 4]
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(work: Path, *extra: str, seeds: int) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "run", "--suite", "digits",
         "--adapters", "source,adabn,tent", "--seeds", str(seeds),
         "--results", str(work / "R"), "--leaderboards", str(work / "L"), "--quiet", *extra],
        check=True, stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="shiftbench-scale-"))
    one = timed(base / "w1", seeds=args.seeds)
    rerun = timed(base / "w1", seeds=args.seeds)
    two = timed(base / "w2", "--workers", "2", seeds=args.seeds)
    ray = None
    if importlib.util.find_spec("ray") is not None:
        ray = timed(base / "ray", "--launcher", "ray", "--workers", "2", seeds=args.seeds)

    boards = {name: (base / name / "L" / "digits.csv") for name in ("w1", "w2", "ray")}
    print(f"digits, adapters source,adabn,tent, {args.seeds} seeds; wall seconds per run")
    print(f"{'launcher':<26}{'seconds':>10}{'speed-up vs 1':>16}{'goal':>8}")
    print(f"{'local, 1 worker':<26}{one:>10.1f}{1.0:>16.2f}")
    print(f"{'local, --workers 2':<26}{two:>10.1f}{one / two:>16.2f}{'>= 1.7':>8}")
    if ray is not None:
        print(f"{'ray, 2 CPUs':<26}{ray:>10.1f}{one / ray:>16.2f}{'>= 1.7':>8}")
    else:
        print("ray: not installed (pip install 'shiftbench[ray]')")
    print(f"{'re-run (1 worker)':<26}{rerun:>10.1f}   = {100 * rerun / one:.1f}% of the first "
          "run (goal <= 5%)")
    for name, path in boards.items():
        if path.exists():
            print(f"leaderboard {name}: {path}")


if __name__ == "__main__":
    main()
