"""Instance whitening layers and losses shared by IW, IRW and ISW -- Choi, Jung, Yun, Kim, Kim,
Choo, "RobustNet: Improving Domain Generalization in Urban-Scene Segmentation via Instance
Selective Whitening", CVPR 2021 (arXiv:2103.15597)."""

from __future__ import annotations

import torch
from torch import nn

from benchmark.adapter import Adapter
from benchmark.layers.surgery import (
    add_norm_after_addition,
    batchnorm_channels,
    block_output_channels,
    get_module,
    last_block_path,
    set_module,
    stem_norm_path,
)


# ---- the layer and the loss ----------------------------------------------------------------
class InstanceWhitening(nn.Module):
    """Instance standardization (IN without affine, as RobustNet's ``InstanceWhitening``)
    whose output is kept for the whitening loss: ``features`` holds the last training-mode
    output; in eval mode outputs are appended to ``captured`` when that is a list.

    ``mask`` (C x C, 0/1, a buffer so it is saved with the checkpoint) marks the covariance
    entries the loss pushes to zero; it starts as the strict upper triangle (all off-diagonal
    pairs, IW) and ISW replaces it by its selected entries.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.standardize = nn.InstanceNorm2d(channels, affine=False)
        self.register_buffer("mask", torch.ones(channels, channels).triu(diagonal=1))
        self.features: torch.Tensor | None = None
        self.captured: list[torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.standardize(x)
        if self.training:
            self.features = out
        elif self.captured is not None:
            self.captured.append(out.detach())
        return out


def covariance(features: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-instance channel covariance of IN-standardized features (zero mean per channel):
    ``Sigma = F F^T / (HW - 1) + eps I`` with F the C x HW matrix; returns B x C x C."""
    b, c, h, w = features.shape
    f = features.reshape(b, c, h * w)
    eye = torch.eye(c, dtype=f.dtype, device=f.device)
    return torch.bmm(f, f.transpose(1, 2)) / (h * w - 1) + eps * eye


def whitening_loss(features: torch.Tensor, mask: torch.Tensor, margin: float = 0.0,
                   eps: float = 1e-5) -> torch.Tensor:
    """RobustNet's per-layer loss: mean over the batch of
    ``max(0, (sum |Sigma * M| - margin) / |M|)``, |M| the number of masked entries."""
    count = mask.sum()
    if count == 0:  # nothing selected: no constraint
        return features.new_zeros(())
    off = (covariance(features, eps) * mask).abs().sum((1, 2))
    return ((off - margin) / count).clamp_min(0).mean()


def whitening_layers(model: nn.Module) -> list[InstanceWhitening]:
    return [m for m in model.modules() if isinstance(m, InstanceWhitening)]


def release_features(layers: list[InstanceWhitening]) -> None:
    """Drop the stored features once used: they hold the step's autograd graph (and a
    non-leaf tensor would make the model impossible to deep-copy)."""
    for layer in layers:
        layer.features = None


def to_instance_whitening(model: nn.Module, stages: tuple[int, ...] = (1, 2)) -> nn.Module:
    """RobustNet's placement (``--wt_layer 0 0 w w w 0 0``): instance whitening instead of the
    stem BN, and after the residual addition of the last block of stages 1 and 2 (before
    the ReLU) -- the positions of IBN-Net-b, with IN without affine."""
    path = stem_norm_path(model)
    set_module(model, path, InstanceWhitening(batchnorm_channels(get_module(model, path),
                                                                 path)))
    for stage in stages:
        block = get_module(model, last_block_path(model, stage))
        add_norm_after_addition(block, InstanceWhitening(block_output_channels(block)))
    return model


class WhiteningAdapter(Adapter):
    """Shared by IW, IRW and ISW: the surgery and the loss ``weight * mean over layers``
    (RobustNet averages the per-layer losses, ``wt_loss / len(w_arr)``)."""

    setting = "dg"
    changes_training = True

    def prepare(self, model: nn.Module) -> nn.Module:
        return to_instance_whitening(model)

    def margin(self, layer: InstanceWhitening) -> float:
        return 0.0

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        layers = whitening_layers(model)
        if not layers or any(layer.features is None for layer in layers):
            raise RuntimeError(f"{self.name}: no whitening features; was prepare() applied "
                               "and the model run forward in train mode?")
        losses = [whitening_loss(layer.features, layer.mask, self.margin(layer),
                                 float(self.hparams["eps"])) for layer in layers]
        release_features(layers)
        return float(self.hparams["weight"]) * torch.stack(losses).mean()
