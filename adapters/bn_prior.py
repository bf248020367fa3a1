"""BN with a source prior -- Schneider, Rusak, Eck, Bringmann, Brendel, Bethge. "Improving
robustness against common corruptions by covariate shift adaptation", NeurIPS 2020
(arXiv:2006.16971)."""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from benchmark.adapter import Adapter
from benchmark.layers.norm import require_batchnorm
from benchmark.registry import ADAPTERS


def prior_batch_norm(bn: _BatchNorm, x: torch.Tensor, prior: int) -> torch.Tensor:
    """Normalize ``x`` with source and batch statistics mixed by lambda = N / (N + n).

    mean = lambda * mu_s + (1 - lambda) * mu_t and var = lambda * var_s + (1 - lambda) * var_t,
    with mu_s, var_s the stored (source) running statistics, mu_t, var_t the statistics of
    this batch over the batch and spatial axes, n the number of images in the batch and N
    the prior strength. The batch variance is the unbiased one, as in the authors' reference
    implementation (it estimates it the way BN updates a running variance), so N = 0 differs
    from prediction-time BN (biased variance) by Bessel's correction.
    """
    n = x.shape[0]
    lam = prior / (prior + n)
    dims = [0, *range(2, x.dim())]
    batch_mean = x.mean(dims)
    count = x.numel() // x.shape[1]
    batch_var = x.var(dims, unbiased=count > 1)
    assert bn.running_mean is not None and bn.running_var is not None
    mean = lam * bn.running_mean + (1 - lam) * batch_mean
    var = lam * bn.running_var + (1 - lam) * batch_var
    return F.batch_norm(x, mean, var, bn.weight, bn.bias, training=False, eps=bn.eps)


@ADAPTERS.register("bn_prior")
class BNPrior(Adapter):
    """BN with a source prior: mix source and test-batch statistics (Schneider et al. 2020).

    Every BN layer normalizes a test batch of n images with
    mean = lambda * mu_source + (1 - lambda) * mu_batch (variance likewise),
    lambda = N / (N + n). N (``prior``) is the strength of the source statistics measured
    in images, a "pseudo batch size": N = 0 is prediction-time BN, N -> infinity the
    unadapted source model. The paper's best N for ResNet-50 on ImageNet-C was 16; it holds
    up where prediction-time BN collapses, at batch sizes 1-8.

    Trains: nothing. Adapts: nothing persistent (statistics are mixed per batch; stored
    running statistics and affine parameters are unchanged). Resets: nothing to reset.
    """

    defaults = {"prior": 16}

    def setup(self, model: nn.Module) -> None:
        prior = self.hparams["prior"]
        if not isinstance(prior, int | float) or prior < 0:
            raise ValueError(f"bn_prior needs prior >= 0 (a number of images), got {prior!r}")
        layers = require_batchnorm(model, "BN with a source prior")
        model.eval()
        for bn in layers:
            if bn.running_mean is None:
                raise ValueError("bn_prior needs BN layers with running statistics")
            # Per-instance forward: the state dict (and so reset) is untouched.
            bn.forward = types.MethodType(  # type: ignore[method-assign]
                lambda layer, x: prior_batch_norm(layer, x, prior), bn)
