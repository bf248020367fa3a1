"""The one way a job is evaluated, split at the label boundary.

A job is one episode: one trained model, one adapter instance, and the cells it produces
(one cell; or every target of a ``continual``/``mixed`` stream). Its evaluation has two
sides that meet only through a :class:`Link`:

- the **scoring side** (:class:`Scoring`, in the runner's process) holds the target data and
  labels: it orders each stream (protocols may use labels to order, e.g. ``noniid``), serves
  images by *stream position* (never dataset indices), receives logits, checks them, scores
  them and builds the cell results;
- the **adapter side** (:func:`run_adapter`, in the adapter process, see
  :mod:`benchmark.engine.isolation`) builds the adapter, prepares and loads the model and
  calls the hooks: ``attach``, then per stream ``set_context``, ``adapt``, ``predict`` per
  batch. It is given images, side information and the number of classes, never a label.

``run.py run`` and ``run.py check`` both evaluate through :func:`evaluate_job`; the link is a
pipe to an adapter process (default) or a direct call (``--in-process``), with the same
numbers either way. Training with an adapter's hooks (:func:`train_with_adapter`) and
describing an adapter (:func:`describe_adapter`) run on the adapter side too, so the
scoring process never executes a submitted adapter's code (the project's own built-in
adapters are described in the scoring process; their hooks too run on the adapter side).
"""

from __future__ import annotations

import math
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from benchmark.adapter import Adapter, TargetStream
from benchmark.engine.protocols import Protocol as StreamProtocol
from benchmark.metrics import Metric
from benchmark.suite import DomainData, Recipe


# ---- what crosses the boundary ----------------------------------------------------------------
@dataclass(frozen=True)
class Imports:
    """What an adapter process imports to find the run's adapter classes: modules that
    register them (tests, user packages) and adapter files (``path.py:Class``)."""

    modules: tuple[str, ...] = ()
    files: tuple[str, ...] = ()


@dataclass(frozen=True)
class StreamPlan:
    """One stream as the adapter side knows it: its context, its length, its batch size."""

    context: dict[str, Any]
    length: int
    batch_size: int


@dataclass
class AdapterTask:
    """Everything the adapter side gets for one job. No labels, no dataset indices."""

    spec: Any  # benchmark.specs.AdapterSpec
    imports: Imports
    model: nn.Module  # the suite's model, built (seeded) by the scoring side, not prepared
    rng_state: torch.Tensor  # torch's RNG right after the model was built
    state: dict[str, torch.Tensor]  # the trained weights
    device: str
    threads: int
    seed: int
    streams: list[StreamPlan]
    suite_task: str = "classification"  # told to the adapter (Adapter.bind)
    num_classes: int = 0
    source: StreamPlan | None = None  # setting tta+src: the unlabeled source images (stream -1)
    online: bool = False  # the online protocol: batches arrive while the adapter is busy
    probe_reset: bool = False  # ``check``: reset() after the streams, then replay the first


class Link(Protocol):
    """The adapter side's view of the scoring side."""

    def images(self, stream: int, positions: torch.Tensor) -> torch.Tensor: ...

    def logits(self, stream: int, batch: int, logits: torch.Tensor) -> None: ...

    def stream_done(self, stream: int, elapsed: float, peak_mb: float,
                    online: dict[str, float] | None = None) -> None: ...


SOURCE_STREAM = -1
"""The stream index of the unlabeled source images a ``tta+src`` adapter gets."""


