"""Source-model training from a suite's recipe, with the adapter's training hooks."""

from __future__ import annotations

import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from benchmark.adapter import Adapter
from benchmark.metrics import IGNORE_INDEX
from benchmark.suite import DomainData, Recipe


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def _augment(x: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    if kind == "none":
        return x
    if kind == "shift":  # random translation by up to 2 px (pad with zeros, crop back)
        n, _, h, w = x.shape
        padded = F.pad(x, (2, 2, 2, 2))
        dy = torch.randint(0, 5, (n,), generator=generator)
        dx = torch.randint(0, 5, (n,), generator=generator)
        rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :]
        batch = torch.arange(n)[:, None, None, None]
        chan = torch.arange(x.shape[1])[None, :, None, None]
        return padded[batch, chan, rows, cols]
    raise ValueError(f"unknown augmentation {kind!r}")


def _optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum,
                               weight_decay=recipe.weight_decay, nesterov=recipe.momentum > 0)
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    raise ValueError(f"unknown optimizer {recipe.optimizer!r}")


def train_source(
    model: nn.Module,
    data: DomainData,
    recipe: Recipe,
    seed: int,
    adapter: Adapter,
    device: torch.device,
    progress: bool = True,
    description: str = "train",
) -> dict[str, Any]:
    """Train ``model`` (already passed through ``adapter.prepare``) on labelled source data.

    Deterministic for a seed on CPU: initialization was seeded by the caller, batch order
    and augmentation come from a generator seeded here.
    """
    generator = torch.Generator().manual_seed(seed)
    model.to(device).train()
    optimizer = _optimizer(model, recipe)
    steps_per_epoch = math.ceil(len(data) / recipe.batch_size)
    total = recipe.epochs * steps_per_epoch
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total)
        if recipe.schedule == "cosine" else None
    )
    start = time.perf_counter()
    last_loss = math.nan
    bar = tqdm(total=total, desc=description, leave=False, disable=not progress, unit="step")
    for _ in range(recipe.epochs):
        order = torch.randperm(len(data), generator=generator)
        for i in range(steps_per_epoch):
            index = order[i * recipe.batch_size : (i + 1) * recipe.batch_size]
            x = _augment(data.images[index], recipe.augment, generator).to(device)
            y = data.labels[index].to(device)
            # 255 marks unlabelled pixels in segmentation labels; no class uses it.
            loss = F.cross_entropy(model(x), y, ignore_index=IGNORE_INDEX)
            extra = adapter.extra_loss(model)
            if extra is not None:
                loss = loss + extra
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            last_loss = loss.item()
            bar.update(1)
            bar.set_postfix(loss=f"{last_loss:.3f}", refresh=False)
    bar.close()
    if not math.isfinite(last_loss):
        raise FloatingPointError(f"source training diverged (final loss {last_loss})")
    model.eval()
    return {"train_s": time.perf_counter() - start, "final_loss": last_loss, "steps": total}
