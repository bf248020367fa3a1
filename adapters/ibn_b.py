"""IBN-Net-b -- Pan, Luo, Shi, Tang. "Two at Once: Enhancing Learning and Generalization
Capacities via IBN-Net", ECCV 2018 (arXiv:1807.09441)."""

from __future__ import annotations

from torch import nn

from benchmark.adapter import Adapter
from benchmark.layers.surgery import (
    add_norm_after_addition,
    batchnorm_channels,
    block_output_channels,
    copy_batchnorm_channels,
    get_module,
    last_block_path,
    set_module,
    stem_norm_path,
)
from benchmark.registry import ADAPTERS


def to_ibn_b(model: nn.Module, stages: tuple[int, ...] = (1, 2)) -> nn.Module:
    """IBN-b surgery: IN (affine) instead of the stem BN, and IN (affine) after the residual
    addition of the last block of each of ``stages``."""
    path = stem_norm_path(model)
    bn = get_module(model, path)
    stem_in = nn.InstanceNorm2d(batchnorm_channels(bn, path), eps=bn.eps, affine=True)
    copy_batchnorm_channels(bn, stem_in)  # affine only: IN keeps no running statistics
    set_module(model, path, stem_in)
    for stage in stages:
        block = get_module(model, last_block_path(model, stage))
        add_norm_after_addition(block, nn.InstanceNorm2d(block_output_channels(block),
                                                         affine=True))
    return model


@ADAPTERS.register("ibn_b")
class IBNNetB(Adapter):
    """IBN-Net-b: IN after the stem conv and after stages 1 and 2 (Pan et al.).

    Paper Sec. 3.2 / reference ``resnet_ibn.py`` (``ibn_cfg=('b', 'b', None, None)``):
    the stem's BN becomes InstanceNorm with affine parameters (``bn1 = IN(64, affine)``), and
    the last block of stages 1 and 2 computes ``relu(IN(F(x) + x))`` -- IN (affine) on the
    residual sum, before the ReLU (the other blocks of those stages are unchanged). All
    other BN layers stay. IN on the stem and on stage outputs removes appearance variation
    from the features that reach the rest of the network.

    Trains: the whole network with the IN layers, on labelled source data (plain recipe).
    Adapts: nothing at test time. Resets: nothing to reset.
    """

    setting = "dg"
    changes_training = True

    def prepare(self, model: nn.Module) -> nn.Module:
        return to_ibn_b(model)
