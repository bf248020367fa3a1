"""UnMix-TNS -- Tomar, Vray, Thiran, Bozorgtabar. "Un-Mixing Test-Time Normalization Statistics:
Combatting Label Temporal Correlation", ICLR 2024 (arXiv:2401.11419)."""

from __future__ import annotations

import torch
from torch import nn

from benchmark.adapter import Adapter
from benchmark.layers.robust_norm import to_unmix_tns
from benchmark.registry import ADAPTERS


@ADAPTERS.register("unmix_tns")
class UnMixTNS(Adapter):
    """UnMix-TNS: normalize each test instance with a mixture of K drifting statistics.

    Every BN layer becomes an :class:`~benchmark.layers.robust_norm.UnMixTNS2d`: K = 16
    components initialized around the source statistics (alpha 0.5); each instance is
    normalized with the components pulled toward its own statistics by its soft
    assignment (cosine similarity of means, temperature 0.07), and the components follow
    the instances assigned to them with a batch-size corrected momentum. A class-
    correlated stream then keeps several components alive instead of overwriting one set
    of batch statistics. No gradient, no parameter change.

    Defaults: the paper's (K 16, alpha 0.5, tau 0.07, momentum 0.1 per batch of 64).

    Trains: nothing. Adapts: the components (statistics), online. Resets: the components,
    re-drawn as at attach.
    """

    defaults = {"components": 16, "alpha": 0.5, "temperature": 0.07, "momentum": 0.1,
                "batch_max": 64}

    def attach(self, model: nn.Module) -> None:
        layers = to_unmix_tns(model, self.hparams["components"], alpha=self.hparams["alpha"],
                              temperature=self.hparams["temperature"],
                              momentum=self.hparams["momentum"],
                              batch_max=self.hparams["batch_max"])
        if not layers:
            raise ValueError("UnMix-TNS replaces BatchNorm2d layers; the model has none")
        super().attach(model)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self._require_model()(x)
