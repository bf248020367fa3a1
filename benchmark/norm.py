"""Helpers for finding and switching normalization layers, shared by adapters.

Layers are matched by base class (``_BatchNorm`` covers BatchNorm1d/2d/3d and SyncBatchNorm),
not by a single concrete type, so converted or subclassed BN layers are found too.
"""

from __future__ import annotations

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
