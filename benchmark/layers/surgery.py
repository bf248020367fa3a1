"""Model surgery for training-time adapters: find normalization layers by *position* in a
ResNet and replace them, or add a normalization after a block's residual addition.

Positions (the vocabulary of IBN-Net and RobustNet), for every ResNet-shaped model here:

- every BN layer                          :func:`batchnorm_paths`
- the stem's norm layer                   :func:`stem_norm_path`
- the first norm of each block of stage k :func:`first_norm_paths` (``layerk.<i>.bn1``)
- "after stage k"                         :func:`last_block_path`, the stage's last block;
                                          :func:`add_norm_after_addition` puts a layer
                                          between its residual sum and its final ReLU

A ResNet body is the model itself when it has ``layer1``.. (``SmallResNet``, torchvision's
``ResNet``), else ``model.backbone`` (``small_segnet``, ``deeplabv3_resnet50``; see
``benchmark.layers.models.SURGERY_POINTS``); stage k is ``layerk``. Post-activation blocks are
torchvision's ``BasicBlock``/``Bottleneck`` or ``benchmark.layers.models.BasicBlock``: they share
the attribute names ``conv1, bn1, conv2, bn2, (conv3, bn3), relu, downsample``, which is
what the post-addition forward relies on.

WideResNet (``benchmark.layers.models.WideResNet``, pre-activation, stage k is ``blockk.layer``)
maps onto the same positions by what each BN normalizes: its stem conv has no BN of its
own, the BN applied to the stem conv's output is ``block1.layer.0.bn1``; "the norm after a
block's first conv" is ``bn2`` (``bn1`` normalizes the block's input, shared with the
shortcut); a pre-activation block has no ReLU after its sum, so the norm after the addition
normalizes the block's output.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class SurgeryError(ValueError):
    """The model does not have the ResNet structure a surgery needs."""


# ---- paths ---------------------------------------------------------------------------
def get_module(model: nn.Module, path: str) -> nn.Module:
    return model.get_submodule(path) if path else model


def set_module(model: nn.Module, path: str, new: nn.Module) -> None:
    """Put ``new`` at ``path`` (dotted module name), replacing what is there."""
    parent_path, _, name = path.rpartition(".")
    parent = get_module(model, parent_path)
    if isinstance(parent, (nn.Sequential, nn.ModuleList)) and name.isdigit():
        parent[int(name)] = new
    else:
        setattr(parent, name, new)


def batchnorm_paths(model: nn.Module) -> list[str]:
    """Names of every BN layer (matched by base class), in module order."""
    return [name for name, m in model.named_modules() if isinstance(m, _BatchNorm)]


def resnet_body_path(model: nn.Module) -> str:
    """Where the ResNet stages live: "" (the model) or "backbone"."""
    for prefix in ("", "backbone"):
        try:
            body = get_module(model, prefix)
        except AttributeError:
            continue
        if hasattr(body, "layer1") and hasattr(body, "layer2"):
            return prefix
        if _is_wide_resnet(body):
            return prefix
    raise SurgeryError(
        f"{type(model).__name__} is not a ResNet-shaped model (no layer1/layer2 or "
        "block1.layer/block2.layer, neither on the model nor on model.backbone); this "
        "normalization surgery needs one"
    )


def _is_wide_resnet(body: nn.Module) -> bool:
    return all(hasattr(getattr(body, f"block{k}", None), "layer") for k in (1, 2))


def _is_preactivation(block: nn.Module) -> bool:
    return hasattr(block, "convShortcut")  # WideBasicBlock


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def stage_path(model: nn.Module, stage: int) -> str:
    body = resnet_body_path(model)
    wide = _is_wide_resnet(get_module(model, body))
    path = _join(body, f"block{stage}.layer" if wide else f"layer{stage}")
    try:
        get_module(model, path)
    except AttributeError:
        raise SurgeryError(f"{type(model).__name__} has no stage {stage} ({path})") from None
    return path


def stem_norm_path(model: nn.Module) -> str:
    """The norm layer right after the stem conv: ``bn1`` (torchvision), the first BN of
    ``stem`` (SmallResNet), or the first block's ``bn1`` (pre-activation WideResNet)."""
    body = resnet_body_path(model)
    root = get_module(model, body)
    if _is_wide_resnet(root):
        return _join(body, "block1.layer.0.bn1")
    if isinstance(getattr(root, "bn1", None), _BatchNorm):
        return _join(body, "bn1")
    stem = getattr(root, "stem", None)
    if stem is not None:
        for name, m in stem.named_modules():
            if isinstance(m, _BatchNorm):
                return _join(body, "stem", name)
    raise SurgeryError(f"{type(model).__name__}: no stem BN (expected bn1 or a BN in stem)")


