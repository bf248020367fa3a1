"""Provisioning: the trained source model a job starts from.

From memory, from the checkpoint store (verified against the sha256 recorded when it was
written; a mismatch is reported in one line and the model retrained), from the user's
``--source-checkpoint`` file, from a published model named with ``--source-model``
(benchmark.source_models), or trained now and stored. The plain source model (no adapter
hook involved) trains in the runner's process; a model trained with an adapter's hooks
(``prepare``, ``extra_loss``, ``target_loss``, ...) trains in an adapter process, which
gets the labelled *source* training split and, for ``da``, the target's training images
without labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmark.engine.evaluate import Imports, TrainTask, train_with_adapter
from benchmark.provenance import versions
from benchmark.store import ResultStore, file_sha256, stable_hash
from benchmark.suite import Suite
from benchmark.training import seed_everything

State = dict[str, torch.Tensor]


@dataclass
class Provisioner:
    suite: Suite
    store: ResultStore
    process: Any  # where adapter hooks run (benchmark.engine.isolation)
    imports: Imports
    device: torch.device
    threads: int
    progress: bool = True
    user_checkpoint: Path | None = None
    source_model: Any = None  # benchmark.source_models.SourceModel: a published model

    def __post_init__(self) -> None:
        self._states: dict[str, tuple[State, dict[str, Any]]] = {}
        self._errors: dict[str, Exception] = {}  # a training that failed fails its cells
        self._user: tuple[State, str] | None = None

    def user_weights(self) -> tuple[State, str]:
        if self._user is None:
            from benchmark.weights import load_state_dict_file

            path = Path(self.user_checkpoint)  # type: ignore[arg-type]
            self._user = (load_state_dict_file(path), file_sha256(path))
        return self._user

    def state(self, spec: Any, changes_training: bool, identity: dict[str, Any], seed: int,
              target: str | None, position: int = 0) -> tuple[State, dict[str, Any]]:
        """The trained model for a checkpoint identity, and what to record about it."""
        key = stable_hash(identity)
        if key in self._states:
            return self._states[key]
        if key in self._errors:
            raise self._errors[key]
        try:
            if self.user_checkpoint is not None:
                state, digest = self.user_weights()
                info = {"key": key, "trained_now": False, "file": str(self.user_checkpoint),
                        "sha256": digest}
            elif self.source_model is not None:
                state = self.source_model.state()
                info = {"key": key, "trained_now": False,
                        "source_model": self.source_model.text,
                        "file": str(self.source_model.weights_file()),
                        "sha256": self.source_model.identity()["weights_sha256"]}
            else:
                # One process trains, concurrent ones wait and then load its file.
                with self.store.lock(self.store.checkpoint_path(key)):
                    state, info = self._load_or_train(spec if changes_training else None,
                                                      identity, key, seed, target, position)
        except Exception as exc:
            self._errors[key] = exc
            raise
        self._states[key] = (state, info)
        return state, info

    def _load_or_train(self, spec: Any, identity: dict[str, Any], key: str, seed: int,
                       target: str | None, position: int) -> tuple[State, dict[str, Any]]:
        state = self.store.load_checkpoint(key)
        info: dict[str, Any] = {"key": key, "trained_now": state is None}
        if state is None:
            info["training"], state = self._train(spec, seed, target, position)
            meta = {"identity": stable_hash(identity), "seed": str(seed),
                    "source": self.suite.source, **{k: str(v) for k, v in versions().items()}}
            self.store.save_checkpoint(key, state, meta)
        info["sha256"] = self.store.checkpoint_digest(key)
        return state, info

    def _train(self, spec: Any, seed: int, target: str | None, position: int
               ) -> tuple[dict[str, Any], State]:
        seed_everything(seed)
        model = self.suite.build_model()
        unlabeled = None
        if target is not None:  # images only: target labels never reach training
            unlabeled = (target, self.suite.load(target, "train").images)
        task = TrainTask(
            spec=spec, imports=self.imports, model=model, rng_state=torch.get_rng_state(),
            source=self.suite.load(self.suite.source, "train"), target=unlabeled,
            recipe=self.suite.recipe, seed=seed, device=str(self.device), threads=self.threads,
            progress=self.progress, position=position, suite_task=self.suite.task,
            num_classes=self.suite.num_classes, description=f"train {self.suite.source} seed={seed}"
                        + (f" +{target}" if target else ""))
        if spec is None:  # the plain source model: no adapter code runs, so train here
            return train_with_adapter(task)
        return self.process.run("train", task)
