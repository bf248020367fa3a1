"""Command line: ``python run.py [run|list|check|compare|plot|report] ...``; with no command, the
embedded default."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from benchmark.engine.launchers import LAUNCHERS
from benchmark.engine.runner import PROTOCOLS, RunConfig, Runner, applicable
from benchmark.errors import ShiftbenchError
from benchmark.registry import ADAPTERS, SUITES, UnknownNameError, load_builtins
from benchmark.report import leaderboard
from benchmark.specs import AdapterSpec, split_list

DEFAULT_SUITE = "digits"
# both cores of a 2-core machine: leaderboards are identical for any worker count
_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
DEFAULT_WORKERS = max(1, min(2, _CORES or 1))
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


def parse_protocols(text: str) -> list[str]:
    protocols = split_list(text)
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown or not protocols:
        raise argparse.ArgumentTypeError(
            f"unknown protocol(s) {', '.join(unknown) or text!r}; known: {', '.join(PROTOCOLS)}")
    return list(dict.fromkeys(protocols))


def parse_batch_sizes(text: str) -> list[int | None]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--batch-size takes a number or a list (1,4,16), got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"--batch-size needs sizes >= 1, got {text!r}")
    return list(dict.fromkeys(sizes))


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def check_writable_folder(path: Path, option: str) -> None:
    """Refuse, before any work, a results/leaderboards path that cannot hold files."""
    if path.exists() and not path.is_dir():
        raise ShiftbenchError(f"{option} {path} is a file, not a folder; give a folder path")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ShiftbenchError(f"{option} {path}: {existing} is not writable; give a folder you "
                              "can write to")
    for sub in (path.glob("*") if path.is_dir() else []):
        if sub.is_dir() and not os.access(sub, os.W_OK | os.X_OK):
            raise ShiftbenchError(f"{option} {path}: {sub} is not writable; fix its "
                                  "permissions or give another folder")


def resolve_adapters(
    text: str, suite_name: str, test_time_only: bool = False
) -> list[AdapterSpec]:
    suite_cls = SUITES.get(suite_name)
    keyword = text.strip()
    if keyword in ("all", "test-time", "training-time", "quick"):
        if keyword in ("test-time", "quick"):
            test_time_only = True
        return [AdapterSpec(name) for name, cls in ADAPTERS.items()
                if applicable(cls, suite_cls) and not (test_time_only and cls.changes_training)
                and not (keyword == "training-time" and not cls.changes_training)
                and not (keyword == "quick" and cls.heavy)]
    specs = [AdapterSpec.parse(item) for item in split_list(text)]
    if not specs:
        raise ShiftbenchError("--adapters is empty; name adapters (a,b) or use 'all'")
    return specs


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--suite", default=DEFAULT_SUITE, help="suite name (see `run.py list`)")
    p.add_argument("--adapters", default="all",
                   help="comma-separated adapter names, optionally with hyper-parameters, "
                        "e.g. 'source,adabn,tent(lr=1e-4)', or compositions 'ibn_a+tent'; "
                        "'all' = every adapter that applies to the suite (default); "
                        "'test-time' / 'training-time' = those of them that do not / do "
                        "train their own source model; 'quick' = the test-time ones "
                        "except heavy augmentation-averaged methods (CoTTA, DUA)")
    p.add_argument("--seeds", type=parse_seeds, default=list(range(DEFAULT_SEEDS)),
                   help="number of seeds (3 -> 0,1,2) or an explicit list (0,5,7); default 3")
    p.add_argument("--protocols", "--protocol", dest="protocols", type=parse_protocols,
                   default=["episodic"], metavar="P[,P...]",
                   help="test-time streams (default episodic): " + "; ".join(
                       f"{name} = {protocol.description}" for name, protocol in PROTOCOLS.items()))
    p.add_argument("--batch-size", "--batch-sizes", dest="batch_sizes",
                   type=parse_batch_sizes, default=[None], metavar="N[,N...]",
                   help="test batch size, or a sweep (1,4,16,64,200); default: the suite's")
    p.add_argument("--targets", type=split_list, default=None, metavar="GLOB[,GLOB...]",
                   help="only these target domains, e.g. '*-5' (severity 5 of a -C suite)")
    p.add_argument("--source-checkpoint", type=Path, default=None, metavar="FILE",
                   help="use these source-model weights (safetensors, or a torch.save state "
                        "dict) instead of training; test-time adapters only")
    p.add_argument("--source-model", default=None, metavar="LIBRARY:NAME",
                   help="a published pretrained source model from the library's cache, e.g. "
                        "torchvision:resnet50.IMAGENET1K_V1, timm:resnet50.a1_in1k or "
                        "robustbench:Standard (no download during a run); test-time adapters "
                        "only")
    p.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                   help="parallel worker processes (local launcher) or Ray CPUs (default: "
                        f"{DEFAULT_WORKERS}, the cores here, at most 2; results do not "
                        "depend on it)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per job (default 1, so that every launcher and worker "
                        "count gives identical numbers; other values are recorded in the "
                        "result keys)")
    p.add_argument("--launcher", default="local", choices=LAUNCHERS,
                   help="local (default) or ray")
    p.add_argument("--ray-address", default=None,
                   help="Ray cluster address (auto, host:port); default: start Ray locally")
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
    isolation = p.add_mutually_exclusive_group()
    isolation.add_argument("--sandbox", action="store_const", dest="isolation", const="sandbox",
                           help="run adapter code in a bubblewrap sandbox: no network, no view "
                                "of --data-root, the suite's data files, the results and "
                                "leaderboards folders or $HOME")
    isolation.add_argument("--in-process", action="store_const", dest="isolation",
                           const="in-process",
                           help="debugging: run adapter code in this process (nothing keeps "
                                "labels from it; its cells are marked isolation=in-process)")
    p.set_defaults(isolation="isolated")
    p.add_argument("--cell-timeout", type=positive_seconds, default=None, metavar="SECONDS",
                   help="stop an adapter that takes longer than this per cell; its cells fail "
                        "and the run goes on")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run.py",
        description="shiftbench: run shift suites against adaptation methods and write CSV "
                    "leaderboards. With no command, runs the embedded default (suite "
                    f"{DEFAULT_SUITE}, every quick test-time adapter, {DEFAULT_SEEDS} seeds).",
    )
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run a suite against adapters",
                         description="Run a suite against adapters; finished cells are reused.")
    _add_run_arguments(run)
    listing = sub.add_parser("list", help="list suites and adapters",
                             description="List the registered suites and adapters, and where "
                                         "each adapter comes from (built-in, file, package).")
    listing.add_argument("--adapters", default=None, metavar="FILE.py:Class,...",
                         help="also load these adapter files, to list them")
    _add_check_parser(sub)
    _add_compare_parser(sub)
    _add_plot_parser(sub)
    _add_report_parser(sub)
    return parser


def _add_compare_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare", help="paired comparison of two adapters, or of two cell CSVs",
        description="Pair two result sets by (protocol, batch size, target, seed) over finished "
                    "target cells and report the mean difference a - b with its 95% CI, the "
                    "paired t-test (primary) and Wilcoxon signed-rank test (secondary), "
                    "wins/ties/losses per target and a verdict. Either --suite with --a and "
                    "--b, or --csv-a and --csv-b (two versions or machines).")
    p.add_argument("--suite", help="suite whose <leaderboards>/<suite>-cells.csv is read")
    p.add_argument("--a", help="adapter row a (a label such as 'tent(lr=0.0001)', or a name)")
    p.add_argument("--b", help="adapter row b")
    p.add_argument("--leaderboards", type=Path, default=Path("leaderboards"),
                   help="folder holding <suite>-cells.csv (default: leaderboards/)")
    p.add_argument("--csv-a", type=Path, help="first <suite>-cells.csv (two-file mode)")
    p.add_argument("--csv-b", type=Path, help="second <suite>-cells.csv (two-file mode)")
    p.add_argument("--adapter", help="two-file mode: compare only this adapter "
                                     "(default: every adapter both files have)")
    p.add_argument("--protocol", help="only cells of this protocol")
    p.add_argument("--batch-size", type=int, help="only cells of this batch size")
    p.add_argument("--unit", choices=("cell", "seed"), default="cell",
                   help="pair = one cell (default), or one seed's mean over the paired targets "
                        "(independent pairs when a suite has many targets)")
    p.add_argument("--alpha", type=float, default=0.05, help="test level (default 0.05)")
    p.add_argument("--tie-tol", type=float, default=0.0,
                   help="|a - b| <= this counts as a tie (default 0: equal scores)")
    p.add_argument("--out", type=Path, help="also write the table as CSV to this file")


def _add_plot_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plot", help="PNG figures of a suite's results",
        description="Write PNG figures from <leaderboards>/<suite>-cells.csv: per-target "
                    "heatmap; error vs severity for -C style suites; batch-size sweep; "
                    "online accuracy of continual streams (each when the cells allow it).")
    p.add_argument("--suite", required=True, help="suite name (names the cell file)")
    p.add_argument("--leaderboards", type=Path, default=Path("leaderboards"),
                   help="folder holding <suite>-cells.csv (default: leaderboards/)")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for the PNG files (default: <leaderboards>/plots)")


def _add_report_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="one self-contained HTML page of a results folder",
        description="Write one HTML page (styles, script and figures inside; opens offline) "
                    "from the leaderboards folder's <suite>.csv and <suite>-cells.csv files: "
                    "per suite the sortable, filterable leaderboard, its figures and the "
                    "cells behind every row with their provenance, and an index.")
    p.add_argument("--suite", action="append", default=None, metavar="S",
                   help="only this suite (repeatable; default: every suite in the folder)")
    p.add_argument("--leaderboards", type=Path, default=Path("leaderboards"),
                   help="folder holding the CSV files (default: leaderboards/)")
    p.add_argument("--out", type=Path, default=None,
                   help="the HTML file (default: <leaderboards>/report.html)")


def _add_check_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check", help="is an adapter class ready? (conformance kit, CPU, seconds)",
        description="Run an adapter on a tiny embedded suite and check the protocol, that it "
                    "runs, is deterministic, resets, reads no labels and leaves no NaN. "
                    "Exit 0 when ready, 1 with one line per problem, 2 if it cannot be loaded.")
    p.add_argument("adapter", help="path/to/my_adapter.py:MyAdapter, optionally with "
                                   "hyper-parameters (k=v,...), or a registered adapter name")
    p.add_argument("--seed", type=int, default=0, help="seed of the check runs (default 0)")


def cmd_list(args: argparse.Namespace | None = None) -> int:
    from benchmark.plugins import adapter_origin

    if args is not None and args.adapters:
        from benchmark.plugins import load_file_adapter

        for item in split_list(args.adapters):
            spec = AdapterSpec.parse(item)
            if spec.file:  # listing imports the file here (a run imports it only in
                load_file_adapter(spec.file)  # adapter processes)
    print("Suites:")
    for name, cls in SUITES.items():
        print(f"  {name:<14} {cls.task:<15} {cls.summary()}")
    print("\nAdapters:")
    for name, cls in ADAPTERS.items():
        print(f"  {name:<14} {cls.setting:<7} {cls.summary()}  [{adapter_origin(cls)}]")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    import time

    from benchmark.check import check_adapter, format_report

    start = time.perf_counter()
    report = check_adapter(args.adapter, seed=args.seed, echo=print)
    print(format_report(report, time.perf_counter() - start))
    return 0 if report.passed else 1


def cmd_run(args: argparse.Namespace) -> int:
    SUITES.get(args.suite)  # unknown suite: clear error before anything else
    check_writable_folder(args.results, "--results")
    check_writable_folder(args.leaderboards, "--leaderboards")
    config = RunConfig(
        suite=args.suite,
        adapters=resolve_adapters(args.adapters, args.suite,
                                  test_time_only=args.source_checkpoint is not None
                                  or args.source_model is not None),
        seeds=args.seeds, protocols=args.protocols, batch_sizes=args.batch_sizes,
        targets=args.targets, results=args.results, leaderboards=args.leaderboards,
        device=args.device, data_root=args.data_root, download=args.download,
        source_checkpoint=args.source_checkpoint, source_model=args.source_model,
        progress=not args.quiet,
        workers=args.workers, threads=args.threads, launcher=args.launcher,
        ray_address=args.ray_address, isolation=args.isolation,
        cell_timeout=args.cell_timeout,
    )
    summary = Runner(config).run()
    print(f"\n{args.suite}: {summary.done} cells computed, {summary.skipped} reused, "
          f"{summary.failed} failed")
    assert summary.board is not None
    print(leaderboard.format_table(summary.board))
    print("\nwritten: " + ", ".join(str(p) for p in summary.paths))
    from benchmark.report import html

    try:  # the CSV boards are written; a page that cannot be built must not hide them
        report = html.write(args.leaderboards, args.leaderboards / f"{args.suite}.html",
                            suites=[args.suite])
        print(f"report: {report} (open it in a browser; `python run.py report` for all suites)")
    except ShiftbenchError as exc:
        print(f"warning: no HTML report ({exc})", file=sys.stderr)
    if summary.failed:
        print(f"\n{summary.failed} cell(s) failed (stored with their traceback; a re-run retries "
              "them):", file=sys.stderr)
        for line in summary.failures:
            print(f"  {line}", file=sys.stderr)
    return min(summary.failed, 125)


def cmd_compare(args: argparse.Namespace) -> int:
    from benchmark.report import compare

    two_files = args.csv_a is not None or args.csv_b is not None
    options = dict(protocol=args.protocol, batch_size=args.batch_size, unit=args.unit,
                   alpha=args.alpha, tie_tol=args.tie_tol)
    if two_files:
        if args.csv_a is None or args.csv_b is None or args.a or args.b:
            raise ShiftbenchError("two-file mode takes --csv-a X-cells.csv --csv-b Y-cells.csv "
                                  "[--adapter NAME]; --a/--b are for --suite mode")
        result = compare.compare_files(
            compare.read_cells(args.csv_a), compare.read_cells(args.csv_b), args.csv_a,
            args.csv_b, adapter=args.adapter, **options)
    else:
        if not (args.suite and args.a and args.b):
            raise ShiftbenchError("compare needs --suite S --a ADAPTER --b ADAPTER, or "
                                  "--csv-a X-cells.csv --csv-b Y-cells.csv")
        path = args.leaderboards / f"{args.suite}-cells.csv"
        result = compare.compare_adapters(compare.read_cells(path), args.a, args.b, path,
                                          **options)
    print(compare.format_report(result))
    if args.out is not None:
        print(f"\nwritten: {compare.write_csv(result, args.out)}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from benchmark.report import plots

    out = args.out if args.out is not None else args.leaderboards / "plots"
    result = plots.write_plots(args.suite, args.leaderboards / f"{args.suite}-cells.csv", out)
    for line in result.skipped:
        print(f"skipped {line}")
    print("written: " + (", ".join(str(p) for p in result.written) or "nothing"))
    return 0 if result.written else 1


def cmd_report(args: argparse.Namespace) -> int:
    from benchmark.report import html

    print(f"written: {html.write(args.leaderboards, args.out, args.suite)}")
    return 0


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str,
                      lineno: int, line: str | None = None) -> str:
    """Warnings for people, not developers: one line, without the code that raised it."""
    return f"warning: {' '.join(str(message).split())}\n"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    if not argv:  # the embedded default: a first leaderboard in about a minute
        argv = ["run", "--adapters", "quick"]
    args = parser.parse_args(argv)
    warnings.simplefilter("default")
    warnings.formatwarning = _one_line_warning
    if args.command not in ("compare", "plot", "report"):  # those only read CSV files
        load_builtins()
    try:
        if args.command == "list":
            return cmd_list(args)
        if args.command == "check":
            return cmd_check(args)
        if args.command == "compare":
            return cmd_compare(args)
        if args.command == "plot":
            return cmd_plot(args)
        if args.command == "report":
            return cmd_report(args)
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
