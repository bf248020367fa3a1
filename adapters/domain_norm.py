"""Domain Normalization -- Zhang, Qi, Yang, Prisacariu, Wah, Torr. "Domain-invariant Stereo
Matching Networks", ECCV 2020 (arXiv:1911.13287)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.adapter import Adapter
from benchmark.layers.norm import require_batchnorm
from benchmark.layers.surgery import replace_modules, stage_path, stem_norm_path
from benchmark.registry import ADAPTERS


class DomainNorm2d(nn.Module):
    """``y = gamma * l2_c(IN(x)) + beta``, the paper's domain normalization layer.

    IN: each image's channel is standardized over its positions (no affine, no running
    statistics), removing image-level style. l2_c: at each position the C-vector of
    standardized features is divided by its Euclidean norm, so every position carries a
    unit-norm feature: local contrast and intensity differences between domains are
    removed too. gamma, beta: a learned affine per channel (initialized to 1 and 0, as in
    the authors' code). Train and test compute the same thing: no statistics are kept.
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.instance_norm(x, eps=self.eps)
        # unit L2 norm over channels at each position: x / max(||x||, 1e-12), as
        # F.normalize, written as one reciprocal square root times x (fewer passes)
        inverse_norm = x.square().sum(1, keepdim=True).clamp_min(1e-24).rsqrt()
        return torch.addcmul(self.bias.view(1, -1, 1, 1), x * inverse_norm,
                             self.weight.view(1, -1, 1, 1))


def to_domain_norm(model: nn.Module, last_stage: int = 2) -> nn.Module:
    """The stem's BN and every 2-d BN of stages 1..``last_stage`` become
    :class:`DomainNorm2d` of the same width; ``last_stage=-1``: every 2-d BN of the model."""
    require_batchnorm(model, "Domain Normalization")
    if last_stage < 0:
        paths = [name for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    else:
        prefixes = [stage_path(model, s) + "." for s in range(1, last_stage + 1)]
        paths = list(dict.fromkeys([stem_norm_path(model)] + [  # (the WRN's stem BN is in stage 1)
            name for name, m in model.named_modules()
            if isinstance(m, nn.BatchNorm2d) and name.startswith(tuple(prefixes))]))
    return replace_modules(model, paths, lambda bn: DomainNorm2d(bn.num_features, bn.eps))


@ADAPTERS.register("domain_norm")
class DomainNormalization(Adapter):
    """Domain Normalization: the feature extractor's BN replaced by IN + per-position L2 norm.

    The paper builds DSMNet, a stereo matching network, and normalizes its feature
    extraction layers with domain normalization so that features learned on synthetic data
    keep their meaning on real images. Stereo matching itself is out of scope here:
    shiftbench applies the same layer swap to the suites' classification and segmentation
    ResNets, trained on the source domain and tested on unseen targets (the
    domain-generalization use the paper argues for, not its stereo results).

    Where: the stem's BN and every BN of stages 1..``last_stage`` (default 2, the shallow
    feature-extraction part, the same depth IBN-Net-b normalizes); the deeper, more
    semantic layers keep BN. ``last_stage=-1`` swaps every BN of the network, which on a
    classifier fails even in-domain: IN zeroes each channel's spatial mean, which is what
    global average pooling reads, and the unit-norm features bound the logits (digits,
    3 seeds: 39.9% on the source domain's own test split, prediction entropy 2.30 nats,
    i.e. near-uniform outputs).

    Trains: the whole network with the swapped layers, on labelled source data (the
    suite's recipe). Adapts: nothing at test time (the layer has no statistics to adapt).
    Resets: nothing to reset.
    """

    defaults = {"last_stage": 2}
    setting = "dg"
    changes_training = True

    def prepare(self, model: nn.Module) -> nn.Module:
        return to_domain_norm(model, int(self.hparams["last_stage"]))
