"""Runner overhead: Tent evaluated through the runner vs a bare loop over the same batches.

Both sides start from the same trained source model (digits, seed 0), build the model, load
the weights, and then run Tent on the ``digits-m`` target: BN layers normalize with batch
statistics, Adam (lr 1e-3) on BN's affine parameters, one entropy step per batch of 200, and
count correct predictions. The runner side is ``Runner.evaluate`` (the one evaluation
function: the adapter side in an adapter process -- or in this one with ``--in-process`` --,
the stream, the hooks, checks, the metric with ECE and entropy); the bare side is the few
lines a researcher would write. Repeats alternate between the two, and the script prints the
median of each and their ratio. Goal: runner / bare <= 1.10.

    python benchmarks/runner_overhead.py [--repeats 7] [--batch-size 200] [--in-process]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmark.engine.runner import RunConfig, Runner
from benchmark.registry import load_builtins
from benchmark.specs import AdapterSpec


def bare_tent(suite, state: dict[str, torch.Tensor], batch_size: int) -> float:
    """Tent written out by hand; returns accuracy in %."""
    model = suite.build_model()
    model.load_state_dict(state)
    model.eval()
    params = []
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.train()
            m.track_running_stats = False
            params += [m.weight, m.bias]
    model.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=1e-3, betas=(0.9, 0.999))
    data = suite.load("digits-m", "test")
    correct = 0
    for start in range(0, len(data), batch_size):
        x = data.images[start : start + batch_size]
        y = data.labels[start : start + batch_size]
        logits = model(x)
        loss = -(logits.softmax(1) * logits.log_softmax(1)).sum(1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        correct += int((logits.detach().argmax(1) == y).sum())
    return 100.0 * correct / len(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--in-process", action="store_true",
                        help="run the adapter side in this process (default: its own)")
    args = parser.parse_args()
    load_builtins()
    work = Path(tempfile.mkdtemp(prefix="shiftbench-overhead-"))
    runner = Runner(RunConfig(suite="digits", adapters=[AdapterSpec("tent")], seeds=[0],
                              batch_sizes=[args.batch_size], targets=["digits-m"],
                              results=work / "R", leaderboards=work / "L", progress=False,
                              isolation="in-process" if args.in_process else "isolated"))
    job = next(j for j in runner.plan_jobs() if j.cells[0].domain == "digits-m")
    info = runner.infos[job.spec]
    state, _ = runner.provisioner.state(job.spec, False, runner.checkpoint_identity(info, 0),
                                        0, None)  # trained once, here

    through_runner, bare = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        result = runner.evaluate(info, state, job)[0][0]
        through_runner.append(time.perf_counter() - start)
        start = time.perf_counter()
        accuracy = bare_tent(runner.suite, state, args.batch_size)
        bare.append(time.perf_counter() - start)
    assert abs(result["score"] - accuracy) < 1e-4, (result["score"], accuracy)  # same predictions

    r, b = statistics.median(through_runner), statistics.median(bare)
    batches = -(-result["n_examples"] // args.batch_size)
    print(f"Tent on digits-m ({result['n_examples']} images, batch {args.batch_size}, "
          f"{batches} batches), median of {args.repeats}; same accuracy {accuracy:.2f}%")
    print(f"{'path':<16}{'seconds':>10}{'ms/batch':>10}")
    print(f"{'through runner':<16}{r:>10.3f}{1000 * r / batches:>10.1f}")
    print(f"{'bare loop':<16}{b:>10.3f}{1000 * b / batches:>10.1f}")
    print(f"ratio runner / bare: {r / b:.3f}  (goal <= 1.10; adapter side "
          f"{runner.process.mode})")
    runner.close()


if __name__ == "__main__":
    main()
