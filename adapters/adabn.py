"""AdaBN -- Li, Wang, Shi, Liu, Hou. "Revisiting Batch Normalization For Practical Domain
Adaptation", ICLR Workshop 2017 (arXiv:1603.04779)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from benchmark.adapter import Adapter, TargetStream
from benchmark.norm import require_batchnorm
from benchmark.registry import ADAPTERS


@ADAPTERS.register("adabn")
class AdaBN(Adapter):
    """AdaBN: replace every BN layer's statistics by the target domain's (Li et al. 2016).

    Algorithm 1 of the paper: for every BN neuron j, concatenate its responses over *all*
    target images and set mu_j = E[x_j], sigma_j^2 = Var[x_j]; then
    y_j = gamma_j (x_j - mu_j) / sigma_j + beta_j with the source gamma, beta.

    One no-grad pass over the unlabeled target stream with BN in train mode (each layer sees
    its input normalized as in the usual recipe); a forward pre-hook on every BN layer
    accumulates per-channel sums in float64, so the statistics are those of the whole target
    set, exact whatever the batch size -- not the average of per-batch statistics that
    ``momentum=None`` gives. Variance is unbiased, as BN's running_var is.

    Trains: nothing. Adapts: BN running mean/var (all BN layers). Resets: running stats back
    to the source ones (``reset`` restores the attached state).
    """

    def adapt(self, stream: TargetStream) -> None:
        model = self._require_model()
        layers = require_batchnorm(model, "AdaBN")
        sums: dict[nn.Module, list[torch.Tensor | int]] = {}

        def accumulate(bn: _BatchNorm, inputs: tuple[torch.Tensor, ...]) -> None:
            x = inputs[0].detach().double()
            dims = [d for d in range(x.ndim) if d != 1]  # all but the channel dimension
            acc = sums.setdefault(bn, [0, 0.0, 0.0])
            acc[0] += x.numel() // x.shape[1]
            acc[1] = acc[1] + x.sum(dims)
            acc[2] = acc[2] + (x * x).sum(dims)

        handles = [bn.register_forward_pre_hook(accumulate) for bn in layers]
        model.eval()
        for bn in layers:
            bn.train()  # normalize with batch statistics during the statistics pass
        try:
            with torch.no_grad():
                for x in stream:
                    model(x)
        finally:
            for h in handles:
                h.remove()
        for bn in layers:
            if bn not in sums:  # a layer the forward pass did not use (an inactive branch)
                continue
            count, total, total_sq = sums[bn]
            mean = total / count
            var = (total_sq - count * mean * mean) / max(count - 1, 1)
            bn.running_mean.copy_(mean.to(bn.running_mean.dtype))
            bn.running_var.copy_(var.clamp_min(0).to(bn.running_var.dtype))
        model.eval()  # predict with the target statistics
