"""BN-statistics EMA: an example adapter kept outside the project (docs/adding-an-adapter.md).

Check it, then score it, without editing shiftbench::

    python run.py check examples/bn_ema.py:BNStatsEMA
    python run.py run --suite digits --adapters source,adabn,examples/bn_ema.py:BNStatsEMA

AdaBN with momentum, online: AdaBN (Li et al., "Revisiting Batch Normalization For Practical
Domain Adaptation", arXiv:1603.04779) replaces BN's source statistics by the whole target
set's in one pass before predicting. This adapter instead moves them toward each test batch's
statistics as the batches arrive, by an exponential moving average, and predicts every batch
with the statistics updated by it -- close to DUA (Mirza et al., "The Norm Must Go On", CVPR
2022) without DUA's augmentation and decaying momentum.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.hooks import RemovableHandle

from benchmark.adapter import Adapter
from benchmark.layers.norm import require_batchnorm


class BNStatsEMA(Adapter):
    """BN-statistics EMA: move BN running statistics toward each test batch's, then predict.

    For every BN layer and test batch, with m = ``momentum``:
    running_mean <- (1 - m) running_mean + m mean_batch, running_var likewise with the
    unbiased batch variance (per channel, over batch and spatial positions); the layer then
    normalizes the batch with the updated running statistics (eval mode). m = 1 is
    prediction-time BN; m = 0 is the source model.

    Trains: nothing. Adapts: BN running mean/var, online. Resets: the running statistics
    (``reset`` restores the state saved by ``attach``).
    """

    defaults = {"momentum": 0.1}

    def setup(self, model: nn.Module) -> None:
        """Called by attach and again by reset: eval mode, and a pre-hook on every BN layer."""
        momentum = float(self.hparams["momentum"])
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        model.eval()  # BN normalizes with its running statistics
        if not getattr(self, "_hooks", None):  # reset calls setup again: hook only once
            layers = require_batchnorm(model, "BN-statistics EMA")
            self._hooks: list[RemovableHandle] = [
                bn.register_forward_pre_hook(self._update_statistics) for bn in layers
            ]

    def _update_statistics(self, bn: _BatchNorm, inputs: tuple[torch.Tensor, ...]) -> None:
        """Runs before each BN layer's forward: fold the batch's statistics into its running
        ones, so the layer then normalizes with them."""
        x = inputs[0].detach()
        dims = [d for d in range(x.ndim) if d != 1]  # every dimension but the channels
        count = x.numel() // x.shape[1]
        m = float(self.hparams["momentum"])
        mean = x.mean(dims)
        var = x.var(dims, correction=1 if count > 1 else 0)  # unbiased, as BN keeps it
        with torch.no_grad():
            bn.running_mean.mul_(1 - m).add_(mean.to(bn.running_mean.dtype), alpha=m)
            bn.running_var.mul_(1 - m).add_(var.to(bn.running_var.dtype), alpha=m)

    # predict is the base class's: a no-grad forward, during which the hooks update.
