"""Building blocks shared by test-time adaptation methods: which parameters adapt, the
optimizer, the classifier head and its input features, entropy-based sample selection and
mean-teacher updates. Each method file composes these with its own equations."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.layers.norm import normalize_with_batch_statistics, require_batchnorm
from benchmark.layers.surgery import SurgeryError, stage_path


def entropy_margin(num_classes: int | None, fraction: float) -> float:
    """``fraction * ln C``: the entropy below which a prediction counts as reliable (EATA's
    and SAR's E0 = 0.4 ln C, DeYO's 0.5 ln C)."""
    if not num_classes or num_classes < 2:
        raise ValueError(f"an entropy margin needs the class count (>= 2), got {num_classes}")
    return fraction * math.log(num_classes)


def adapt_batchnorm_affine(model: nn.Module, method: str,
                           exclude: Sequence[str] = ()) -> list[nn.Parameter]:
    """Tent's configuration (Wang et al. 2021): BN layers normalize with each test batch's
    statistics, and only BN's affine gamma and beta are trainable; everything else frozen.
    Layers whose path starts with one of ``exclude`` keep batch statistics but stay
    frozen (SAR does not update the top stage). Returns the trainable parameters."""
    layers = set(require_batchnorm(model, method))
    normalize_with_batch_statistics(model)
    model.requires_grad_(False)
    params: list[nn.Parameter] = []
    for name, layer in model.named_modules():
        if layer not in layers:
            continue
        if any(name == p or name.startswith(p + ".") for p in exclude):
            continue
        if getattr(layer, "affine", False):
            layer.requires_grad_(True)
            params += [layer.weight, layer.bias]
    if not params:
        raise ValueError(f"{method} needs BN layers with affine parameters (affine=True)")
    return params


def top_stage(model: nn.Module) -> list[str]:
    """The path of a ResNet's last stage (``layer4`` in a ResNet-50, ``layer3`` in the
    small ones), or nothing when the model has no ResNet stages."""
    last = None
    for stage in range(1, 5):
        try:
            last = stage_path(model, stage)
        except (SurgeryError, AttributeError):
            break
    return [last] if last else []


def make_optimizer(params: list[nn.Parameter], hparams: Mapping[str, Any]
                   ) -> torch.optim.Optimizer:
    """``optimizer`` "adam" (lr, beta1, weight_decay) or "sgd" (lr, momentum,
    weight_decay), the two every method here uses."""
    kind = hparams["optimizer"]
    if kind == "adam":
        return torch.optim.Adam(params, lr=hparams["lr"], betas=(hparams["beta1"], 0.999),
                                weight_decay=hparams["weight_decay"])
    if kind == "sgd":
        return torch.optim.SGD(params, lr=hparams["lr"], momentum=hparams["momentum"],
                               weight_decay=hparams["weight_decay"])
    raise ValueError(f"optimizer must be 'adam' or 'sgd', got {kind!r}")


def classifier_head(model: nn.Module) -> nn.Linear:
    """The model's last linear layer: the classifier on top of the pooled features."""
    heads = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not heads:
        raise ValueError(f"{type(model).__name__} has no linear classifier head")
    return heads[-1]


def features_and_logits(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass returning (the features entering the classifier head, logits)."""
    captured: list[torch.Tensor] = []
    handle = classifier_head(model).register_forward_pre_hook(
        lambda _m, inputs: captured.append(inputs[0]))
    try:
        logits = model(x)
    finally:
        handle.remove()
    return captured[-1], logits


def reliable_and_diverse(logits: torch.Tensor, margin: float, d_margin: float,
                         moving: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """EATA's sample selection (Niu et al. 2022, Eqs. 6 and 8): a sample is kept when its
    entropy is below ``margin`` (reliable) and the cosine similarity of its softmax to the
    moving average of earlier kept predictions is below ``d_margin`` in absolute value (not
    redundant; every reliable sample passes while there is no average yet). Returns the mask
    and the updated average: 0.9 * average + 0.1 * mean of the kept softmaxes (their mean,
    the first time; unchanged when nothing was kept)."""
    probs = logits.softmax(1).detach()
    entropy = -(probs * logits.log_softmax(1).detach()).sum(1)
    keep = entropy < margin
    if moving is not None:
        cosine = F.cosine_similarity(moving.unsqueeze(0), probs, dim=1)
        keep &= cosine.abs() < d_margin
    kept = probs[keep]
    if not len(kept):
        return keep, moving
    mean = kept.mean(0)
    return keep, mean if moving is None else 0.9 * moving + 0.1 * mean


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """Mean teacher: every floating-point parameter of ``teacher`` becomes
    ``momentum * teacher + (1 - momentum) * student``."""
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.copy_(momentum * t + (1 - momentum) * s.detach())  # the references' rounding


def eta_update(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
               margin: float, d_margin: float, moving: torch.Tensor | None,
               regularizer: Callable[[], torch.Tensor] | None = None
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One ETA step (Niu et al. 2022, Eq. 9 without and Eq. 10 with ``regularizer``): the
    mean over the selected samples (:func:`reliable_and_diverse`) of their entropy weighted
    by ``1 / exp(entropy - margin)``, plus ``regularizer`` (EATA's Fisher penalty, a
    function of the parameters); one optimizer step unless no sample was selected.
    Returns the logits of the forward pass before the step and the updated average."""
    with torch.enable_grad():
        logits = model(x)
        keep, moving = reliable_and_diverse(logits, margin, d_margin, moving)
        if keep.any():
            entropy = -(logits.softmax(1) * logits.log_softmax(1)).sum(1)[keep]
            weight = 1 / torch.exp(entropy.detach() - margin)  # S(x), Eq. 9
            loss = (entropy * weight).mean()
            if regularizer is not None:
                loss = loss + regularizer()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return logits.detach(), moving
