"""Command line: ``python run.py [run|list] ...``; with no command, the embedded default."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from benchmark import leaderboard
from benchmark.errors import ShiftbenchError
from benchmark.registry import ADAPTERS, SUITES, UnknownNameError, load_builtins
from benchmark.runner import PROTOCOLS, RunConfig, Runner, applicable
from benchmark.specs import AdapterSpec, split_list

DEFAULT_SUITE = "digits"
DEFAULT_SEEDS = 3


def parse_seeds(text: str) -> list[int]:
    """``3`` -> seeds 0, 1, 2; ``0,5,7`` -> exactly those."""
    try:
        if "," in text:
            seeds = [int(s) for s in text.split(",") if s.strip()]
        else:
            seeds = list(range(int(text)))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--seeds takes a count (3) or a list (0,5,7), got {text!r}"
        ) from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"--seeds needs distinct seeds >= 0, got {text!r}")
    return seeds


def resolve_adapters(text: str, suite_name: str) -> list[AdapterSpec]:
    suite_cls = SUITES.get(suite_name)
    if text.strip() == "all":
        return [AdapterSpec(name) for name, cls in ADAPTERS.items() if applicable(cls, suite_cls)]
    specs = [AdapterSpec.parse(item) for item in split_list(text)]
    if not specs:
        raise ShiftbenchError("--adapters is empty; name adapters (a,b) or use 'all'")
    return specs


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--suite", default=DEFAULT_SUITE, help="suite name (see `run.py list`)")
    p.add_argument("--adapters", default="all",
                   help="comma-separated adapter names, optionally with hyper-parameters, "
                        "e.g. 'source,adabn,tent(lr=1e-4)'; 'all' = every adapter that "
                        "applies to the suite (default)")
    p.add_argument("--seeds", type=parse_seeds, default=list(range(DEFAULT_SEEDS)),
                   help="number of seeds (3 -> 0,1,2) or an explicit list (0,5,7); default 3")
    p.add_argument("--protocol", default="episodic", choices=PROTOCOLS,
                   help="test-time stream: episodic = reset to the source model per target")
    p.add_argument("--batch-size", type=int, default=None,
                   help="test batch size (default: the suite's)")
    p.add_argument("--results", type=Path, default=Path("results"),
                   help="result store: cells and checkpoints (default: results/)")
    p.add_argument("--leaderboards", type=Path, default=Path("leaderboards"),
                   help="where <suite>.csv and <suite>-cells.csv go (default: leaderboards/)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--data-root", type=Path, default=None,
                   help="root folder of real datasets (embedded suites need none)")
    p.add_argument("--download", action="store_true",
                   help="download a real dataset if it is missing (needs internet)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run.py",
        description="shiftbench: run shift suites against adaptation methods and write CSV "
                    "leaderboards. With no command, runs the embedded default "
                    f"(suite {DEFAULT_SUITE}, every applicable adapter, {DEFAULT_SEEDS} seeds).",
    )
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run a suite against adapters",
                         description="Run a suite against adapters; finished cells are reused.")
    _add_run_arguments(run)
    sub.add_parser("list", help="list suites and adapters",
                   description="List the registered suites and adapters.")
    return parser


def cmd_list() -> int:
    print("Suites:")
    for name, cls in SUITES.items():
        print(f"  {name:<14} {cls.task:<15} {cls.summary()}")
    print("\nAdapters:")
    for name, cls in ADAPTERS.items():
        print(f"  {name:<14} {cls.setting:<4} {cls.summary()}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    SUITES.get(args.suite)  # unknown suite: clear error before anything else
    config = RunConfig(
        suite=args.suite, adapters=resolve_adapters(args.adapters, args.suite),
        seeds=args.seeds, protocol=args.protocol, batch_size=args.batch_size,
        results=args.results, leaderboards=args.leaderboards, device=args.device,
        data_root=args.data_root, download=args.download, progress=not args.quiet,
    )
    summary = Runner(config).run()
    print(f"\n{args.suite}: {summary.done} cells computed, {summary.skipped} reused, "
          f"{summary.failed} failed")
    assert summary.board is not None
    print(leaderboard.format_table(summary.board))
    print("\nwritten: " + ", ".join(str(p) for p in summary.paths))
    if summary.failed:
        print(f"\n{summary.failed} cell(s) failed (stored with their traceback; a re-run retries "
              "them):", file=sys.stderr)
        for line in summary.failures:
            print(f"  {line}", file=sys.stderr)
    return min(summary.failed, 125)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        argv = ["run"]
    args = parser.parse_args(argv)
    warnings.simplefilter("default")
    load_builtins()
    try:
        if args.command == "list":
            return cmd_list()
        return cmd_run(args)
    except (ShiftbenchError, UnknownNameError, ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: finished cells are stored; run the same command to resume.",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
