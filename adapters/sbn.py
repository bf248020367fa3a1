"""Scaled Batch Normalization (SBN), the BatchNorm variant of Cross-Domain Normalization --
"Cross Domain Normalization: NLP In the Visual World", LogMeIn AI blog, part 3, April 2019."""

from __future__ import annotations

from torch import nn

from benchmark.adapter import Adapter
from benchmark.layers.fusion import install_fusion_norms
from benchmark.registry import ADAPTERS


@ADAPTERS.register("sbn")
class SBN(Adapter):
    """SBN: BatchNorm each modality's embedding, then scale it by a learned per-modality s.

    Identical to CDN (see adapters/cdn.py) except that each embedding is normalized with
    BatchNorm1d (no affine of its own; batch statistics in training, running statistics at
    test time) instead of LayerNorm: each modality's output has variance s**2 per feature
    over the batch. The blog reports s_image = 1000, s_lang = 13.16 for SBN on its grounding
    model (projections of very different sizes); the two projections of
    ``two_stream_resnet`` have the same size, hence the defaults s_x = s_y = 1.

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
            model, "sbn", lambda dim: nn.BatchNorm1d(dim, affine=False),
            (float(self.hparams["scale_x"]), float(self.hparams["scale_y"])),
            bool(self.hparams["learn_scales"]),
        )
