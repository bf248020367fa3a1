"""DSBN -- Chang, You, Seo, Kwak, Han. "Domain-Specific Batch Normalization for Unsupervised
Domain Adaptation", CVPR 2019 (arXiv:1906.03950)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from benchmark.adapter import Adapter, TrainingImages
from benchmark.layers.losses import softmax_entropy
from benchmark.layers.norm import estimate_statistics, require_batchnorm
from benchmark.layers.surgery import replace_modules
from benchmark.registry import ADAPTERS

DOMAINS = ("source", "target")


class DomainSpecificBatchNorm(_BatchNorm):
    """One BN per domain, each with its own running statistics *and* gamma, beta.

    The layer itself is the source branch: it keeps the replaced BN's parameter and buffer
    names, so a plain source checkpoint still loads into it. ``target`` is the target
    branch, initialized as a copy of the replaced BN (a pretrained BN initializes both).
    ``active`` (set by :meth:`select`) picks the branch every forward uses.
    """

    def __init__(self, bn: _BatchNorm) -> None:
        super().__init__(bn.num_features, bn.eps, bn.momentum, bn.affine,
                         bn.track_running_stats)
        self.load_state_dict(bn.state_dict())
        self.target = _copy_bn(bn)
        self.active = "source"

    def select(self, domain: str) -> None:
        if domain not in DOMAINS:
            raise ValueError(f"DSBN has branches {DOMAINS}, not {domain!r}")
        self.active = domain

    def branch(self, domain: str) -> _BatchNorm:
        return self if domain == "source" else self.target

    def _check_input_dim(self, input: torch.Tensor) -> None:
        self.target._check_input_dim(input)  # same kind of BN (1d/2d/3d) as the replaced one

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.active == "target":
            return self.target(x)
        return super().forward(x)


def _copy_bn(bn: _BatchNorm) -> _BatchNorm:
    twin = type(bn)(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    twin.load_state_dict(bn.state_dict())
    return twin


def dsbn_layers(model: nn.Module) -> list[DomainSpecificBatchNorm]:
    return [m for m in model.modules() if isinstance(m, DomainSpecificBatchNorm)]


def to_dsbn(model: nn.Module) -> nn.Module:
    """Every BN (matched by base class) becomes a :class:`DomainSpecificBatchNorm`."""
    require_batchnorm(model, "DSBN")
    paths = [n for n, m in model.named_modules() if isinstance(m, _BatchNorm)
             and not isinstance(m, DomainSpecificBatchNorm)]
    return replace_modules(model, paths, DomainSpecificBatchNorm)


def select_domain(model: nn.Module, domain: str) -> None:
    for layer in dsbn_layers(model):
        layer.select(domain)


@ADAPTERS.register("dsbn")
class DSBN(Adapter):
    """DSBN: a separate BN (statistics and affine) per domain, every other weight shared.

    Paper Sec. 3: each BN layer becomes ``DSBN_d(x) = gamma_d (x - mu_d) / sigma_d + beta_d``
    with d in {source, target}; training batches are single-domain, a labelled source batch
    goes through the source branches, an unlabeled target batch through the target
    branches; at inference target images use the target branches.

    The plain form (``target_objective="none"``, the default) trains on labelled source data
    and lets the target branches learn the target statistics; their gamma, beta get no
    gradient and keep their initial values (those of the BN they replaced). Where those
    statistics come from (``target_statistics``): ``"running"`` passes one unlabeled target
    batch per step through the target branches (the paper's training loop; the target
    branches' running averages follow the changing weights); ``"final"`` (default) passes
    the target training images through them once after the last step, with the final
    weights, and sets their statistics to those of all these images (AdaBN's estimator).
    Nothing else differs (the source branch and shared weights are identical in both), and
    since no gradient flows through the target branch in the plain form, "final" is what the
    running average approaches as the learning rate anneals -- without the extra forward per
    step (+38% training time on digits). With a target objective the target batches are needed
    every step, so "running" is always used. The paper always pairs DSBN with a target
    loss (MSTN/CPUA in its stage 1, pseudo-label self-training in stage 2); two simple
    ones are options: ``"entropy"`` (mean prediction entropy) and ``"pseudo_label"``
    (cross-entropy on the target branch's own predictions above ``threshold``), each times
    ``target_weight``.

    Context: ``role`` "source" selects the source branches, "target" the target ones --
    in training before each batch, at test time per evaluated domain (the source row is
    scored with the source branches).

    Trains: all weights on labelled source data; target-branch BN statistics (and, with a
    target objective, target-branch gamma/beta) on unlabeled target training images.
    Adapts: nothing at test time beyond selecting the branch. Resets: nothing to reset.
    """

    defaults = {"target_objective": "none", "target_weight": 0.1, "threshold": 0.9,
                "target_statistics": "final"}
    setting = "da"
    changes_training = True

    def prepare(self, model: nn.Module) -> nn.Module:
        if self.hparams["target_objective"] not in ("none", "entropy", "pseudo_label"):
            raise ValueError("DSBN target_objective must be 'none', 'entropy' or "
                             f"'pseudo_label', got {self.hparams['target_objective']!r}")
        if self.hparams["target_statistics"] not in ("final", "running"):
            raise ValueError("DSBN target_statistics must be 'final' or 'running', got "
                             f"{self.hparams['target_statistics']!r}")
        return to_dsbn(model)

    def _final_statistics(self) -> bool:
        return (self.hparams["target_objective"] == "none"
                and self.hparams["target_statistics"] == "final")

    def set_context(self, model: nn.Module, context: Mapping[str, Any]) -> None:
        role = context.get("role", "source")
        select_domain(model, "target" if role == "target" else "source")

    def target_loss(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
        objective = self.hparams["target_objective"]
        if self._final_statistics():
            return None  # estimated once in finish_training
        if objective == "none":
            with torch.no_grad():  # train-mode forward: target-branch statistics only
                model(x)
            return None
        logits = model(x)
        if objective == "entropy":
            loss = softmax_entropy(logits).mean()
        else:
            probs = logits.detach().softmax(1)
            confidence, labels = probs.max(1)
            keep = confidence >= float(self.hparams["threshold"])
            loss = (F.cross_entropy(logits, labels, reduction="none") * keep).sum()
            loss = loss / keep.sum().clamp_min(1)
        return float(self.hparams["target_weight"]) * loss

    def finish_training(self, model: nn.Module, data: TrainingImages) -> None:
        if not self._final_statistics():
            return
        select_domain(model, "target")
        estimate_statistics(model, [layer.branch("target") for layer in dsbn_layers(model)],
                            (images for images, _ in data.target()))
        select_domain(model, "source")
