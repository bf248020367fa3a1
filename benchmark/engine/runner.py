"""The runner: plans cells, trains or loads source models, applies adapters, scores, stores.

A *cell* is one (suite, adapter + hyper-parameters, protocol, batch size, seed, domain).
Its key is a hash of everything that decides its number; a cell already stored as done is
never recomputed, so a re-run resumes where a killed run stopped. Cells are computed in
*jobs*: one cell per job, except for the ``continual`` and ``mixed`` protocols, where one
model adapts across all targets and the job yields a cell per target. Jobs are independent,
so a launcher (benchmark.engine.launchers) may run them in worker processes or Ray tasks; they
meet only in the result store, through atomic writes and file locks.

The runner knows no adapter or suite by name, and never runs a submitted adapter's code: it
learns what it needs about each adapter configuration (name, setting, code hash, ...) from
a description (made in an adapter process, except for the project's built-in adapters),
and evaluates every job through
:func:`benchmark.engine.evaluate.evaluate_job` (the same function ``check`` uses), which runs
the hooks in an adapter process (:mod:`benchmark.engine.isolation`) while this process holds
the labels and scores.
"""

from __future__ import annotations

import datetime as dt
import traceback
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from benchmark.engine.evaluate import (
    AdapterTask,
    CellPlan,
    DescribeTask,
    Imports,
    Scoring,
    evaluate_job,
)
from benchmark.engine.isolation import (
    AdapterProcessError,
    InProcess,
    make_process,
    tune_allocator,
)
from benchmark.engine.protocols import PROTOCOLS, get_protocol
from benchmark.engine.provision import Provisioner
from benchmark.errors import ShiftbenchError
from benchmark.memory import release_free_memory
from benchmark.provenance import describe_device, helper_files, versions
from benchmark.registry import ADAPTERS, SUITES
from benchmark.report import leaderboard
from benchmark.source_models import SourceModel
from benchmark.specs import AdapterSpec
from benchmark.store import ResultStore, stable_hash
from benchmark.suite import Suite
from benchmark.training import seed_everything

__all__ = ["PROTOCOLS", "AdapterInfo", "RunConfig", "RunSummary", "Runner", "applicable"]


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
    source_model: str | None = None  # a published pretrained model (benchmark.source_models)
    progress: bool = True
    workers: int = 1
    threads: int = 1  # torch intra-op threads per job (see Runner.__init__)
    launcher: str = "local"
    ray_address: str | None = None
    isolation: str = "isolated"  # "isolated", "sandbox" or "in-process" (engine.isolation)
    cell_timeout: float | None = None  # seconds per cell before the adapter is stopped


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
class AdapterInfo:
    """An adapter configuration as the runner knows it: plain data, described by an adapter
    process (:func:`benchmark.engine.evaluate.describe_adapter`)."""

    name: str
    label: str
    hparams: dict[str, Any]
    setting: str
    changes_training: bool
    requires: frozenset[str]
    tasks: frozenset[str]
    batch_key: str | None
    source_images: int  # setting tta+src: unlabeled source images use_source gets
    code_hash: str
    training_code: str  # the code that decides its trained model (a composition: first part)
    training_signature: dict[str, Any] | None
    architecture: str
    origins: tuple[str, ...]

    @classmethod
    def from_description(cls, d: dict[str, Any]) -> AdapterInfo:
        return cls(name=str(d["name"]), label=str(d["label"]), hparams=dict(d["hparams"]),
                   setting=str(d["setting"]), changes_training=bool(d["changes_training"]),
                   requires=frozenset(d["requires"]), tasks=frozenset(d["tasks"]),
                   batch_key=d["batch_key"], source_images=int(d["source_images"]),
                   code_hash=str(d["code_hash"]),
                   training_code=str(d["training_code"]),
                   training_signature=d["training_signature"],
                   architecture=str(d["architecture"]), origins=tuple(d["origins"]))


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
    label: str
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
        return f"{self.label} {self.protocol} bs={self.batch_size} seed={self.seed} {where}"