def blocks(model: nn.Module, stage: int) -> list[str]:
    """Paths of the residual blocks of one stage, in order."""
    path = stage_path(model, stage)
    return [_join(path, name) for name, _ in get_module(model, path).named_children()]


def first_norm_paths(model: nn.Module, stages: Iterable[int] = (1, 2, 3)) -> list[str]:
    """The norm after the first conv of every block of the given stages (IBN-a's positions):
    ``bn1``, or ``bn2`` in pre-activation blocks."""
    paths = []
    for stage in stages:
        for block in blocks(model, stage):
            pre = _is_preactivation(get_module(model, block))
            paths.append(_join(block, "bn2" if pre else "bn1"))
    return paths


def last_block_path(model: nn.Module, stage: int) -> str:
    """The block whose output is the stage's output ("after stage k")."""
    return blocks(model, stage)[-1]


# ---- replacing -------------------------------------------------------------------------
def replace_modules(
    model: nn.Module, paths: Iterable[str], make: Callable[[nn.Module], nn.Module]
) -> nn.Module:
    """Replace the module at each path by ``make(old_module)``; returns the model."""
    for path in list(paths):
        set_module(model, path, make(get_module(model, path)))
    return model


def copy_batchnorm_channels(
    bn: _BatchNorm, into: nn.Module, channels: slice = slice(None)
) -> None:
    """Initialize a norm layer from some of a BN's channels: affine parameters always, running
    statistics when ``into`` keeps them. A pretrained BN thus hands its values on."""
    with torch.no_grad():
        if bn.affine and getattr(into, "weight", None) is not None:
            into.weight.copy_(bn.weight[channels].view_as(into.weight))
            into.bias.copy_(bn.bias[channels].view_as(into.bias))
        if bn.track_running_stats and getattr(into, "running_mean", None) is not None:
            into.running_mean.copy_(bn.running_mean[channels].view_as(into.running_mean))
            into.running_var.copy_(bn.running_var[channels].view_as(into.running_var))


def batchnorm_channels(module: nn.Module, where: str) -> int:
    if not isinstance(module, _BatchNorm):
        raise SurgeryError(f"expected a BatchNorm layer at {where}, found "
                           f"{type(module).__name__} (was the surgery applied twice?)")
    return module.num_features


# ---- a norm layer after the residual addition -------------------------------------------
class _NormAfterAddition:
    """Residual block forward with ``IN`` applied to the sum, before the final ReLU:
    ``relu(IN(F(x) + shortcut(x)))`` (IBN-b, RobustNet). The attribute name ``IN`` is the
    one IBN-Net uses, so state-dict keys match its checkpoints."""

    IN: nn.Module

    def forward(self: Any, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if hasattr(self, "conv3"):  # bottleneck: conv1-bn1-relu-conv2-bn2-relu-conv3-bn3
            out = self.bn3(self.conv3(self.relu(out)))
        return self.relu(self.IN(out + identity))


class _NormAfterPreActivationAddition:
    """Pre-activation block (no ReLU after the sum): ``IN(F(x) + shortcut(x))``."""

    IN: nn.Module

    def forward(self: Any, x: torch.Tensor) -> torch.Tensor:
        return self.IN(super().forward(x))  # type: ignore[misc]


_POST_NORM_CLASSES: dict[type, type] = {}

_BLOCK_ATTRS = ("conv1", "bn1", "conv2", "bn2", "relu", "downsample")


def add_norm_after_addition(block: nn.Module, norm: nn.Module) -> nn.Module:
    """Make ``block`` compute ``relu(norm(residual + shortcut))``. The block keeps its
    parameters and names (so source weights still load by name) and gains ``IN``; its class
    becomes a subclass of its own with the post-addition forward."""
    pre = _is_preactivation(block)
    missing = [a for a in _BLOCK_ATTRS if not hasattr(block, a)] if not pre else []
    if missing:
        raise SurgeryError(f"{type(block).__name__} is not a ResNet block (missing "
                           f"{', '.join(missing)}); cannot add a norm after its addition")
    if isinstance(block, (_NormAfterAddition, _NormAfterPreActivationAddition)):
        raise SurgeryError(f"{type(block).__name__} already has a norm after its addition")
    cls = type(block)
    if cls not in _POST_NORM_CLASSES:
        mixin = _NormAfterPreActivationAddition if pre else _NormAfterAddition
        _POST_NORM_CLASSES[cls] = type(f"{cls.__name__}NormAfterAdd", (mixin, cls), {})
    block.__class__ = _POST_NORM_CLASSES[cls]
    block.IN = norm
    return block


def block_output_channels(block: nn.Module) -> int:
    if _is_preactivation(block):
        return block.conv2.out_channels
    last_bn = block.bn3 if hasattr(block, "bn3") else block.bn2
    return batchnorm_channels(last_bn, type(block).__name__)
