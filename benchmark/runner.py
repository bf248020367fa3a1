"""The runner: plans cells, trains or loads source models, applies adapters, scores, stores.

A *cell* is one (suite, adapter + hyper-parameters, protocol, batch size, seed, domain).
Its key is a hash of everything that decides its number; a cell already stored as done is
never recomputed, so a re-run resumes where a killed run stopped. Cells are computed in
*jobs*: one cell per job, except for the ``continual`` and ``mixed`` protocols, where one
model adapts across all targets and the job yields a cell per target. Jobs are independent,
so a launcher (benchmark.launchers) may run them in worker processes or Ray tasks; they
meet only in the result store, through atomic writes and file locks.

The runner knows no adapter or suite by name: it gets classes from the registries and calls
the protocol hooks (benchmark.adapter).
"""

from __future__ import annotations

import datetime as dt
import math
import resource
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from benchmark import leaderboard
from benchmark.adapter import Adapter, TargetStream
from benchmark.errors import ShiftbenchError
from benchmark.metrics import Metric
from benchmark.protocols import (
    DEFAULT_PARAMS,
    PROTOCOLS,
    SEQUENTIAL,
    ConcatImages,
    check_protocol,
    dirichlet_order,
    mixed_order,
)
from benchmark.provenance import describe_device, versions
from benchmark.registry import SUITES
from benchmark.specs import AdapterSpec
from benchmark.store import ResultStore, file_sha256, stable_hash
from benchmark.suite import DomainData, Suite
from benchmark.training import seed_everything, train_source

__all__ = ["PROTOCOLS", "RunConfig", "RunSummary", "Runner", "applicable"]


@dataclass
class RunConfig:
    suite: str
    adapters: list[AdapterSpec]
    seeds: list[int]
    protocols: list[str] = field(default_factory=lambda: ["episodic"])
    batch_sizes: list[int | None] = field(default_factory=lambda: [None])  # None: suite's
    targets: list[str] | None = None  # glob patterns selecting target domains; None: all
    results: Path = Path("results")
    leaderboards: Path = Path("leaderboards")
    device: str = "cpu"
    data_root: Path | None = None
    download: bool = False
    source_checkpoint: Path | None = None  # the user's trained source weights
    progress: bool = True
    workers: int = 1
    threads: int = 1  # torch intra-op threads per job (see Runner.__init__)
    launcher: str = "local"
    ray_address: str | None = None


@dataclass
class RunSummary:
    done: int = 0
    skipped: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    board: pd.DataFrame | None = None
    paths: list[Path] = field(default_factory=list)

    def add(self, record: dict[str, Any]) -> None:
        if record["status"] == "done":
            self.done += 1
        else:
            self.failed += 1
            self.failures.append(f"{record['label']} {record['protocol']} "
                                 f"bs={record['batch_size']} seed={record['seed']} "
                                 f"{record['domain']}: {record['error']}")


@dataclass(frozen=True)
class PlannedCell:
    spec: AdapterSpec
    seed: int
    domain: str
    role: str  # "source" (the source domain's test split) or "target"
    key: str
    identity: dict[str, Any]


@dataclass(frozen=True)
class Job:
    """Cells computed together: one, or every target of a continual/mixed stream."""

    spec: AdapterSpec
    seed: int
    protocol: str
    params: dict[str, Any]
    batch_size: int
    cells: tuple[PlannedCell, ...]

    @property
    def key(self) -> str:
        return stable_hash([c.key for c in self.cells])

    def describe(self) -> str:
        where = self.cells[0].domain if len(self.cells) == 1 else f"{len(self.cells)} targets"
        return f"{self.spec.display} {self.protocol} bs={self.batch_size} " \
               f"seed={self.seed} {where}"


def applicable(adapter: type[Adapter] | Adapter, suite_cls: type[Suite]) -> bool:
    """Whether an adapter can run on a suite: the suite's task, and what the adapter needs."""
    return suite_cls.task in adapter.tasks and adapter.requires <= suite_cls.provides