def applicable(adapter: Any, suite_cls: type[Suite]) -> bool:
    """Whether an adapter (a class, an instance or an :class:`AdapterInfo`) can run on a
    suite: the suite's task, and what the adapter needs."""
    return suite_cls.task in adapter.tasks and adapter.requires <= suite_cls.provides


def resolve_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ShiftbenchError("--device cuda was requested but torch sees no CUDA device")
    return device


def run_imports(suite: Suite, specs: list[AdapterSpec]) -> Imports:
    """What an adapter process imports to find the run's classes: the modules that define
    the suite and non-built-in registered adapters, and the adapter files."""
    modules, files = set(), set()
    classes: list[type] = [type(suite)]
    for spec in specs:
        part: AdapterSpec | None = spec
        while part is not None:
            if part.file:
                files.add(part.file)
            else:
                classes.append(ADAPTERS.get(part.name))
            part = part.then
    for cls in classes:
        if hasattr(cls, "_shiftbench_source_sha256"):  # loaded from a file in this process
            from benchmark.plugins import adapter_origin

            files.add(f"{adapter_origin(cls)}:{cls.__qualname__}")
        elif cls.__module__ != "__main__":
            modules.add(cls.__module__)
    return Imports(tuple(sorted(modules)), tuple(sorted(files)))


