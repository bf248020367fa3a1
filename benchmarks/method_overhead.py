"""Per-batch cost of every test-time method through the runner vs a bare loop.

For each method: the same trained source model (digits, seed 0), the ``digits-m`` target,
batch 128. The runner side is ``Runner.evaluate`` (the adapter in its own process, images
served by stream position, logits checked and scored with ECE and entropy); the bare side
builds the same adapter class and calls ``attach`` and ``predict`` on the batches in a
plain loop, counting correct predictions -- the same computation without the harness.
Repeats alternate between the two; the script prints medians and their ratio per method.
Goal: runner / bare <= 1.10 for every method.

    python benchmarks/method_overhead.py [--repeats 5] [--methods tent,eta,...]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmark.engine.runner import RunConfig, Runner
from benchmark.registry import ADAPTERS, load_builtins
from benchmark.specs import AdapterSpec
from benchmark.training import seed_everything

METHODS = ("source", "adabn", "ptbn", "tent", "eta", "eata", "sar", "deyo", "rdumb", "lame",
           "t3a", "cotta", "roid", "dua", "rotta", "unmix_tns", "note")


def bare(suite, name: str, state: dict[str, torch.Tensor], batch_size: int, seed: int,
         source: torch.Tensor | None) -> float:
    """The adapter driven by hand; returns accuracy in %."""
    seed_everything(seed)
    model = suite.build_model()
    adapter = ADAPTERS.get(name)()
    adapter.bind(suite.task, suite.num_classes)
    if adapter.changes_training:  # its checkpoint holds the layers prepare() swaps in
        model = adapter.prepare(model)
    model.load_state_dict(state)
    adapter.attach(model)
    if source is not None:
        adapter.use_source([source[i:i + batch_size]  # type: ignore[arg-type]
                            for i in range(0, len(source), batch_size)])
    data = suite.load("digits-m", "test")
    batches = [data.images[i:i + batch_size] for i in range(0, len(data), batch_size)]
    adapter.adapt(batches)  # type: ignore[arg-type]
    correct = 0
    for start, x in zip(range(0, len(data), batch_size), batches, strict=True):
        logits = adapter.predict(x)
        correct += int((logits.argmax(1) == data.labels[start:start + batch_size]).sum())
    return 100.0 * correct / len(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args()
    load_builtins()
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="shiftbench-methods-"))
    methods = args.methods.split(",")
    runner = Runner(RunConfig(suite="digits", adapters=[AdapterSpec(m) for m in methods],
                              seeds=[0], batch_sizes=[args.batch_size], targets=["digits-m"],
                              results=work / "R", leaderboards=work / "L", progress=False))
    print(f"digits-m, batch {args.batch_size}, median of {args.repeats} (seconds per job)")
    print(f"{'method':<8}{'runner':>9}{'bare':>9}{'ratio':>8}  same accuracy")
    for name in methods:
        job = next(j for j in runner.plan_jobs()
                   if j.spec.name == name and j.cells[0].domain == "digits-m")
        info = runner.infos[job.spec]
        state, _ = runner.provisioner.state(job.spec, info.changes_training,
                                            runner.checkpoint_identity(info, 0), 0, None)
        source = None
        if info.source_images:
            images = runner.suite.load(runner.suite.source, "train").images
            order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
            source = images[order[:info.source_images].sort().values]
        through, plain = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            result = runner.evaluate(info, state, job)[0][0]
            through.append(time.perf_counter() - start)
            start = time.perf_counter()
            accuracy = bare(runner.suite, name, state, args.batch_size, 0, source)
            plain.append(time.perf_counter() - start)
        r, b = statistics.median(through), statistics.median(plain)
        same = abs(result["score"] - accuracy) < 1e-4
        print(f"{name:<8}{r:>9.3f}{b:>9.3f}{r / b:>8.3f}  {same} ({accuracy:.2f}%)")
    runner.close()


if __name__ == "__main__":
    main()
