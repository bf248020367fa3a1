"""Modality BN -- Wenkang Li, Ke Qi, Wenbin Chen, Yicong Zhou. "Bridging the Distribution Gap
of Visible-Infrared Person Re-identification with Modality Batch Normalization", 2021
(arXiv:2103.04778); summarized in Lei Huang's CVPR 2021 tutorial
"Normalization Techniques in Deep Learning: Methods, Analyses and Applications"."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.adapter import Adapter
from benchmark.registry import ADAPTERS


class ModalityBatchNorm2d(nn.Module):
    """BatchNorm over a batch that stacks ``num_modalities`` equal chunks along dim 0 (one
    chunk per modality, as a shared two-modality trunk sees it): each chunk is normalized
    with its own modality's statistics -- batch statistics in training, that modality's
    running statistics (buffers ``modality_mean`` / ``modality_var``, (M, C)) in eval mode;
    one affine (weight, bias) is shared by all modalities.

    Deliberately not a ``_BatchNorm`` subclass: BN-statistics methods (AdaBN, Tent) would
    rewrite ``running_mean``, which this layer does not use, and silently change nothing;
    they now report that the model has no BatchNorm layer instead.
    """

    def __init__(self, num_features: int, num_modalities: int, eps: float = 1e-5,
                 momentum: float = 0.1) -> None:
        super().__init__()
        self.num_features, self.num_modalities = num_features, num_modalities
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("modality_mean", torch.zeros(num_modalities, num_features))
        self.register_buffer("modality_var", torch.ones(num_modalities, num_features))

    @classmethod
    def from_batchnorm(cls, bn: nn.BatchNorm2d, num_modalities: int) -> ModalityBatchNorm2d:
        if not (bn.affine and bn.track_running_stats):
            raise ValueError("modality BN converts BatchNorm2d layers with affine parameters "
                             "and running statistics")
        layer = cls(bn.num_features, num_modalities, bn.eps,
                    0.1 if bn.momentum is None else bn.momentum)
        with torch.no_grad():
            layer.weight.copy_(bn.weight)
            layer.bias.copy_(bn.bias)
            layer.modality_mean.copy_(bn.running_mean.expand(num_modalities, -1))
            layer.modality_var.copy_(bn.running_var.expand(num_modalities, -1))
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) % self.num_modalities:
            raise ValueError(f"modality BN expects {self.num_modalities} equal modality chunks "
                             f"stacked along the batch, got a batch of {len(x)}")
        outs = []
        for m, chunk in enumerate(x.chunk(self.num_modalities)):
            # Rows of the buffers are views: in training F.batch_norm updates them in place.
            outs.append(F.batch_norm(chunk, self.modality_mean[m], self.modality_var[m],
                                     self.weight, self.bias, self.training, self.momentum,
                                     self.eps))
        return torch.cat(outs)


def convert_to_modality_bn(module: nn.Module, num_modalities: int) -> nn.Module:
    """Replace every BatchNorm2d below ``module`` (in place) by a ModalityBatchNorm2d."""
    if type(module) is nn.BatchNorm2d:
        return ModalityBatchNorm2d.from_batchnorm(module, num_modalities)
    for name, child in module.named_children():
        setattr(module, name, convert_to_modality_bn(child, num_modalities))
    return module


@ADAPTERS.register("modality_bn")
class ModalityBN(Adapter):
    """Modality BN: per-modality BN statistics, shared affine, in a shared trunk (Li et al.).

    In a network whose shared backbone sees the images of both modalities (RGB and
    thermal/infrared) in one mini-batch, plain BN normalizes every image with the statistics
    of the mixed batch, which sit between the two modalities' distributions. Modality BN
    splits each mini-batch into its per-modality sub-batches and normalizes each with its
    own statistics (training: the sub-batch's; test: that modality's running statistics),
    keeping one gamma, beta per layer. Applied to every BatchNorm2d of the shared trunk of
    ``two_stream_resnet`` (``model.trunks["shared"]``), which stacks the modalities along
    the batch.

    Trains: the whole network, with per-modality statistics in the trunk. Adapts: nothing at
    test time. Resets: the model state of attach time.
    """

    setting = "dg"
    changes_training = True
    requires = frozenset({"modalities"})
    tasks = frozenset({"classification"})

    def prepare(self, model: nn.Module) -> nn.Module:
        modalities = getattr(model, "modalities", None)
        trunks = getattr(model, "trunks", None)
        if modalities is None or not isinstance(trunks, nn.ModuleDict):
            raise ValueError("modality_bn needs a two-modality model with a trunk shared by "
                             "the modalities (arch two_stream_resnet)")
        if "shared" not in trunks:
            raise ValueError("modality_bn: this model has one trunk per modality, whose BN is "
                             "already per-modality; use two_stream_resnet(shared_trunk=True)")
        convert_to_modality_bn(trunks["shared"], len(modalities))
        return model