def resolve_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ShiftbenchError("--device cuda was requested but torch sees no CUDA device")
    return device


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # Process-wide peak resident set size (KiB on Linux, bytes on macOS).
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


class Runner:
    def __init__(self, config: RunConfig) -> None:
        for protocol in config.protocols:
            check_protocol(protocol)
        if not config.protocols or not config.batch_sizes or not config.seeds:
            raise ShiftbenchError("a run needs at least one protocol, batch size and seed")
        self.config = config
        self.device = resolve_device(config.device)
        # CPU results depend on the intra-op thread count (it changes the order of float
        # sums, and training amplifies that), so every job, in this process, a worker or a
        # Ray task, computes with the same count: launchers then agree to the last digit.
        if config.threads < 1:
            raise ShiftbenchError(f"--threads must be >= 1, got {config.threads}")
        torch.set_num_threads(config.threads)
        self.suite: Suite = SUITES.get(config.suite)(root=config.data_root,
                                                      download=config.download)
        self.store = ResultStore(config.results)
        self.targets = self._select_targets(config.targets)
        for spec in config.adapters:
            adapter = spec.build()  # fails early on bad hyper-parameters
            if not applicable(adapter, type(self.suite)):
                raise ShiftbenchError(
                    f"adapter {spec.display!r} does not apply to suite {self.suite.name!r} "
                    f"(needs task in {sorted(adapter.tasks)} and {sorted(adapter.requires)}; "
                    f"the suite is {self.suite.task} and provides "
                    f"{sorted(self.suite.provides)})"
                )
            if adapter.setting.startswith("da") and set(config.protocols) & SEQUENTIAL:
                raise ShiftbenchError(
                    f"adapter {spec.display!r} trains on each target's unlabeled data "
                    "(setting da), so it has one model per target; the continual and mixed "
                    "protocols run one model across targets -- use episodic or noniid"
                )
            if config.source_checkpoint is not None and adapter.changes_training:
                raise ShiftbenchError(
                    f"adapter {spec.display!r} changes training, but --source-checkpoint "
                    "provides a plain source model; run it without --source-checkpoint"
                )
        self._states: dict[str, tuple[dict[str, torch.Tensor], dict[str, Any]]] = {}
        self._training_errors: dict[str, Exception] = {}  # fail its cells, don't retrain
        self._architectures: dict[tuple[str, str], str] = {}
        self._user_weights: tuple[dict[str, torch.Tensor], str] | None = None
        self._target_digests: dict[str, str] = {}

    def _select_targets(self, patterns: list[str] | None) -> tuple[str, ...]:
        if not patterns:
            return tuple(self.suite.targets)
        chosen = tuple(t for t in self.suite.targets if any(fnmatch(t, p) for p in patterns))
        if not chosen:
            raise ShiftbenchError(f"--targets {','.join(patterns)} matches none of "
                                  f"{self.suite.name}'s targets ({', '.join(self.suite.targets)})")
        return chosen

    # ---- identities ------------------------------------------------------------------
    def _suite_signature(self) -> dict[str, Any]:
        return {
            "suite": self.suite.name,
            "data": self.suite.fingerprint(),
            "recipe": self.suite.recipe.as_dict(),
            "metric": self.suite.metric,
            "torch": torch.__version__,
        }

    def batch_size(self, requested: int | None) -> int:
        return requested or self.suite.eval_batch_size

    def training_target(self, adapter: Adapter, domain: str) -> str | None:
        """The target whose unlabeled data a ``da`` adapter trains with for this cell: the
        cell's own; for the source-domain row, the first target of the run."""
        if not adapter.setting.startswith("da"):
            return None
        return self.targets[0] if domain == self.suite.source else domain

    def checkpoint_identity(
        self, adapter: Adapter, seed: int, target: str | None = None
    ) -> dict[str, Any]:
        """What decides a trained source model. It names the source *data*, not the suite,
        so suites sharing a source domain and recipe (digits, digits-c) share checkpoints."""
        if self.config.source_checkpoint is not None:
            return {"user_weights": self._load_user_weights()[1],
                    "architecture": self._architecture_hash(adapter)}
        identity: dict[str, Any] = {
            "source_data": self.suite.source_fingerprint(),
            "num_classes": self.suite.num_classes,
            "recipe": self.suite.recipe.as_dict(),
            "torch": torch.__version__,
            "architecture": self._architecture_hash(adapter),
            "training": adapter.training_signature(),
            "seed": seed,
            **self._threads(),
        }
        if target is not None:
            if target not in self._target_digests:
                self._target_digests[target] = self.suite.split_fingerprint(target, "train")
            identity["target"] = {"domain": target, "data": self._target_digests[target]}
        return identity

    def _architecture_hash(self, adapter: Adapter) -> str:
        """Hash of the prepared model's structure, built once per adapter configuration:
        building a model (e.g. DeepLabV3 with its backbone file) per cell would be wasted."""
        config = (adapter.label(), stable_hash(adapter.training_signature()))
        if config not in self._architectures:
            model = adapter.prepare(self.suite.build_model())
            self._architectures[config] = stable_hash(repr(model))
        return self._architectures[config]

    def _threads(self) -> dict[str, int]:
        """Part of an identity when it is not the default (1 thread): CPU numbers computed
        with another thread count are other numbers."""
        if self.device.type == "cuda" or self.config.threads == 1:
            return {}
        return {"threads": self.config.threads}

    def _load_user_weights(self) -> tuple[dict[str, torch.Tensor], str]:
        if self._user_weights is None:
            from benchmark.weights import load_state_dict_file

            path = Path(self.config.source_checkpoint)  # type: ignore[arg-type]
            self._user_weights = (load_state_dict_file(path), file_sha256(path))
        return self._user_weights

    def _protocol_params(self, protocol: str, seed: int) -> dict[str, Any]:
        params = dict(DEFAULT_PARAMS[protocol])
        if protocol in SEQUENTIAL:
            params["order"] = list(self.targets)  # the stream's recorded target order
        if protocol in ("mixed", "noniid"):
            params["shuffle_seed"] = seed
        return params

    def plan_jobs(self) -> list[Job]:
        jobs = []
        for seed in self.config.seeds:
            for spec in self.config.adapters:
                adapter = spec.build()
                for protocol in self.config.protocols:
                    params = self._protocol_params(protocol, seed)
                    for requested in self.config.batch_sizes:
                        bs = self.batch_size(requested)
                        cells = [self._plan_cell(spec, adapter, seed, protocol, params, bs, d)
                                 for d in (self.suite.source, *self.targets)]
                        source_cell, target_cells = cells[0], cells[1:]
                        jobs.append(Job(spec, seed, protocol, params, bs, (source_cell,)))
                        if protocol in SEQUENTIAL:
                            jobs.append(Job(spec, seed, protocol, params, bs,
                                            tuple(target_cells)))
                        else:
                            jobs += [Job(spec, seed, protocol, params, bs, (c,))
                                     for c in target_cells]
        return jobs

    def plan(self) -> list[PlannedCell]:
        return [cell for job in self.plan_jobs() for cell in job.cells]

    def _plan_cell(self, spec: AdapterSpec, adapter: Adapter, seed: int, protocol: str,
                   params: dict[str, Any], batch_size: int, domain: str) -> PlannedCell:
        checkpoint = stable_hash(self.checkpoint_identity(
            adapter, seed, self.training_target(adapter, domain)))
        identity = {
            **self._suite_signature(),
            "checkpoint": checkpoint,
            "adapter": adapter.name,
            "hparams": adapter.hparams,
            "adapter_code": adapter.code_hash(),
            "protocol": protocol,
            # the source row is always its own episode in natural order
            "protocol_params": params if domain != self.suite.source else {},
            "batch_size": batch_size,
            "seed": seed,
            "domain": domain,
            **self._threads(),
        }
        role = "source" if domain == self.suite.source else "target"
        return PlannedCell(spec, seed, domain, role, stable_hash(identity), identity)

    # ---- running ---------------------------------------------------------------------
    def run(self) -> RunSummary:
        from benchmark.launchers import launch

        summary = RunSummary()
        jobs = self.plan_jobs()
        total = sum(len(job.cells) for job in jobs)
        pending = []
        for job in jobs:
            if self.job_is_done(job):
                summary.skipped += len(job.cells)
            else:
                pending.append(job)
        bar = tqdm(total=total, initial=summary.skipped, desc=f"{self.suite.name} cells",
                   unit="cell", disable=not self.config.progress, position=0)

        def on_records(records: list[dict[str, Any]]) -> None:
            for record in records:
                if record.get("status") == "skipped":  # done meanwhile by a concurrent run
                    summary.skipped += 1
                else:
                    summary.add(record)
            bar.update(len(records))
            bar.set_postfix(done=summary.done, failed=summary.failed,
                            skipped=summary.skipped, refresh=False)

        try:
            launch(self, pending, on_records)
        finally:
            bar.close()
        summary.board, summary.paths = self.write_leaderboard()
        return summary

    def write_leaderboard(self) -> tuple[pd.DataFrame, list[Path]]:
        with self.store.lock(self.config.leaderboards / f".{self.suite.name}"):
            return leaderboard.write(
                self.suite, self.store, self.config.leaderboards,
                current_keys={c.key for c in self.plan()},
                suite_signature=stable_hash(self._suite_signature()),
                targets=list(self.targets),
            )

    def job_is_done(self, job: Job) -> bool:
        for cell in job.cells:
            stored = self.store.load_cell(self.suite.name, cell.key)
            if stored is None or stored["status"] != "done":
                return False
        return True

    def execute(self, job: Job, position: int = 0) -> list[dict[str, Any]]:
        """Compute a job's cells and store them; returns their records. Safe to call from
        several processes at once: a lock per job makes the second caller find it done."""
        with self.store.lock(self.store.cell_path(self.suite.name, job.key).with_suffix("")):
            if self.job_is_done(job):
                return [{"status": "skipped"} for _ in job.cells]
            records = self._run_job(job, position)
            for record in records:
                if record["status"] == "failed":
                    record["traceback_file"] = str(self.store.save_traceback(
                        self.suite.name, record["key"], record["traceback"]))
                self.store.save_cell(record)
            return records

    def _source_state(
        self, adapter: Adapter, seed: int, target: str | None, position: int = 0
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The trained source model for this seed, training signature and (da) target: from
        memory, from the checkpoint store, from the user's file, or trained now and stored."""
        identity = self.checkpoint_identity(adapter, seed, target)
        key = stable_hash(identity)
        if key in self._states:
            return self._states[key]
        if key in self._training_errors:
            raise self._training_errors[key]
        try:
            if self.config.source_checkpoint is not None:
                state = self._user_state(adapter)
                info = {"key": key, "trained_now": False,
                        "file": str(self.config.source_checkpoint),
                        "sha256": self._load_user_weights()[1]}
                self._states[key] = (state, info)
                return self._states[key]
            # One process trains, concurrent ones wait and then load its file.
            with self.store.lock(self.store.checkpoint_path(key)):
                return self._load_or_train(adapter, seed, target, identity, key, position)
        except Exception as exc:
            self._training_errors[key] = exc
            raise

    def _user_state(self, adapter: Adapter) -> dict[str, torch.Tensor]:
        from benchmark.weights import check_compatible

        state = self._load_user_weights()[0]
        check_compatible(adapter.prepare(self.suite.build_model()), state)
        return state

    def _load_or_train(
        self, adapter: Adapter, seed: int, target: str | None, identity: dict[str, Any],
        key: str, position: int,
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        state = self.store.load_checkpoint(key)
        info: dict[str, Any] = {"key": key, "trained_now": state is None}
        if state is None:
            trainer = adapter if adapter.changes_training else Adapter()
            seed_everything(seed)
            model = trainer.prepare(self.suite.build_model())
            unlabeled = None
            if target is not None:  # images only: target labels never reach training
                unlabeled = (target, self.suite.load(target, "train").images)
            info["training"] = train_source(
                model, self.suite.load(self.suite.source, "train"), self.suite.recipe, seed,
                trainer, self.device, progress=self.config.progress,
                description=f"train {self.suite.source} seed={seed}"
                            + (f" +{target}" if target else ""),
                target=unlabeled, position=position,
            )
            state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            meta = {"identity": stable_hash(identity), "seed": str(seed),
                    "source": self.suite.source, **{k: str(v) for k, v in versions().items()}}
            self.store.save_checkpoint(key, state, meta)
        info["sha256"] = file_sha256(self.store.checkpoint_path(key))
        self._states[key] = (state, info)
        return state, info

    def _base_record(self, adapter: Adapter, job: Job, cell: PlannedCell) -> dict[str, Any]:
        return {
            "key": cell.key,
            "suite": self.suite.name,
            "adapter": adapter.name,
            "label": adapter.label(),
            "hparams": adapter.hparams,
            "adapter_code": cell.identity["adapter_code"],
            "setting": adapter.setting,
            "protocol": job.protocol,
            "protocol_params": cell.identity["protocol_params"],
            "batch_size": job.batch_size,
            "seed": cell.seed,
            "domain": cell.domain,
            "role": cell.role,
            "metric": self.suite.metric,
            "higher_is_better": True,
            "data_fingerprint": self.suite.fingerprint(),
            "recipe": self.suite.recipe.as_dict(),
            "suite_signature": stable_hash(self._suite_signature()),
            "versions": versions(),
            "device": describe_device(self.device),
        }

    def _run_job(self, job: Job, position: int = 0) -> list[dict[str, Any]]:
        adapter = job.spec.build()
        records = [self._base_record(adapter, job, cell) for cell in job.cells]
        try:
            target = self.training_target(adapter, job.cells[0].domain)
            state, checkpoint = self._source_state(adapter, job.seed, target, position)
            for record in records:
                record["checkpoint"] = checkpoint
            results = self._evaluate(adapter, state, job)
            for record, result in zip(records, results, strict=True):
                record.update(result)
                record["status"] = "done"
        except Exception as exc:  # a failing adapter is a failed cell, never a crashed run
            for record in records:
                record.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                              traceback=traceback.format_exc())
        finished = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        for record in records:
            record["finished_at"] = finished
        return records

    # ---- evaluation ------------------------------------------------------------------
    def _evaluate(
        self, adapter: Adapter, state: dict[str, torch.Tensor], job: Job
    ) -> list[dict[str, Any]]:
        seed_everything(job.seed)
        model = adapter.prepare(self.suite.build_model())
        model.load_state_dict(state)
        model.to(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        clock = _Clock(self.device)
        clock(adapter.attach, model)
        if job.protocol == "mixed" and job.cells[0].role == "target":
            return self._evaluate_mixed(adapter, model, job, clock)
        results = []
        for cell in job.cells:  # continual: no reset between targets
            data = self.suite.load(cell.domain, "test")
            order = torch.arange(len(data))
            if job.protocol == "noniid" and cell.role == "target":
                order = dirichlet_order(data.labels, job.params["alpha"], job.params["slots"],
                                        job.params["shuffle_seed"])
            started = 0.0 if cell is job.cells[0] else clock.elapsed  # attach: first cell's
            metric, curve = self.suite.make_metric(), []
            for group, context in self._groups(adapter, cell, data, order):
                stream = TargetStream(data.images, job.batch_size, group, self.device,
                                      context=context)
                clock(adapter.set_context, model, stream.context)
                clock(adapter.adapt, stream)
                for x, index in zip(stream, stream.indices(), strict=True):
                    logits = clock(adapter.predict, x)
                    _check_logits(logits, x)
                    metric.update(logits, data.labels[index])
                    if job.protocol == "continual":
                        curve.append(_running_score(metric))
            result = self._result(metric, len(order), clock.elapsed - started)
            if job.protocol == "continual":
                result["curve"] = curve
                result["stream_position"] = self.targets.index(cell.domain) \
                    if cell.role == "target" else -1
            results.append(result)
        return results

    def _evaluate_mixed(
        self, adapter: Adapter, model: torch.nn.Module, job: Job, clock: _Clock
    ) -> list[dict[str, Any]]:
        data = [self.suite.load(cell.domain, "test") for cell in job.cells]
        domain, local = mixed_order([len(d) for d in data], job.params["shuffle_seed"])
        images = ConcatImages([d.images for d in data], domain, local)
        stream = TargetStream(images, job.batch_size, None, self.device,
                              context={"role": "target", "domain": "mixed"})
        clock(adapter.set_context, model, stream.context)
        clock(adapter.adapt, stream)
        metrics = [self.suite.make_metric() for _ in data]
        for x, index in zip(stream, stream.indices(), strict=True):
            logits = clock(adapter.predict, x)
            _check_logits(logits, x)
            for d in domain[index].unique().tolist():
                where = domain[index] == d
                metrics[d].update(logits[where], data[d].labels[local[index][where]])
        # timing is shared by the whole stream; each target gets its share by size
        return [self._result(m, len(d), clock.elapsed * len(d) / len(domain))
                for m, d in zip(metrics, data, strict=True)]

    def _groups(
        self, adapter: Adapter, cell: PlannedCell, data: DomainData, order: torch.Tensor
    ) -> list[tuple[torch.Tensor, dict[str, Any]]]:
        """The stream of a cell as (order, context) parts. The context is what an adapter
        may know besides the images: role, domain name, and side information that is
        constant over the part (a camera id). Never labels.

        One part, unless the adapter trains on single-``batch_key`` batches (camera BN) and
        that field varies over the split (the source domain's test images from several
        cameras): then each value is its own part, in order of first appearance, as in
        training."""
        base: dict[str, Any] = {"role": cell.role, "domain": cell.domain}
        for name, values in data.extra.items():
            if len(values) and bool((values == values[0]).all()):
                base[name] = values[0].item()
        key = adapter.batch_key
        if key is None or key in base or key not in data.extra:
            return [(order, base)]
        values = data.extra[key][order]
        parts = []
        for value in dict.fromkeys(values.tolist()):
            parts.append((order[values == value], {**base, key: value}))
        return parts

    def _result(self, metric: Metric, n: int, elapsed: float) -> dict[str, Any]:
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
            "peak_mb": peak_memory_mb(self.device),
        }


class _Clock:
    """Times only the adapter's own calls (not data loading or scoring)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.elapsed = device, 0.0

    def __call__(self, fn: Callable[..., Any], *args: Any) -> Any:
        start = time.perf_counter()
        out = fn(*args)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.elapsed += time.perf_counter() - start
        return out


def _check_logits(logits: Any, x: torch.Tensor) -> None:
    if not isinstance(logits, torch.Tensor) or len(logits) != len(x):
        raise ValueError(
            f"predict returned {type(logits).__name__} of length "
            f"{len(logits) if hasattr(logits, '__len__') else '?'} for a batch of {len(x)}"
        )
    if not torch.isfinite(logits).all():
        raise FloatingPointError("adapter produced non-finite predictions (NaN/inf)")


def _running_score(metric: Metric) -> float:
    return float(metric.result()["score"])

