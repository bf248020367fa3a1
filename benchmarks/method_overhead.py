"""Per-batch cost of every test-time method through the runner vs a bare loop.

For each method: the same trained source model (digits, seed 0), the ``digits-m`` target,
batch 128. The runner side is ``Runner.evaluate`` (the adapter in its own process, images
served by stream position, logits checked and scored with ECE and entropy); the bare side
builds the same adapter class and calls ``attach`` and ``predict`` on the batches in a
plain loop, counting correct predictions -- the same computation without the harness.

Each side runs the stream at two lengths: digits-m once (1,797 images) and ``--times`` times
over (the same images repeated). The difference between the two, divided by the extra
batches, is the cost per batch; what remains at length one is the fixed cost per job (for
the runner: handing the job to the adapter process, building and loading the model there,
collecting results). Repeats alternate between the sides; the script prints medians.
Goal: runner / bare per batch <= 1.10 for every method. The per-job ratio is printed too;
for methods whose whole job is one forward pass per batch, the fixed cost dominates it.

    python benchmarks/method_overhead.py [--repeats 5] [--times 3] [--methods tent,eta,...]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmark.engine.runner import RunConfig, Runner
from benchmark.registry import ADAPTERS, load_builtins
from benchmark.specs import AdapterSpec
from benchmark.suite import DomainData
from benchmark.training import seed_everything

METHODS = ("source", "adabn", "ptbn", "tent", "eta", "eata", "sar", "deyo", "rdumb", "lame",
           "t3a", "cotta", "roid", "dua", "rotta", "unmix_tns", "note")


def bare(suite, name: str, state: dict[str, torch.Tensor], data: DomainData, batch_size: int,
         seed: int, source: torch.Tensor | None) -> float:
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
    batches = [data.images[i:i + batch_size] for i in range(0, len(data), batch_size)]
    adapter.adapt(batches)  # type: ignore[arg-type]
    correct = 0
    for start, x in zip(range(0, len(data), batch_size), batches, strict=True):
        logits = adapter.predict(x)
        correct += int((logits.argmax(1) == data.labels[start:start + batch_size]).sum())
    return 100.0 * correct / len(data)


def repeated(load: Callable[[str, str], DomainData], domain: str, times: int
             ) -> Callable[[str, str], DomainData]:
    """``load`` with ``domain``'s test split repeated ``times`` times."""
    def load_repeated(name: str, split: str) -> DomainData:
        data = load(name, split)
        if name != domain or split != "test":
            return data
        return DomainData(data.images.repeat(times, 1, 1, 1), data.labels.repeat(times))
    return load_repeated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--times", type=int, default=3, help="length of the long stream")
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
    load = runner.suite.load
    lengths = (1, args.times)
    data = {k: repeated(load, "digits-m", k)("digits-m", "test") for k in lengths}
    batches = {k: -(-len(d) // args.batch_size) for k, d in data.items()}
    extra = batches[args.times] - batches[1]
    print(f"digits-m, batch {args.batch_size}, median of {args.repeats}; per batch: the "
          f"{args.times}x stream minus the 1x stream, over the {extra} extra batches")
    print(f"{'method':<10}{'ms/batch runner':>16}{'bare':>8}{'ratio':>7}"
          f"{'job s runner':>14}{'bare':>8}{'ratio':>7}{'fixed s':>9}  same accuracy")
    for name in methods:
        job = next(j for j in runner.plan_jobs()
                   if j.spec.name == name and j.cells[0].domain == "digits-m")
        info = runner.infos[job.spec]
        state, _ = runner.provisioner.state(job.spec, info.changes_training,
                                            runner.checkpoint_identity(info, 0), 0, None)
        source = None
        if info.source_images:
            images = load(runner.suite.source, "train").images
            order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
            source = images[order[:info.source_images].sort().values]
        through: dict[int, list[float]] = {k: [] for k in lengths}
        plain: dict[int, list[float]] = {k: [] for k in lengths}
        same = True
        for _ in range(args.repeats):
            for k in lengths:
                runner.suite.load = repeated(load, "digits-m", k)  # type: ignore[method-assign]
                start = time.perf_counter()
                result = runner.evaluate(info, state, job)[0][0]
                through[k].append(time.perf_counter() - start)
                start = time.perf_counter()
                accuracy = bare(runner.suite, name, state, data[k], args.batch_size, 0, source)
                plain[k].append(time.perf_counter() - start)
                same &= abs(result["score"] - accuracy) < 1e-4
        r = {k: statistics.median(v) for k, v in through.items()}
        b = {k: statistics.median(v) for k, v in plain.items()}
        r_batch = (r[args.times] - r[1]) / extra
        b_batch = (b[args.times] - b[1]) / extra
        fixed = (r[1] - b[1]) - batches[1] * (r_batch - b_batch)  # what batches do not explain
        print(f"{name:<10}{1e3 * r_batch:>16.2f}{1e3 * b_batch:>8.2f}{r_batch / b_batch:>7.3f}"
              f"{r[1]:>14.3f}{b[1]:>8.3f}{r[1] / b[1]:>7.3f}{fixed:>9.3f}  {same}")
    runner.close()


if __name__ == "__main__":
    main()
