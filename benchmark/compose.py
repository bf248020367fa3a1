"""Composing a training-time adapter with a test-time one: ``ibn_a+tent``, ``dsbn+adabn``.

The rule, defined once here and nowhere per pair: the *first* part owns training (its
``prepare``, ``extra_loss``, ``set_context``, ``target_loss``, ``finish_training``,
``batch_key`` and training signature, so ``ibn_a`` and ``ibn_a+tent`` share one
checkpoint), the *second* part owns test time (``setup``, ``adapt``, ``predict``). At test
time the first part still sees the context first (DSBN picks its target branch), then the
second part adapts the resulting model. The second part must not change training.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from benchmark.adapter import Adapter, TargetStream, TrainingImages


class Composite(Adapter):
    """A training-time adapter followed by a test-time adapter (see the module docstring)."""

    def __init__(self, train_part: Adapter, test_part: Adapter) -> None:
        if test_part.changes_training:
            raise ValueError(
                f"in {train_part.name}+{test_part.name}: the second part must be a test-time "
                f"adapter, but {test_part.name!r} changes training"
            )
        super().__init__()
        self.train_part, self.test_part = train_part, test_part
        self.name = f"{train_part.name}+{test_part.name}"  # type: ignore[misc]
        self.hparams = {train_part.name: train_part.hparams, test_part.name: test_part.hparams}
        self.changes_training = train_part.changes_training  # type: ignore[misc]
        self.batch_key = train_part.batch_key  # type: ignore[misc]
        self.owns_training_loss = train_part.owns_training_loss  # type: ignore[misc]
        self.requires = train_part.requires | test_part.requires  # type: ignore[misc]
        self.tasks = train_part.tasks & test_part.tasks  # type: ignore[misc]
        # e.g. "dg+tta": trained on source only, then adapted at test time.
        self.setting = (  # type: ignore[misc]
            f"{train_part.setting}+{test_part.setting}" if train_part.changes_training
            else test_part.setting
        )

    def bind(self, task: str, num_classes: int, total_steps: int | None = None) -> None:
        super().bind(task, num_classes, total_steps)
        self.train_part.bind(task, num_classes, total_steps)
        self.test_part.bind(task, num_classes, total_steps)

    def source_image_count(self) -> int:
        return self.test_part.source_image_count()

    # ---- training: the first part ----------------------------------------------------
    def prepare(self, model: nn.Module) -> nn.Module:
        return self.train_part.prepare(model)

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        return self.train_part.extra_loss(model)

    def training_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                      x_target: torch.Tensor | None, step: int) -> torch.Tensor:
        return self.train_part.training_loss(model, x, y, x_target, step)

    def target_loss(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
        return self.train_part.target_loss(model, x)

    def finish_training(self, model: nn.Module, data: TrainingImages) -> None:
        self.train_part.finish_training(model, data)

    def training_signature(self) -> dict[str, Any] | None:
        return self.train_part.training_signature()

    # ---- test time: context to both, adaptation by the second part --------------------
    def set_context(self, model: nn.Module, context: Mapping[str, Any]) -> None:
        self.train_part.set_context(model, context)
        self.test_part.set_context(model, context)

    def attach(self, model: nn.Module) -> None:
        self.model = model
        self.train_part.model = model
        self.test_part.attach(model)

    def use_source(self, stream: TargetStream) -> None:
        self.test_part.use_source(stream)

    def adapt(self, stream: TargetStream) -> None:
        self.test_part.adapt(stream)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.test_part.predict(x)

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        return self.test_part.infer(x)

    def reset(self) -> None:
        self.test_part.reset()

    def code_hash(self) -> str:
        both = self.train_part.code_hash() + self.test_part.code_hash()
        return hashlib.sha256(both.encode()).hexdigest()

    def label(self) -> str:
        return f"{self.train_part.label()}+{self.test_part.label()}"
