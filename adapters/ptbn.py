"""Prediction-time BN -- Nado, Padhy, Sculley, D'Amour, Lakshminarayanan, Snoek.
"Evaluating Prediction-Time Batch Normalization for Robustness under Covariate Shift",
arXiv:2006.10963, 2020."""

from __future__ import annotations

from torch import nn

from benchmark.adapter import Adapter
from benchmark.layers.norm import normalize_with_batch_statistics, require_batchnorm
from benchmark.registry import ADAPTERS


@ADAPTERS.register("ptbn")
class PredictionTimeBN(Adapter):
    """Prediction-time BN: normalize each test batch with its own statistics (Nado et al. 2020).

    Every BN layer computes mean and variance over the current batch (and spatial positions)
    and uses them in place of the running statistics; nothing is learned or stored, so the
    prediction for an image depends on the other images in its batch, and accuracy on the
    batch size.

    Trains: nothing. Adapts: nothing persistent (BN running statistics are left untouched).
    Resets: nothing to reset.
    """

    def setup(self, model: nn.Module) -> None:
        require_batchnorm(model, "prediction-time BN")
        normalize_with_batch_statistics(model)
