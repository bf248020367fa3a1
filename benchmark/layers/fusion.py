"""Per-modality embedding normalization before fusion, shared by CDN and SBN (Cross-Domain
Normalization; see adapters/cdn.py)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class ScaledEmbeddingNorm(nn.Module):
    """``s * norm(e)``: a normalized embedding of one modality times a learned scalar scale.

    ``norm`` has no affine parameters of its own, so the scale is the only thing that sets the
    modality's output variance: s**2 (LayerNorm: over each sample's features; BatchNorm1d in
    training: over the batch, per feature).
    """

    def __init__(self, norm: nn.Module, scale: float, learn_scale: bool = True) -> None:
        super().__init__()
        self.norm = norm
        self.scale = nn.Parameter(torch.tensor(float(scale)), requires_grad=learn_scale)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.scale * self.norm(embedding)


def install_fusion_norms(model: nn.Module, method: str, make_norm: Any,
                         scales: tuple[float, ...], learn_scales: bool) -> nn.Module:
    """Replace ``model.fusion_norm[m]`` of a two-modality model (two_stream_resnet) by
    ``ScaledEmbeddingNorm(make_norm(dim), scales[i])`` for its i-th modality ``m``."""
    fusion = getattr(model, "fusion_norm", None)
    modalities = getattr(model, "modalities", None)
    if not isinstance(fusion, nn.ModuleDict) or modalities is None:
        raise ValueError(f"{method} normalizes each modality's embedding before fusion; it "
                         "needs a two-modality model with fusion_norm (arch two_stream_resnet)")
    if len(modalities) != len(scales):
        raise ValueError(f"{method} has {len(scales)} scales for {len(modalities)} modalities")
    for m, scale in zip(modalities, scales, strict=True):
        dim = model.projection[m].out_features
        fusion[m] = ScaledEmbeddingNorm(make_norm(dim), scale, learn_scales)
    return model
