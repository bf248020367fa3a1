"""Cross-Domain Normalization (CDN) -- "Cross Domain Normalization: NLP In the Visual World",
LogMeIn AI blog, parts 1-3, March-April 2019 (seed 000: part 3; work done with Michael
Elhadad, Ben-Gurion University; the author's name is not in the seed)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from benchmark.adapter import Adapter
from benchmark.registry import ADAPTERS


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


@ADAPTERS.register("cdn")
class CDN(Adapter):
    """CDN: LayerNorm each modality's embedding, then scale it by a learned per-modality s.

    Seed 000 (part 3): in a model that fuses two domains (there language and image; here RGB
    and thermal), scaling the outputs of the two projection layers, x' = s_x x, y' = s_y y,
    is equivalent to scaling their parameters, and the ratio s_x / s_y sets how strongly each
    domain's updates move the other. CDN normalizes each embedding with LayerNorm (variance
    1, so the scales alone set the two variances, s_x**2 and s_y**2) and multiplies it by
    its scale, initialized a priori and learned with the rest. The seed's values (s_image
    43.5, s_lang 6.25) are for projections of very different sizes (c = 4101 / 200); when
    both have the same size (c ~ 1, as in ``two_stream_resnet``) it notes equal variances may
    suffice, hence the defaults s_x = s_y = 1. LayerNorm has no affine of its own here.

    Trains: the whole network plus s_x, s_y (``learn_scales``). Adapts: nothing at test time.
    Resets: the model state of attach time.
    """

    defaults = {"scale_x": 1.0, "scale_y": 1.0, "learn_scales": True}
    setting = "dg"
    changes_training = True
    requires = frozenset({"modalities"})
    tasks = frozenset({"classification"})

    def prepare(self, model: nn.Module) -> nn.Module:
        return install_fusion_norms(
            model, "cdn", lambda dim: nn.LayerNorm(dim, elementwise_affine=False),
            (float(self.hparams["scale_x"]), float(self.hparams["scale_y"])),
            bool(self.hparams["learn_scales"]),
        )
