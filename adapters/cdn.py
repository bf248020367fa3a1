"""Cross-Domain Normalization (CDN) -- "Cross Domain Normalization: NLP In the Visual World",
LogMeIn AI blog, parts 1-3, March-April 2019 (part 3; work done with Michael
Elhadad, Ben-Gurion University; the post does not name its author)."""

from __future__ import annotations

from torch import nn

from benchmark.adapter import Adapter
from benchmark.layers.fusion import install_fusion_norms
from benchmark.registry import ADAPTERS


@ADAPTERS.register("cdn")
class CDN(Adapter):
    """CDN: LayerNorm each modality's embedding, then scale it by a learned per-modality s.

    Part 3 of the blog: in a model that fuses two domains (there language and image; here RGB
    and thermal), scaling the outputs of the two projection layers, x' = s_x x, y' = s_y y,
    is equivalent to scaling their parameters, and the ratio s_x / s_y sets how strongly each
    domain's updates move the other. CDN normalizes each embedding with LayerNorm (variance
    1, so the scales alone set the two variances, s_x**2 and s_y**2) and multiplies it by
    its scale, initialized a priori and learned with the rest. The blog's values (s_image
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