# ---- the adapter side ---------------------------------------------------------------------------
class _RemoteImages:
    """A stream's images, fetched from the scoring side by position when the stream is read.

    A request for consecutive positions of a target stream fetches a block of up to
    ``READ_AHEAD_BYTES`` from there on: one round trip per block instead of one per batch,
    which is most of the harness's per-batch cost for a method as cheap as one forward.
    Each batch is returned as its own copy, so an adapter that edits its input in place
    cannot change what a later pass over the stream reads. The source stream is fetched
    exactly as asked, so the count of source images a method read stays exact."""

    READ_AHEAD_BYTES = 32 * 2**20

    def __init__(self, link: Link, stream: int, length: int) -> None:
        self.link, self.stream, self.length = link, stream, length
        self._start, self._block = 0, None

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, positions: torch.Tensor) -> torch.Tensor:
        positions = torch.as_tensor(positions, dtype=torch.long).reshape(-1)
        n = len(positions)
        first = int(positions[0]) if n else 0
        if (self.stream == SOURCE_STREAM or not n
                or not torch.equal(positions, torch.arange(first, first + n))):
            return self.link.images(self.stream, positions)
        block = self._block
        if block is None or not self._start <= first <= first + n <= self._start + len(block):
            count = n
            if block is not None and len(block):  # the image size is known: read ahead
                per_image = block[0].numel() * block.element_size()
                count = max(n, self.READ_AHEAD_BYTES // max(per_image, 1))
            count = min(count, self.length - first)
            self._start = first
            block = self._block = self.link.images(self.stream,
                                                   torch.arange(first, first + count))
        offset = first - self._start
        return block[offset:offset + n].clone()


class Clock:
    """Times only the adapter's own calls (not data transfer or scoring)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.elapsed = device, 0.0

    def __call__(self, fn: Callable[..., Any], *args: Any) -> Any:
        start = time.perf_counter()
        out = fn(*args)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.elapsed += time.perf_counter() - start
        return out


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # Process-wide peak resident set size (KiB on Linux, bytes on macOS).
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


_LOADED: set[Imports] = set()


def load_imports(imports: Imports) -> None:
    """Register the run's adapter classes in this process (once per process: an adapter
    process serves several jobs, and scanning entry points costs ~0.1 s)."""
    if imports in _LOADED:
        return
    import importlib

    from benchmark.plugins import load_file_adapter
    from benchmark.registry import load_builtins

    load_builtins()
    for module in imports.modules:
        importlib.import_module(module)
    for reference in imports.files:
        load_file_adapter(reference)
    _LOADED.add(imports)


def prepared_model(adapter: Adapter, model: nn.Module, rng_state: torch.Tensor,
                   seed: int) -> nn.Module:
    """``adapter.prepare`` on the suite's model, continuing torch's RNG from where the
    scoring side built it, so both sides of the link give the same initialisation."""
    from benchmark.training import seed_python_and_numpy

    seed_python_and_numpy(seed)
    torch.set_rng_state(rng_state)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    return adapter.prepare(model)


def run_adapter(task: AdapterTask, link: Link) -> dict[str, Any]:
    """The adapter side of a job: build, prepare, load, attach, and per stream
    ``set_context``, ``adapt`` and ``predict`` on every batch, in the runner's order."""
    torch.set_num_threads(task.threads)
    device = torch.device(task.device)
    adapter = task.spec.build()
    adapter.bind(task.suite_task, task.num_classes)
    model = prepared_model(adapter, task.model, task.rng_state, task.seed)
    model.load_state_dict(task.state)
    model.to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    clock = Clock(device)
    clock(adapter.attach, model)
    if task.source is not None:  # images only, served like any stream (position -1)
        source = TargetStream(_RemoteImages(link, SOURCE_STREAM, task.source.length),
                              task.source.batch_size, device=device,
                              context=task.source.context)
        clock(adapter.use_source, source)
    attached = _snapshot(model) if task.probe_reset else None
    for index, plan in enumerate(task.streams):
        online = _run_stream(adapter, model, index, plan, link, clock, device, task.online)
        link.stream_done(index, clock.elapsed, peak_memory_mb(device), online)
    result: dict[str, Any] = {"non_finite": non_finite_tensors(model)}
    if task.probe_reset and task.streams:
        adapter.reset()
        assert attached is not None
        result["reset_changed"] = [k for k, v in model.state_dict().items()
                                   if not _same_tensor(v, attached[k])]
        replay = len(task.streams)  # the scoring side serves the first stream again
        _run_stream(adapter, model, replay, task.streams[0], link, clock, device, task.online)
        link.stream_done(replay, clock.elapsed, peak_memory_mb(device))
        result["non_finite_after_reset"] = non_finite_tensors(model)
    return result


