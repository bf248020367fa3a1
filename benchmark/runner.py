"""The runner: plans cells, trains or loads source models, applies adapters, scores, stores.

A *cell* is one (suite, adapter + hyper-parameters, protocol, batch size, seed, domain).
Its key is a hash of everything that decides its number; a cell already stored as done is
never recomputed, so a re-run resumes where a killed run stopped. The runner knows no
adapter or suite by name: it gets classes from the registries and calls the protocol hooks.
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
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from benchmark import leaderboard
from benchmark.adapter import Adapter, TargetStream
from benchmark.errors import ShiftbenchError
from benchmark.provenance import describe_device, source_hash, versions
from benchmark.registry import ADAPTERS, SUITES
from benchmark.specs import AdapterSpec
from benchmark.store import ResultStore, file_sha256, stable_hash
from benchmark.suite import Suite
from benchmark.training import seed_everything, train_source

PROTOCOLS = ("episodic",)


@dataclass
class RunConfig:
    suite: str
    adapters: list[AdapterSpec]
    seeds: list[int]
    protocol: str = "episodic"
    batch_size: int | None = None  # None: the suite's eval batch size
    results: Path = Path("results")
    leaderboards: Path = Path("leaderboards")
    device: str = "cpu"
    data_root: Path | None = None
    download: bool = False
    progress: bool = True


@dataclass
class RunSummary:
    done: int = 0
    skipped: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    board: pd.DataFrame | None = None
    paths: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class PlannedCell:
    spec: AdapterSpec
    seed: int
    domain: str
    role: str  # "source" (the source domain's test split) or "target"
    key: str
    identity: dict[str, Any]


def applicable(adapter_cls: type[Adapter], suite_cls: type[Suite]) -> bool:
    """Whether an adapter can run on a suite: the suite's task, and what the adapter needs."""
    return suite_cls.task in adapter_cls.tasks and adapter_cls.requires <= suite_cls.provides


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
        if config.protocol not in PROTOCOLS:
            raise ShiftbenchError(
                f"unknown protocol {config.protocol!r}; known: {', '.join(PROTOCOLS)}"
            )
        self.config = config
        self.device = resolve_device(config.device)
        self.suite: Suite = SUITES.get(config.suite)(root=config.data_root,
                                                      download=config.download)
        self.store = ResultStore(config.results)
        self.batch_size = config.batch_size or self.suite.eval_batch_size
        for spec in config.adapters:
            cls = ADAPTERS.get(spec.name)
            if not applicable(cls, type(self.suite)):
                raise ShiftbenchError(
                    f"adapter {spec.name!r} does not apply to suite {self.suite.name!r} "
                    f"(needs task in {sorted(cls.tasks)} and {sorted(cls.requires)}; the suite "
                    f"is {self.suite.task} and provides {sorted(self.suite.provides)})"
                )
            spec.build()  # fail early on bad hyper-parameters
        self._states: dict[str, tuple[dict[str, torch.Tensor], dict[str, Any]]] = {}
        self._training_errors: dict[str, Exception] = {}  # fail its cells, don't retrain
        self._architectures: dict[tuple[type, str], str] = {}

    # ---- identities ------------------------------------------------------------------
    def _suite_signature(self) -> dict[str, Any]:
        return {
            "suite": self.suite.name,
            "data": self.suite.fingerprint(),
            "recipe": self.suite.recipe.as_dict(),
            "metric": self.suite.metric,
            "torch": torch.__version__,
        }

    def checkpoint_identity(self, adapter: Adapter, seed: int) -> dict[str, Any]:
        return {
            **self._suite_signature(),
            "architecture": self._architecture_hash(adapter),
            "training": adapter.training_signature(),
            "seed": seed,
        }

    def _architecture_hash(self, adapter: Adapter) -> str:
        """Hash of the prepared model's structure, built once per adapter configuration:
        building a model (e.g. DeepLabV3 with its backbone file) per cell would be wasted."""
        config = (type(adapter), stable_hash(adapter.hparams))
        if config not in self._architectures:
            model = adapter.prepare(self.suite.build_model())
            self._architectures[config] = stable_hash(repr(model))
        return self._architectures[config]

    def plan(self) -> list[PlannedCell]:
        cells = []
        for seed in self.config.seeds:
            for spec in self.config.adapters:
                adapter = spec.build()
                checkpoint_key = stable_hash(self.checkpoint_identity(adapter, seed))
                for domain in self.suite.domains:
                    identity = {
                        **self._suite_signature(),
                        "checkpoint": checkpoint_key,
                        "adapter": adapter.name,
                        "hparams": adapter.hparams,
                        "adapter_code": source_hash(type(adapter)),
                        "protocol": self.config.protocol,
                        "protocol_params": {},
                        "batch_size": self.batch_size,
                        "seed": seed,
                        "domain": domain,
                    }
                    role = "source" if domain == self.suite.source else "target"
                    cells.append(PlannedCell(spec, seed, domain, role, stable_hash(identity),
                                             identity))
        return cells

    # ---- running ---------------------------------------------------------------------
    def run(self) -> RunSummary:
        summary = RunSummary()
        planned = self.plan()
        bar = tqdm(total=len(planned), desc=f"{self.suite.name} cells", unit="cell",
                   disable=not self.config.progress)
        for cell in planned:
            bar.set_postfix_str(f"{cell.spec.name} seed={cell.seed} {cell.domain}", refresh=False)
            stored = self.store.load_cell(self.suite.name, cell.key)
            if stored is not None and stored["status"] == "done":
                summary.skipped += 1
            else:
                record = self._run_cell(cell)
                self.store.save_cell(record)
                if record["status"] == "done":
                    summary.done += 1
                else:
                    summary.failed += 1
                    summary.failures.append(
                        f"{record['label']} seed={cell.seed} {cell.domain}: {record['error']}"
                    )
            bar.update(1)
        bar.close()
        board, paths = leaderboard.write(
            self.suite, self.store, self.config.leaderboards,
            current_keys={c.key for c in planned},
            suite_signature=stable_hash(self._suite_signature()),
        )
        summary.board, summary.paths = board, paths
        return summary

    def _source_state(
        self, adapter: Adapter, seed: int
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The trained source model for this seed and training signature: from memory, from
        the checkpoint store, or trained now and stored."""
        identity = self.checkpoint_identity(adapter, seed)
        key = stable_hash(identity)
        if key in self._states:
            return self._states[key]
        if key in self._training_errors:
            raise self._training_errors[key]
        try:
            return self._load_or_train(adapter, seed, identity, key)
        except Exception as exc:
            self._training_errors[key] = exc
            raise

    def _load_or_train(
        self, adapter: Adapter, seed: int, identity: dict[str, Any], key: str
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        state = self.store.load_checkpoint(self.suite.name, key)
        info: dict[str, Any] = {"key": key, "trained_now": state is None}
        if state is None:
            trainer = adapter if adapter.changes_training else Adapter()
            seed_everything(seed)
            model = trainer.prepare(self.suite.build_model())
            info["training"] = train_source(
                model, self.suite.load(self.suite.source, "train"), self.suite.recipe, seed,
                trainer, self.device, progress=self.config.progress,
                description=f"train {self.suite.name} seed={seed}",
            )
            state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            meta = {"identity": stable_hash(identity), "seed": str(seed),
                    "suite": self.suite.name, **{k: str(v) for k, v in versions().items()}}
            self.store.save_checkpoint(self.suite.name, key, state, meta)
        info["sha256"] = file_sha256(self.store.checkpoint_path(self.suite.name, key))
        self._states[key] = (state, info)
        return state, info

    def _run_cell(self, cell: PlannedCell) -> dict[str, Any]:
        adapter = cell.spec.build()
        record: dict[str, Any] = {
            "key": cell.key,
            "suite": self.suite.name,
            "adapter": adapter.name,
            "label": adapter.label(),
            "hparams": adapter.hparams,
            "adapter_code": cell.identity["adapter_code"],
            "setting": adapter.setting,
            "protocol": self.config.protocol,
            "protocol_params": cell.identity["protocol_params"],
            "batch_size": self.batch_size,
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
        try:
            state, checkpoint = self._source_state(adapter, cell.seed)
            record["checkpoint"] = checkpoint
            record.update(self._evaluate(adapter, state, cell))
            record["status"] = "done"
        except Exception as exc:  # a failing adapter is a failed cell, never a crashed run
            record.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                          traceback=traceback.format_exc())
        record["finished_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        return record

    def _evaluate(
        self, adapter: Adapter, state: dict[str, torch.Tensor], cell: PlannedCell
    ) -> dict[str, Any]:
        seed_everything(cell.seed)
        model = adapter.prepare(self.suite.build_model())
        model.load_state_dict(state)
        model.to(self.device)
        data = self.suite.load(cell.domain, "test")
        stream = TargetStream(data.images, self.batch_size, device=self.device)
        metric = self.suite.make_metric()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

        elapsed = 0.0

        def timed(fn: Callable[..., Any], *args: Any) -> Any:
            nonlocal elapsed
            start = time.perf_counter()
            out = fn(*args)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            elapsed += time.perf_counter() - start
            return out

        timed(adapter.attach, model)
        timed(adapter.adapt, stream)
        offset = 0
        for x in stream:
            logits = timed(adapter.predict, x)
            if not isinstance(logits, torch.Tensor) or len(logits) != len(x):
                raise ValueError(
                    f"predict returned {type(logits).__name__} of length "
                    f"{len(logits) if hasattr(logits, '__len__') else '?'} for a batch of {len(x)}"
                )
            if not torch.isfinite(logits).all():
                raise FloatingPointError("adapter produced non-finite predictions (NaN/inf)")
            metric.update(logits, data.labels[offset : offset + len(x)])
            offset += len(x)
        results = metric.result()
        score = results.pop("score")
        if not math.isfinite(score):
            raise FloatingPointError(f"metric is {score}")
        return {
            "score": score,
            "metrics": results,
            "n_examples": stream.num_examples,
            "adapt_s": elapsed,
            "img_per_s": stream.num_examples / elapsed if elapsed > 0 else math.inf,
            "peak_mb": peak_memory_mb(self.device),
        }
