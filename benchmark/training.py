"""Source-model training from a suite's recipe, with the adapter's training hooks."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from benchmark.adapter import Adapter
from benchmark.layers.augment import random_shift
from benchmark.metrics import IGNORE_INDEX
from benchmark.suite import DomainData, Recipe


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), Python's ``random`` and NumPy's global generator."""
    seed_python_and_numpy(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def seed_python_and_numpy(seed: int) -> None:
    """Python's ``random`` and NumPy's global generator: an adapter drawing from them is as
    reproducible as one drawing from torch's."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)


def _augment(x: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    if kind == "none":
        return x
    if kind == "shift":  # random translation by up to 2 px (pad with zeros, crop back)
        return random_shift(x, 2, generator)
    raise ValueError(f"unknown augmentation {kind!r}")


def _optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum,
                               weight_decay=recipe.weight_decay, nesterov=recipe.momentum > 0)
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    raise ValueError(f"unknown optimizer {recipe.optimizer!r}")


def _scheduler(optimizer: torch.optim.Optimizer, schedule: str, total: int
               ) -> torch.optim.lr_scheduler.LRScheduler | None:
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total)
    if schedule == "inv":  # step s (from 0) trains at progress (s + 1) / total, as SHOT's
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: (1 + 10 * (step + 1) / total) ** -0.75)
    if schedule == "constant":
        return None
    raise ValueError(f"unknown schedule {schedule!r}")


def _batches(
    data: DomainData, batch_size: int, batch_key: str | None, generator: torch.Generator
) -> list[torch.Tensor]:
    """One epoch of index batches: a shuffled split of everything, or, with a ``batch_key``,
    shuffled batches each drawn from a single value of that side-information field."""
    if batch_key is None:
        order = torch.randperm(len(data), generator=generator)
        return list(order.split(batch_size))
    if batch_key not in data.extra:
        raise ValueError(f"the adapter needs single-{batch_key!r} batches, but the source "
                         f"data has no {batch_key!r} field (has {sorted(data.extra)})")
    values = data.extra[batch_key]
    batches: list[torch.Tensor] = []
    for value in values.unique():
        members = (values == value).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        batches += list(members.split(batch_size))
    shuffle = torch.randperm(len(batches), generator=generator)
    return [batches[i] for i in shuffle]


def training_steps(data: DomainData, recipe: Recipe, batch_key: str | None, seed: int) -> int:
    """How many optimizer steps :func:`train_source` takes (``Adapter.total_steps``)."""
    if batch_key is not None and batch_key not in data.extra:
        return 0  # train_source reports the missing field
    generator = torch.Generator().manual_seed(seed)
    per_epoch = len(_batches(data, recipe.batch_size, batch_key, generator))
    return recipe.epochs * per_epoch


class _UnlabeledBatches:
    """Endless shuffled batches of unlabeled target images (``da`` training)."""

    def __init__(self, images: torch.Tensor, batch_size: int, generator: torch.Generator):
        self.images, self.batch_size, self.generator = images, batch_size, generator
        self._pending: list[torch.Tensor] = []

    def next(self) -> torch.Tensor:
        if not self._pending:
            order = torch.randperm(len(self.images), generator=self.generator)
            self._pending = list(order.split(self.batch_size))
        return self.images[self._pending.pop(0)]


class _TrainingImages:
    """What ``Adapter.finish_training`` gets: the last epoch's source batches and the
    target training images, un-augmented, without labels."""

    def __init__(self, data: DomainData, batches: list[torch.Tensor],
                 target: tuple[str, torch.Tensor] | None, batch_size: int,
                 device: torch.device) -> None:
        self._data, self._batches, self._target = data, batches, target
        self._batch_size, self._device = batch_size, device

    def source(self) -> Iterator[tuple[torch.Tensor, dict[str, Any]]]:
        for index in self._batches:
            context = {"role": "source", **{k: v[index] for k, v in self._data.extra.items()}}
            yield self._data.images[index].to(self._device), context

    def target(self) -> Iterator[tuple[torch.Tensor, dict[str, Any]]]:
        if self._target is None:
            return
        domain, images = self._target
        for start in range(0, len(images), self._batch_size):
            batch = images[torch.arange(start, min(start + self._batch_size, len(images)))]
            yield batch.to(self._device), {"role": "target", "domain": domain}


def train_source(
    model: nn.Module,
    data: DomainData,
    recipe: Recipe,
    seed: int,
    adapter: Adapter,
    device: torch.device,
    progress: bool = True,
    description: str = "train",
    target: tuple[str, torch.Tensor] | None = None,
    position: int = 0,
) -> dict[str, Any]:
    """Train ``model`` (already passed through ``adapter.prepare``) on labelled source data.

    ``target`` is (domain name, unlabeled images) for the ``da`` setting: each step then
    also passes one target batch through ``adapter.target_loss``. Target labels are never
    given here. Deterministic for a seed on CPU: initialization was seeded by the caller,
    batch order and augmentation come from generators seeded here.
    """
    generator = torch.Generator().manual_seed(seed)
    target_batches = (
        _UnlabeledBatches(target[1], recipe.batch_size,
                          torch.Generator().manual_seed(seed + 7919))
        if target is not None else None
    )
    model.to(device).train()
    optimizer = _optimizer(model, recipe)
    epochs = [_batches(data, recipe.batch_size, adapter.batch_key, generator)]
    total = recipe.epochs * len(epochs[0])
    scheduler = _scheduler(optimizer, recipe.schedule, total)
    start = time.perf_counter()
    last_loss = math.nan
    bar = tqdm(total=total, desc=description, leave=False, disable=not progress, unit="step",
               position=position)
    step = 0
    for epoch in range(recipe.epochs):
        if epoch > 0:
            epochs.append(_batches(data, recipe.batch_size, adapter.batch_key, generator))
        for index in epochs[-1]:
            x = _augment(data.images[index], recipe.augment, generator).to(device)
            y = data.labels[index].to(device)
            adapter.set_context(model, {"role": "source",
                                        **{k: v[index] for k, v in data.extra.items()}})
            # (``generator`` draws only here, so the target batch is the same whichever
            # branch uses it, and the same as before the hook existed)
            x_target = None
            if target_batches is not None:
                x_target = _augment(target_batches.next(), recipe.augment, generator).to(device)
            if adapter.owns_training_loss:  # the adapter computes the step's whole loss
                loss = adapter.training_loss(model, x, y, x_target, step)
            else:
                # 255 marks unlabelled pixels in segmentation labels; no class uses it.
                loss = F.cross_entropy(model(x), y, ignore_index=IGNORE_INDEX,
                                       label_smoothing=recipe.label_smoothing)
                extra = adapter.extra_loss(model)
                if extra is not None:
                    loss = loss + extra
                if x_target is not None and target is not None:
                    adapter.set_context(model, {"role": "target", "domain": target[0]})
                    target_loss = adapter.target_loss(model, x_target)
                    if target_loss is not None:
                        loss = loss + target_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            last_loss = loss.item()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{last_loss:.3f}", refresh=False)
    bar.close()
    if not math.isfinite(last_loss):
        raise FloatingPointError(f"source training diverged (final loss {last_loss})")
    with torch.no_grad():
        adapter.finish_training(model, _TrainingImages(data, epochs[-1], target,
                                                       recipe.batch_size, device))
    model.eval()
    return {"train_s": time.perf_counter() - start, "final_loss": last_loss, "steps": total}