def _run_stream(adapter: Adapter, model: nn.Module, index: int, plan: StreamPlan,
                link: Link, clock: Clock, device: torch.device, online: bool = False
                ) -> dict[str, float] | None:
    stream = TargetStream(_RemoteImages(link, index, plan.length), plan.batch_size,
                          device=device, context=plan.context)
    clock(adapter.set_context, model, stream.context)
    clock(adapter.adapt, stream)
    meter = PassCounter(model) if online else None
    busy, adapted, cost = 0, 0, 0.0  # batches still arriving while the adapter works
    for batch, x in enumerate(stream):
        if busy > 0:  # predicted by the current model, not adapted on (online protocol)
            busy -= 1
            logits = clock(adapter.infer, x)
        elif meter is not None:
            meter.reset()
            logits = clock(adapter.predict, x)
            spent = meter.cost(len(x))
            adapted, cost = adapted + 1, cost + spent
            busy = max(math.ceil(spent - 1e-9), 1) - 1
        else:
            logits = clock(adapter.predict, x)
        if not isinstance(logits, torch.Tensor):
            raise TypeError(f"predict returned {type(logits).__name__}, not a tensor of logits")
        link.logits(index, batch, logits.detach().float().cpu())
    if meter is None:
        return None
    meter.close()
    return {"adapted": adapted, "batches": len(stream), "cost": cost}


class PassCounter:
    """Counts the work of an adapter's ``predict`` in forward-pass units: images through a
    forward of the model -- or of any copy of it (a teacher, an anchor) -- plus twice the
    images a backward pass goes through (the usual estimate of a backward's cost), divided
    by the batch size."""

    def __init__(self, model: nn.Module) -> None:
        from torch.nn.modules.module import register_module_forward_hook

        self.kind = type(model)
        self.forward_images = self.backward_images = 0
        self.handles = [register_module_forward_hook(self._forward)]

    def _forward(self, module: nn.Module, inputs: Any, output: Any) -> None:
        if type(module) is not self.kind or not inputs or not isinstance(inputs[0],
                                                                          torch.Tensor):
            return
        self.forward_images += len(inputs[0])
        if isinstance(output, torch.Tensor) and output.requires_grad:
            # fires when a backward pass reaches this forward's output
            output.register_hook(self._backward)

    def _backward(self, grad: torch.Tensor) -> None:
        self.backward_images += len(grad)

    def reset(self) -> None:
        self.forward_images = self.backward_images = 0

    def cost(self, batch: int) -> float:
        return (self.forward_images + 2 * self.backward_images) / max(batch, 1)

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point():  # NaN where the attached state had NaN counts as restored
        return bool(torch.allclose(a, b, rtol=0, atol=0, equal_nan=True))
    return bool(torch.equal(a, b))


def non_finite_tensors(model: nn.Module) -> list[str]:
    return [name for name, t in [*model.named_parameters(), *model.named_buffers()]
            if t.is_floating_point() and not torch.isfinite(t).all()]


# ---- describing and training, also on the adapter side -----------------------------------
@dataclass
class DescribeTask:
    spec: Any  # AdapterSpec
    imports: Imports
    model: nn.Module  # the suite's model, to hash the prepared architecture
    suite_task: str = "classification"
    num_classes: int = 0


def describe_adapter(task: DescribeTask, link: Link | None = None) -> dict[str, Any]:
    """What the scoring side needs to know about an adapter configuration, as plain data:
    its identity (name, label, hyper-parameters, code hash), its declarations (setting,
    tasks, requirements, batch key) and the hash of the model its ``prepare`` builds."""
    from benchmark.plugins import adapter_origin
    from benchmark.store import stable_hash

    adapter = task.spec.build()
    adapter.bind(task.suite_task, task.num_classes)
    parts = [getattr(adapter, "train_part", adapter), getattr(adapter, "test_part", None)]
    origins = [adapter_origin(type(part)) for part in parts if part is not None]
    signature = adapter.training_signature()
    return {
        "name": adapter.name,
        "label": adapter.label(),
        "hparams": adapter.hparams,
        "setting": adapter.setting,
        "changes_training": bool(adapter.changes_training),
        "requires": sorted(adapter.requires),
        "tasks": sorted(adapter.tasks),
        "batch_key": adapter.batch_key,
        "source_images": adapter.source_image_count(),
        "code_hash": adapter.code_hash(),
        # a composition trains with its first part only (ibn_a+tent shares ibn_a's model)
        "training_code": parts[0].code_hash(),
        "training_signature": signature,
        "architecture": stable_hash(repr(adapter.prepare(task.model))),
        "origins": origins,
    }