class Runner:
    def __init__(self, config: RunConfig, suite: Suite | None = None) -> None:
        """``suite``: an instance to run instead of the registered ``config.suite`` (the
        check kit's tiny suite)."""
        protocols = [get_protocol(p) for p in config.protocols]
        if not config.protocols or not config.batch_sizes or not config.seeds:
            raise ShiftbenchError("a run needs at least one protocol, batch size and seed")
        if config.cell_timeout is not None and config.cell_timeout <= 0:
            raise ShiftbenchError(f"--cell-timeout must be > 0 seconds, got {config.cell_timeout}")
        if config.cell_timeout is not None and config.isolation == "in-process":
            raise ShiftbenchError("--cell-timeout needs the adapter in its own process; drop "
                                  "--in-process")
        self.config = config
        self.device = resolve_device(config.device)
        # CPU results depend on the intra-op thread count (it changes the order of float
        # sums, and training amplifies that), so every job, in this process, a worker or a
        # Ray task, computes with the same count: launchers then agree to the last digit.
        if config.threads < 1:
            raise ShiftbenchError(f"--threads must be >= 1, got {config.threads}")
        torch.set_num_threads(config.threads)
        tune_allocator()  # as in the adapter processes: every mode computes at one speed
        self.suite: Suite = suite if suite is not None else SUITES.get(config.suite)(
            root=config.data_root, download=config.download)
        self.source_model = self._named_source_model(config)
        if (not self.suite.trains_source and config.source_checkpoint is None
                and config.source_model is None):
            raise ShiftbenchError(
                f"suite {self.suite.name!r} does not train its source model here: give "
                "--source-model (e.g. torchvision:resnet50.IMAGENET1K_V1) or "
                "--source-checkpoint")
        self.store = ResultStore(config.results)
        self.targets = self._select_targets(config.targets)
        hidden = [config.results, config.leaderboards]
        if config.isolation == "sandbox":  # (finding package data imports scikit-learn)
            hidden += self.suite.data_paths()
        if config.data_root is not None:
            hidden.append(config.data_root)
        self.imports = run_imports(self.suite, config.adapters)
        files = [Path(f.rsplit(":", 1)[0]) for f in self.imports.files]
        files += [h for f in files for h in helper_files(f)]  # what they import beside them
        self.process = make_process(config.isolation, hidden, config.device, expose=files)
        if config.isolation == "sandbox":
            for path in (config.results, config.leaderboards):
                Path(path).mkdir(parents=True, exist_ok=True)  # mount points of the sandbox
        try:
            self.infos = self._describe(config.adapters)
            for spec in config.adapters:
                info = self.infos[spec]
                if not applicable(info, type(self.suite)):
                    raise ShiftbenchError(
                        f"adapter {info.label!r} does not apply to suite {self.suite.name!r} "
                        f"(needs task in {sorted(info.tasks)} and {sorted(info.requires)}; "
                        f"the suite is {self.suite.task} and provides "
                        f"{sorted(self.suite.provides)})"
                    )
                if info.setting.startswith("da") and any(p.sequential for p in protocols):
                    raise ShiftbenchError(
                        f"adapter {info.label!r} trains on each target's unlabeled data "
                        "(setting da), so it has one model per target; the continual and mixed "
                        "protocols run one model across targets -- use episodic or noniid"
                    )
                fixed = ("--source-checkpoint" if config.source_checkpoint is not None else
                         "--source-model" if config.source_model is not None else None)
                if fixed is not None and info.changes_training:
                    raise ShiftbenchError(
                        f"adapter {info.label!r} changes training, but {fixed} provides a "
                        f"plain source model; run it without {fixed}"
                    )
        except BaseException:
            self.process.close()  # stop the adapter process before reporting the error
            raise
        self.provisioner = Provisioner(self.suite, self.store, self.process, self.imports,
                                       self.device, config.threads, config.progress,
                                       config.source_checkpoint, self.source_model)
        self._target_digests: dict[str, str] = {}

    def _named_source_model(self, config: RunConfig) -> SourceModel | None:
        if config.source_model is None:
            return None
        if config.source_checkpoint is not None:
            raise ShiftbenchError("give --source-checkpoint or --source-model, not both")
        named = SourceModel.parse(config.source_model)
        classes = named.num_classes()  # loads it: a missing file stops the run here
        if classes != self.suite.num_classes:
            raise ShiftbenchError(
                f"--source-model {named.text} predicts {classes} classes; suite "
                f"{self.suite.name!r} has {self.suite.num_classes}")
        return named

    def build_model(self) -> nn.Module:
        """The model a job starts from, before its weights are loaded: the suite's
        architecture, or the named pretrained model."""
        if self.source_model is not None:
            return self.source_model.build()
        return self.suite.build_model()

    def _describe(self, specs: list[AdapterSpec]) -> dict[AdapterSpec, AdapterInfo]:
        """Each adapter configuration described (in an adapter process; the project's
        built-ins here): bad hyper-parameters, a file that does not load, or two sources of
        one name (in this run or in the results folder) stop the run here, before any cell,
        with the adapter's own message."""
        infos: dict[AdapterSpec, AdapterInfo] = {}
        for spec in dict.fromkeys(specs):
            seed_everything(0)
            task = DescribeTask(spec, self.imports, self.build_model(),
                                self.suite.task, self.suite.num_classes)
            # the project's own adapters are described here (no wait for the adapter
            # process to start); any other code only in an adapter process
            where = InProcess() if _built_in(spec) else self.process
            try:
                description, _ = where.run("describe", task)
            except AdapterProcessError as exc:
                raise ShiftbenchError(f"adapter {spec.display!r}: {exc}") from None
            infos[spec] = AdapterInfo.from_description(description)
        by_name: dict[str, AdapterInfo] = {}
        for info in infos.values():
            other = by_name.setdefault(info.name, info)
            if other.origins != info.origins:
                raise ShiftbenchError(
                    f"two adapters are named {info.name!r} in this run ({', '.join(other.origins)}"
                    f" and {', '.join(info.origins)}); rename one (class attribute `name`)")
        stored = {c["adapter"]: c.get("origin") for c in self.store.cells(self.suite.name)}
        for name, info in by_name.items():
            origin = "+".join(info.origins)
            if stored.get(name, origin) not in (origin, None):
                raise ShiftbenchError(
                    f"{self.config.results} already holds {self.suite.name} cells of an adapter "
                    f"named {name!r} from {stored[name]}, and this one comes from {origin}; "
                    "rename one (class attribute `name`) or use another --results folder")
        return infos

    def close(self) -> None:
        self.process.close()

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

    def training_target(self, info: AdapterInfo, domain: str) -> str | None:
        """The target whose unlabeled data a ``da`` adapter trains with for this cell: the
        cell's own; for the source-domain row, the first target of the run."""
        if not info.setting.startswith("da"):
            return None
        return self.targets[0] if domain == self.suite.source else domain

    def checkpoint_identity(self, info: AdapterInfo, seed: int,
                            target: str | None = None) -> dict[str, Any]:
        """What decides a trained source model. It names the source *data*, not the suite,
        so suites sharing a source domain and recipe (digits, digits-c) share checkpoints."""
        if self.config.source_checkpoint is not None:
            return {"user_weights": self.provisioner.user_weights()[1],
                    "architecture": info.architecture}
        if self.source_model is not None:
            return {**self.source_model.identity(), "architecture": info.architecture}
        identity: dict[str, Any] = {
            "source_data": self.suite.source_fingerprint(),
            "num_classes": self.suite.num_classes,
            "recipe": self.suite.recipe.as_dict(),
            "torch": torch.__version__,
            "architecture": info.architecture,
            "training": info.training_signature,
            # an edited training-time adapter trains a new model (its cells re-run anyway)
            **({"training_code": info.training_code} if info.changes_training else {}),
            "seed": seed,
            **self._threads(),
        }
        if target is not None:
            if target not in self._target_digests:
                self._target_digests[target] = self.suite.split_fingerprint(target, "train")
            identity["target"] = {"domain": target, "data": self._target_digests[target]}
        return identity

    def _threads(self) -> dict[str, int]:
        """Part of an identity when it is not the default (1 thread): CPU numbers computed
        with another thread count are other numbers."""
        if self.device.type == "cuda" or self.config.threads == 1:
            return {}
        return {"threads": self.config.threads}

    def plan_jobs(self) -> list[Job]:
        jobs = []
        for seed in self.config.seeds:
            for spec in self.config.adapters:
                info = self.infos[spec]
                for name in self.config.protocols:
                    protocol = get_protocol(name)
                    params = protocol.params(seed, self.targets)
                    for requested in self.config.batch_sizes:
                        bs = self.batch_size(requested)
                        cells = [self._plan_cell(spec, info, seed, name, params, bs, d)
                                 for d in (self.suite.source, *self.targets)]
                        job = [spec, info.label, seed, name, params, bs]
                        jobs.append(Job(*job, (cells[0],)))  # the source row: its own episode
                        jobs += [Job(*job, episode)
                                 for episode in protocol.episodes(tuple(cells[1:]))]
        return jobs

    def plan(self) -> list[PlannedCell]:
        return [cell for job in self.plan_jobs() for cell in job.cells]

    def _plan_cell(self, spec: AdapterSpec, info: AdapterInfo, seed: int, protocol: str,
                   params: dict[str, Any], batch_size: int, domain: str) -> PlannedCell:
        checkpoint = stable_hash(self.checkpoint_identity(
            info, seed, self.training_target(info, domain)))
        identity = {
            **self._suite_signature(),
            "checkpoint": checkpoint,
            "adapter": info.name,
            "hparams": info.hparams,
            "adapter_code": info.code_hash,
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
        from benchmark.engine.launchers import launch

        summary = RunSummary()
        jobs = self.plan_jobs()
        total = sum(len(job.cells) for job in jobs)
        pending = []
        for job in jobs:
            if self.job_is_done(job):
                summary.skipped += len(job.cells)
            else:
                pending.append(job)
        if pending and hasattr(self.process, "start"):
            self.process.start()  # it imports torch while this process trains or loads
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
            self.close()
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
                        self.suite.name, record["key"], _failure_header(record)
                        + record["traceback"]))
                self.store.save_cell(record)
            return records

    def _base_record(self, info: AdapterInfo, job: Job, cell: PlannedCell) -> dict[str, Any]:
        return {
            "key": cell.key,
            "suite": self.suite.name,
            "adapter": info.name,
            "label": info.label,
            "hparams": info.hparams,
            "adapter_code": cell.identity["adapter_code"],
            "setting": info.setting,
            "origin": "+".join(info.origins),
            "protocol": job.protocol,
            "protocol_params": cell.identity["protocol_params"],
            "batch_size": job.batch_size,
            "seed": cell.seed,
            "domain": cell.domain,
            "role": cell.role,
            "metric": self.suite.metric,
            "higher_is_better": True,
            "isolation": self.process.mode,
            "data_fingerprint": self.suite.fingerprint(),
            "recipe": self.suite.recipe.as_dict(),
            "suite_signature": stable_hash(self._suite_signature()),
            "versions": versions(),
            "device": describe_device(self.device),
        }

    def _run_job(self, job: Job, position: int = 0) -> list[dict[str, Any]]:
        info = self.infos[job.spec]
        records = [self._base_record(info, job, cell) for cell in job.cells]
        try:
            target = self.training_target(info, job.cells[0].domain)
            identity = self.checkpoint_identity(info, job.seed, target)
            state, checkpoint = self.provisioner.state(
                job.spec, info.changes_training, identity, job.seed, target, position)
            for record in records:
                record["checkpoint"] = checkpoint
            results, _ = self.evaluate(info, state, job)
            for record, result in zip(records, results, strict=True):
                record.update(result)
                record["status"] = "done"
        except Exception as exc:  # a failing adapter is a failed cell, never a crashed run
            details = getattr(exc, "details", "")
            for record in records:
                record.update(status="failed", error=error_line(exc),
                              traceback=(details + "\n" if details else "")
                              + traceback.format_exc())
        finished = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        for record in records:
            record["finished_at"] = finished
        release_free_memory()  # the job's images and logits: back to the system
        return records

    # ---- evaluation ------------------------------------------------------------------
    def evaluate(self, info: AdapterInfo, state: dict[str, torch.Tensor], job: Job,
                 probe_reset: bool = False, keep_logits: bool = False, fresh: bool = False
                 ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """A job through the one evaluation function (benchmark.engine.evaluate).
        ``check`` also asks for the logits (``keep_logits``: per cell, in dataset order),
        a reset probe, and a new adapter process (``fresh``)."""
        if fresh and hasattr(self.process, "discard"):
            self.process.discard(job.spec)
        protocol = get_protocol(job.protocol)
        factors = self.suite.target_factors()
        cells = [CellPlan(c.domain, c.role, self.suite.load(c.domain, "test"),
                          self.targets.index(c.domain) if c.role == "target" else -1,
                          factors.get(c.domain, {}))
                 for c in job.cells]
        scoring = Scoring.for_job(cells, protocol, job.params, job.batch_size,
                                  info.batch_key, self.suite.make_metric, keep_logits)
        if info.source_images:
            scoring.serve_source(self.suite.load(self.suite.source, "train").images,
                                 info.source_images, job.seed, job.batch_size,
                                 {"role": "source", "domain": self.suite.source})
        seed_everything(job.seed)
        model = self.build_model()
        task = AdapterTask(spec=job.spec, imports=self.imports, model=model,
                           rng_state=torch.get_rng_state(), state=state,
                           device=str(self.device), threads=self.config.threads,
                           seed=job.seed, streams=[], suite_task=self.suite.task,
                           num_classes=self.suite.num_classes, probe_reset=probe_reset,
                           online=protocol.online and job.cells[0].role == "target")
        results, side = evaluate_job(task, scoring, self.process, self.config.cell_timeout)
        side["source_images_served"] = scoring.source_served
        if keep_logits:
            for result, logits in zip(results, scoring.kept or [], strict=True):
                result["logits"] = logits
            if probe_reset:
                side["replay_logits"] = scoring.replay_logits_in_order()
        return results, side


def _built_in(spec: AdapterSpec) -> bool:
    from benchmark.plugins import adapter_origin

    part: AdapterSpec | None = spec
    while part is not None:
        if part.file or part.name not in ADAPTERS \
                or adapter_origin(ADAPTERS.get(part.name)) != "built-in":
            return False
        part = part.then
    return True


def error_line(exc: BaseException) -> str:
    """One line for a failed cell: the adapter side's own error (with the hook and the
    place in the adapter's code) or the scoring side's."""
    if isinstance(exc, AdapterProcessError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _failure_header(record: dict[str, Any]) -> str:
    return (f"# suite {record['suite']}, adapter {record['label']}, protocol "
            f"{record['protocol']}, batch size {record['batch_size']}, seed {record['seed']}, "
            f"domain {record['domain']}, cell {record['key']}\n"
            f"# {record['error']}\n\n")
