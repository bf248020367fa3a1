"""Helpers for finding and switching normalization layers, shared by adapters.

Layers are matched by base class (``_BatchNorm`` covers BatchNorm1d/2d/3d and SyncBatchNorm),
not by a single concrete type, so converted or subclassed BN layers are found too.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def batchnorm_layers(model: nn.Module) -> list[_BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


def require_batchnorm(model: nn.Module, method: str) -> list[_BatchNorm]:
    layers = batchnorm_layers(model)
    if not layers:
        raise ValueError(
            f"{method} adapts BatchNorm layers, but the model has none; "
            "use a suite whose architecture has BatchNorm"
        )
    return layers


def normalize_with_batch_statistics(model: nn.Module) -> None:
    """Eval mode everywhere, except BN layers normalize with the current batch's statistics.

    BN in train mode with ``track_running_stats=False`` uses the batch's mean and variance
    and leaves the stored running statistics untouched (they stay in the state dict).
    Dropout and other layers stay in eval mode.
    """
    model.eval()
    for bn in batchnorm_layers(model):
        bn.train()
        bn.track_running_stats = False


def estimate_statistics(model: nn.Module, layers: Sequence[nn.Module],
                        batches: Iterable[torch.Tensor]) -> None:
    """AdaBN's estimator (Li et al. 2016, Algorithm 1): set each layer's ``running_mean`` and
    ``running_var`` to the mean and unbiased variance of its inputs over *all* the batches.

    One no-grad pass; a forward pre-hook accumulates per-channel sums in float64, so the
    result is the statistics of the whole set, exact whatever the batch size -- not the
    average of per-batch statistics that ``momentum=None`` gives. During the pass the model
    is in eval mode except ``layers``, which normalize with each batch's statistics (as in
    training) without updating their running ones. A layer the pass does not reach (an
    inactive branch) keeps its statistics. Leaves the model in eval mode.
    """
    sums: dict[nn.Module, list] = {}

    def accumulate(layer: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0].detach().double()
        dims = [d for d in range(x.ndim) if d != 1]  # all but the channel dimension
        acc = sums.setdefault(layer, [0, 0.0, 0.0])
        acc[0] += x.numel() // x.shape[1]
        acc[1] = acc[1] + x.sum(dims)
        acc[2] = acc[2] + (x * x).sum(dims)

    handles = [layer.register_forward_pre_hook(accumulate) for layer in layers]
    tracking = [layer.track_running_stats for layer in layers]
    model.eval()
    for layer in layers:
        layer.train()
        layer.track_running_stats = False
    try:
        with torch.no_grad():
            for x in batches:
                model(x)
    finally:
        for handle in handles:
            handle.remove()
        for layer, track in zip(layers, tracking, strict=True):
            layer.track_running_stats = track
        model.eval()
    with torch.no_grad():
        for layer, (count, total, total_sq) in sums.items():
            mean = total / count
            var = (total_sq - count * mean * mean) / max(count - 1, 1)
            layer.running_mean.copy_(mean.to(layer.running_mean.dtype))
            layer.running_var.copy_(var.clamp_min(0).to(layer.running_var.dtype))


@contextmanager
def source_target_split(layers: Sequence[nn.Module], n_source: int) -> Iterator[None]:
    """Inside the block, layers with per-domain statistics (``split`` attribute: TransNorm,
    DWT) normalize the first ``n_source`` images of a forward pass as source and the rest as
    target, each with its own batch statistics; afterwards ``domain`` selects again."""
    for layer in layers:
        layer.split = n_source
    try:
        yield
    finally:
        for layer in layers:
            layer.split = None


def select_role(layers: Iterable[nn.Module], context: Mapping[str, Any]) -> None:
    """Source/target-statistics layers (``domain`` attribute) follow the context's role:
    target cells use the target's statistics, everything else the source's."""
    domain = "target" if context.get("role") == "target" else "source"
    for layer in layers:
        layer.domain = domain
