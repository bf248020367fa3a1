"""Training time of each training-time adapter relative to plain source training.

Trains the suite's source model with its own recipe once per adapter (plain source first),
side by side in one process, one thread, the same seed, and prints the ratio of each
adapter's training time to the plain one against the goals: <= 1.30x, whitening methods
(ISW, DWT) <= 2x. Time is measured as process CPU time (robust to other load on a shared
machine) and wall time; with ``--repeats`` > 1 the adapters are interleaved and the fastest
repeat counts.

    python benchmarks/training_overhead.py [--suite digits] [--epochs N] [--repeats R]

The multi-source methods (DSON, weighted BN, camera BN) need source-domain ids: measure them
with ``--suite digits-cams``.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from benchmark.adapter import Adapter
from benchmark.engine.runner import applicable
from benchmark.registry import ADAPTERS, SUITES, load_builtins
from benchmark.training import seed_everything, train_source

ADAPTER_NAMES = ("dsbn", "ibn_a", "ibn_b", "isw", "iw", "irw", "switchable_norm", "domain_norm",
                 "transnorm", "dwt", "dson", "wbn", "camera_bn")
GOALS = {"isw": 2.0, "dwt": 2.0}  # whitening methods
DEFAULT_GOAL = 1.30


def train_once(suite, adapter: Adapter, recipe, target) -> tuple[float, float]:
    seed_everything(0)
    model = adapter.prepare(suite.build_model())
    source = suite.load(suite.source, "train")
    cpu, wall = time.process_time(), time.perf_counter()
    train_source(model, source, recipe, 0, adapter, torch.device("cpu"), progress=False,
                 target=target if adapter.setting == "da" else None)
    return time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="digits")
    parser.add_argument("--epochs", type=int, default=None,
                        help="override the recipe's epochs (default: the suite's recipe)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--adapters", default=",".join(ADAPTER_NAMES))
    args = parser.parse_args()

    torch.set_num_threads(1)
    load_builtins()
    suite = SUITES.get(args.suite)()
    recipe = suite.recipe if args.epochs is None else replace(suite.recipe, epochs=args.epochs)
    first_target = suite.targets[0]
    target = (first_target, suite.load(first_target, "train").images)
    names = ["source"]
    for name in (n for n in args.adapters.split(",") if n):
        if applicable(ADAPTERS.get(name), type(suite)):
            names.append(name)
        else:  # e.g. the multi-source methods need the camera ids of digits-cams
            needs = sorted(ADAPTERS.get(name).requires - type(suite).provides)
            print(f"skipped {name}: needs {needs}, which suite {suite.name} does not provide")
    best: dict[str, tuple[float, float]] = {}
    for _ in range(args.repeats):
        for name in names:
            adapter = Adapter() if name == "source" else ADAPTERS.get(name)()
            cpu, wall = train_once(suite, adapter, recipe, target)
            old = best.get(name)
            best[name] = (cpu, wall) if old is None else (min(old[0], cpu), min(old[1], wall))

    base_cpu, base_wall = best["source"]
    print(f"training time vs plain source training: suite {suite.name}, {recipe.epochs} "
          f"epochs, 1 thread, best of {args.repeats}")
    print(f"{'adapter':<18}{'cpu s':>8}{'wall s':>8}{'cpu ratio':>11}{'wall ratio':>11}"
          f"{'goal':>7}{'':>6}")
    for name in names:
        cpu, wall = best[name]
        goal = GOALS.get(name, DEFAULT_GOAL)
        ratio = cpu / base_cpu
        verdict = "" if name == "source" else ("ok" if ratio <= goal else "OVER")
        print(f"{name:<18}{cpu:>8.1f}{wall:>8.1f}{ratio:>11.2f}{wall / base_wall:>11.2f}"
              f"{'' if name == 'source' else goal:>7}{verdict:>6}")


if __name__ == "__main__":
    main()