@dataclass
class TrainTask:
    spec: Any  # AdapterSpec; None trains the plain source model
    imports: Imports
    model: nn.Module
    rng_state: torch.Tensor
    source: DomainData  # the source *training* split (labelled: the task loss needs it)
    target: tuple[str, torch.Tensor] | None  # da: the target's training images, no labels
    recipe: Recipe
    seed: int
    device: str
    threads: int
    progress: bool
    description: str
    position: int = 0
    suite_task: str = "classification"
    num_classes: int = 0


def train_with_adapter(task: TrainTask, link: Link | None = None
                       ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Train the source model with an adapter's training hooks; (info, state dict)."""
    from benchmark.training import train_source, training_steps

    torch.set_num_threads(task.threads)
    adapter = task.spec.build() if task.spec is not None else Adapter()
    adapter.bind(task.suite_task, task.num_classes,
                 training_steps(task.source, task.recipe, adapter.batch_key, task.seed))
    model = prepared_model(adapter, task.model, task.rng_state, task.seed)
    info = train_source(model, task.source, task.recipe, task.seed, adapter,
                        torch.device(task.device), progress=task.progress,
                        description=task.description, target=task.target,
                        position=task.position)
    return info, {k: v.detach().cpu() for k, v in model.state_dict().items()}


# ---- the scoring side --------------------------------------------------------------------
@dataclass
class CellPlan:
    """One cell of a job, as the scoring side sees it."""

    domain: str
    role: str  # "source" or "target"
    data: DomainData  # images, labels and side information of the domain's test split
    position: int = -1  # place of the target in a continual stream (-1: none)
    factors: dict[str, Any] = field(default_factory=dict)  # e.g. corruption and severity


@dataclass
class _Stream:
    images: Any  # Indexable: a tensor, or ConcatImages for a mixed stream
    order: torch.Tensor  # dataset index of every stream position
    plan: StreamPlan
    score: Callable[[torch.Tensor, torch.Tensor], None]  # (logits, dataset indices)
    cell: int  # the cell it belongs to (a mixed stream: the first)
    next_batch: int = 0


class ScoringError(RuntimeError):
    """The adapter side broke the protocol (wrong shapes, non-finite logits, bad order)."""


@dataclass
class Scoring:
    """The scoring side of one job. Build it with :meth:`for_job`; it serves the adapter
    side through :meth:`images`, :meth:`logits` and :meth:`stream_done`."""

    cells: list[CellPlan]
    metrics: list[Metric]
    streams: list[_Stream] = field(default_factory=list)
    curves: list[list[float]] | None = None
    times: list[float] = field(default_factory=list)  # adapter time spent on each cell
    last_clock: float = 0.0  # the adapter clock at the end of the previous stream
    finished: int = 0  # streams the adapter side finished
    online: list[dict[str, float]] = field(default_factory=list)  # per stream: adapted, cost
    peak_mb: float = 0.0
    mixed_sizes: list[int] | None = None
    replay: _Stream | None = None  # check's replay of the first stream after reset()
    replay_logits: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)

    kept: list[torch.Tensor | None] | None = None  # check: every cell's logits
    source: _Stream | None = None  # tta+src: the unlabeled source images (stream -1)
    source_served: int = 0  # how many source images the adapter side fetched

    @classmethod
    def for_job(cls, cells: list[CellPlan], protocol: StreamProtocol, params: dict[str, Any],
                batch_size: int, batch_key: str | None,
                make_metric: Callable[[], Metric], keep_logits: bool = False) -> Scoring:
        scoring = cls(cells, [make_metric() for _ in cells])
        scoring.times = [0.0] * len(cells)
        if keep_logits:
            scoring.kept = [None] * len(cells)
        targets = cells[0].role == "target"
        if targets and protocol.records_curve:
            scoring.curves = [[] for _ in cells]
        if targets and protocol.mixes_targets:
            scoring._mixed_stream(protocol, params, batch_size)
            return scoring
        orders = [protocol.order(cell.data.labels, params) if targets
                  else torch.arange(len(cell.data)) for cell in cells]
        visits = protocol.visits(len(cells), [c.factors for c in cells], params) if targets \
            else [(i, 0, 1) for i in range(len(cells))]
        for i, part, parts in visits:
            order = orders[i]
            if parts > 1:  # a slice of the cell's images (a level visited twice)
                order = order[part * len(order) // parts:(part + 1) * len(order) // parts]
            for piece, context in _parts(cells[i], order, batch_key):
                scoring.streams.append(_Stream(
                    cells[i].data.images, piece, StreamPlan(context, len(piece), batch_size),
                    scoring._cell_scorer(i), i))
        return scoring

    def _mixed_stream(self, protocol: StreamProtocol, params: dict[str, Any],
                      batch_size: int) -> None:
        from benchmark.engine.protocols import ConcatImages

        sizes = [len(c.data) for c in self.cells]
        domain, local = protocol.mixed_order([c.data.labels for c in self.cells], params)
        images = ConcatImages([c.data.images for c in self.cells], domain, local)

        def score(logits: torch.Tensor, index: torch.Tensor) -> None:
            for d in domain[index].unique().tolist():
                where = domain[index] == d
                labels = self.cells[d].data.labels[local[index][where]]
                self.metrics[d].update(logits[where], labels)
                self._keep(d, logits[where], local[index][where])

        self.mixed_sizes = sizes
        plan = StreamPlan({"role": "target", "domain": "mixed"}, len(domain), batch_size)
        self.streams.append(_Stream(images, torch.arange(len(domain)), plan, score, 0))

    def serve_source(self, images: torch.Tensor, count: int, seed: int, batch_size: int,
                     context: dict[str, Any]) -> None:
        """Offer ``count`` images of the source training split, a subset fixed by ``seed``,
        as stream -1 (``Adapter.use_source``). Images only: nothing is scored on it."""
        count = min(count, len(images))
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
        plan = StreamPlan(dict(context), count, batch_size)
        self.source = _Stream(images, order[:count].sort().values, plan, _no_scores, -1)

    def _cell_scorer(self, i: int) -> Callable[[torch.Tensor, torch.Tensor], None]:
        def score(logits: torch.Tensor, index: torch.Tensor) -> None:
            self.metrics[i].update(logits, self.cells[i].data.labels[index])
            self._keep(i, logits, index)
            if self.curves is not None:
                self.curves[i].append(float(self.metrics[i].result()["score"]))
        return score

    def _keep(self, cell: int, logits: torch.Tensor, index: torch.Tensor) -> None:
        if self.kept is None:
            return
        if self.kept[cell] is None:
            n = len(self.cells[cell].data)
            self.kept[cell] = torch.full((n, *logits.shape[1:]), float("nan"))
        self.kept[cell][index] = logits  # type: ignore[index]

    @property
    def plans(self) -> list[StreamPlan]:
        return [s.plan for s in self.streams]

    def _stream(self, index: int) -> _Stream:
        if index == SOURCE_STREAM and self.source is not None:
            return self.source
        # index == len(streams): check's replay of the first stream after reset()
        if index == len(self.streams) and self.streams:
            if self.replay is None:
                first = self.streams[0]
                self.replay = _Stream(first.images, first.order, first.plan,
                                      self._collect_replay, -1)
            return self.replay
        if not (isinstance(index, int) and 0 <= index < len(self.streams)):
            raise ScoringError(f"no stream {index!r}")
        return self.streams[index]

    def _collect_replay(self, logits: torch.Tensor, index: torch.Tensor) -> None:
        self.replay_logits.append((logits, index))

    def replay_logits_in_order(self) -> torch.Tensor:
        """The replayed first stream's logits, in dataset order (as :attr:`kept`)."""
        first = self.streams[0]
        n = len(self.cells[first.cell].data)
        out = torch.full((n, *self.replay_logits[0][0].shape[1:]), float("nan"))
        for logits, index in self.replay_logits:
            out[index] = logits
        return out

    # -- the Link, served to the adapter side --
    def images(self, stream: int, positions: torch.Tensor) -> torch.Tensor:
        s = self._stream(stream)
        positions = positions.reshape(-1).long()
        if len(positions) and (positions.min() < 0 or positions.max() >= len(s.order)):
            raise ScoringError(f"stream {stream} has {len(s.order)} images; asked for "
                               f"positions {int(positions.min())}..{int(positions.max())}")
        if s is self.source:
            self.source_served += len(positions)
        return s.images[s.order[positions]]

    def logits(self, stream: int, batch: int, logits: torch.Tensor) -> None:
        s = self._stream(stream)
        if batch != s.next_batch:
            raise ScoringError(f"stream {stream}: got batch {batch}, expected {s.next_batch}")
        start = batch * s.plan.batch_size
        index = s.order[start:start + s.plan.batch_size]
        if not len(index):
            raise ScoringError(f"stream {stream} has no batch {batch}")
        if logits.ndim < 2 or len(logits) != len(index) or not logits.is_floating_point():
            raise ScoringError(f"predict() returned {tuple(logits.shape)} for a batch of "
                               f"{len(index)}; return logits of shape (batch, classes)")
        if not torch.isfinite(logits).all():
            raise FloatingPointError("adapter produced non-finite predictions (NaN/inf)")
        s.next_batch += 1
        s.score(logits, index)

    def stream_done(self, stream: int, elapsed: float, peak_mb: float,
                    online: dict[str, float] | None = None) -> None:
        s = self._stream(stream)
        if s.next_batch * s.plan.batch_size < len(s.order):
            raise ScoringError(f"stream {stream} ended after {s.next_batch} batches")
        self.peak_mb = max(self.peak_mb, float(peak_mb))
        if s.cell >= 0:
            self.times[s.cell] += float(elapsed) - self.last_clock
            self.finished += 1
            if online is not None:
                self.online.append({"cell": s.cell, **online})
        self.last_clock = float(elapsed)

    # -- the results --
    def results(self) -> list[dict[str, Any]]:
        if self.finished != len(self.streams):
            raise ScoringError("the adapter side finished without scoring every stream")
        times = self.times
        if self.mixed_sizes is not None:  # the stream's time, shared by size
            total = sum(self.mixed_sizes)
            times = [self.times[0] * n / total for n in self.mixed_sizes]
        out = []
        for i, (cell, metric) in enumerate(zip(self.cells, self.metrics, strict=True)):
            result = _result(metric, len(cell.data), times[i], self.peak_mb)
            if self.curves is not None:
                result["curve"] = self.curves[i]
                result["stream_position"] = cell.position
            mine = [o for o in self.online if o["cell"] == i]
            if mine:
                batches = sum(o["batches"] for o in mine)
                result["adapted_batches"] = int(sum(o["adapted"] for o in mine))
                result["batches"] = int(batches)
                result["cost_ratio"] = sum(o["cost"] for o in mine) / max(
                    sum(o["adapted"] for o in mine), 1)
            out.append(result)
        return out


def _no_scores(logits: torch.Tensor, index: torch.Tensor) -> None:
    """The source stream's scorer: its images are served, never scored."""
    raise ScoringError("the source images are not scored")


def _parts(cell: CellPlan, order: torch.Tensor, batch_key: str | None
           ) -> list[tuple[torch.Tensor, dict[str, Any]]]:
    """A cell's stream as (order, context) parts. The context is what an adapter may know
    besides the images: role, domain name, and side information that is constant over the
    part (a camera id). Never labels.

    One part, unless the adapter trains on single-``batch_key`` batches (camera BN) and that
    field varies over the split (the source domain's test images from several cameras):
    then each value is its own part, in order of first appearance, as in training."""
    base: dict[str, Any] = {"role": cell.role, "domain": cell.domain}
    for name, values in cell.data.extra.items():
        if len(values) and bool((values == values[0]).all()):
            base[name] = values[0].item()
    if batch_key is None or batch_key in base or batch_key not in cell.data.extra:
        return [(order, base)]
    values = cell.data.extra[batch_key][order]
    return [(order[values == value], {**base, batch_key: value})
            for value in dict.fromkeys(values.tolist())]


def _result(metric: Metric, n: int, elapsed: float, peak_mb: float) -> dict[str, Any]:
    results = metric.result()
    score = results.pop("score")
    if not math.isfinite(score):
        raise FloatingPointError(f"metric is {score}")
    return {
        "score": score,
        "metrics": results,
        "n_examples": n,
        "adapt_s": elapsed,
        "img_per_s": n / elapsed if elapsed > 0 else math.inf,
        "peak_mb": peak_mb,
    }


def evaluate_job(task: AdapterTask, scoring: Scoring, process: Any,
                 timeout: float | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Evaluate one job: the adapter side runs in ``process`` (an adapter process, or this
    one), the scoring side here. Returns the cells' results and the adapter side's report
    (non-finite tensors; with ``probe_reset``, what reset() left changed)."""
    task.streams = scoring.plans
    task.source = scoring.source.plan if scoring.source is not None else None
    report, _ = process.run("evaluate", task, scoring, timeout=timeout,
                            cells=len(scoring.cells))
    return scoring.results(), report
