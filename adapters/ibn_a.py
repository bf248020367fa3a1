"""IBN-Net-a -- Pan, Luo, Shi, Tang. "Two at Once: Enhancing Learning and Generalization
Capacities via IBN-Net", ECCV 2018 (arXiv:1807.09441)."""

from __future__ import annotations

import torch
from torch import nn

from benchmark.adapter import Adapter
from benchmark.layers.surgery import (
    batchnorm_channels,
    copy_batchnorm_channels,
    first_norm_paths,
    get_module,
    set_module,
)
from benchmark.registry import ADAPTERS


class InstanceBatchNorm2d(nn.Module):
    """IBN layer: the first ``floor(C * in_ratio)`` channels go through InstanceNorm (with
    affine), the rest through BatchNorm; outputs are concatenated in channel order.

    Submodule names ``IN`` and ``BN`` and the rounding (``int(C * ratio)`` IN channels, first
    half) follow the IBN-Net reference, so its state-dict keys match.
    """

    def __init__(self, channels: int, in_ratio: float = 0.5, eps: float = 1e-5,
                 momentum: float | None = 0.1) -> None:
        super().__init__()
        self.half = int(channels * in_ratio)
        if not 0 < self.half < channels:
            raise ValueError(f"IBN needs 0 < C*in_ratio < C, got C={channels}, "
                             f"in_ratio={in_ratio}")
        self.IN = nn.InstanceNorm2d(self.half, eps=eps, affine=True)
        self.BN = nn.BatchNorm2d(channels - self.half, eps=eps, momentum=momentum)

    @classmethod
    def from_batchnorm(cls, bn: nn.Module, in_ratio: float = 0.5) -> InstanceBatchNorm2d:
        """Replace ``bn`` (keeping its values: a pretrained BN hands its affine parameters and
        statistics to the matching channels)."""
        ibn = cls(batchnorm_channels(bn, "the IBN position"), in_ratio, bn.eps, bn.momentum)
        copy_batchnorm_channels(bn, ibn.IN, slice(0, ibn.half))
        copy_batchnorm_channels(bn, ibn.BN, slice(ibn.half, None))
        return ibn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.IN(x[:, : self.half].contiguous()),
                          self.BN(x[:, self.half :].contiguous())], 1)


def to_ibn_a(model: nn.Module, in_ratio: float = 0.5, stages: tuple[int, ...] = (1, 2, 3)
             ) -> nn.Module:
    """IBN-a surgery: the first BN of every block of ``stages`` becomes an IBN layer."""
    for path in first_norm_paths(model, stages):
        set_module(model, path, InstanceBatchNorm2d.from_batchnorm(get_module(model, path),
                                                                   in_ratio))
    return model


@ADAPTERS.register("ibn_a")
class IBNNetA(Adapter):
    """IBN-Net-a: half instance norm in the first BN of every block of stages 1-3 (Pan et al.).

    Paper Sec. 3.2 / reference ``resnet_ibn.py`` (``ibn_cfg=('a', 'a', 'a', None)``): in each
    residual block of stages 1-3, the BN after the first conv becomes IBN -- for C channels,
    channels [0, int(C/2)) are instance-normalized (with affine gamma, beta), channels
    [int(C/2), C) batch-normalized; the last stage (layer4), the stem and every other BN stay
    BN. IN removes per-image appearance (contrast, colour) from shallow features, BN keeps
    content discrimination. Same for basic blocks (reference ``resnet18_ibn_a``).

    ``stages`` = n puts IBN in stages 1..n (3 as in the paper). On ``SmallResNet`` and
    WideResNet (three stages) the default covers all stages, the last one included, which
    the paper's ResNets keep BN-only; ``stages=2`` keeps that last-stage rule instead. A
    pretrained BN hands its values to the channels that replace it.

    Trains: the whole network with IBN layers, on labelled source data (plain recipe).
    Adapts: nothing at test time (IN uses each test image's own statistics, which is the
    point). Resets: nothing to reset.
    """

    defaults = {"in_ratio": 0.5, "stages": 3}
    setting = "dg"
    changes_training = True

    def prepare(self, model: nn.Module) -> nn.Module:
        stages = tuple(range(1, int(self.hparams["stages"]) + 1))
        return to_ibn_a(model, float(self.hparams["in_ratio"]), stages)
