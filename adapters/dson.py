"""DSON -- Seo, Suh, Kim, Kim, Han, Han. "Learning to Optimize Domain Specific Normalization for
Domain Generalization", ECCV 2020 (arXiv:1907.04275)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from benchmark.adapter import Adapter, single_id
from benchmark.layers.norm import require_batchnorm
from benchmark.layers.surgery import replace_modules
from benchmark.registry import ADAPTERS


class DomainSpecificOptimizedNorm2d(nn.Module):
    """One optimized normalization per source domain d, as the paper defines it:

    ``y = gamma_d (x - mu_d) / sqrt(sigma2_d + eps) + beta_d`` with
    ``mu_d = w_d mu_bn,d + (1 - w_d) mu_in`` and ``sigma2_d = w_d sigma2_bn,d + (1 - w_d)
    sigma2_in``: mu_in, sigma2_in per image and channel over H, W (biased); mu_bn,d,
    sigma2_bn,d over the domain's mini-batch in training, its running averages at test time.
    Each domain has its own gamma_d, beta_d, running statistics and mixture weights
    ``(w_d, 1 - w_d) = softmax(mixture_scale * mixture[d])`` (one pair per layer and domain,
    shared by mean and variance as in the paper's equations; the authors' code also has a
    variant with separate weights for the two). ``mixture_scale`` multiplies the learning
    rate of the mixture logits by its square under SGD (see :class:`DSON`).
    ``select(d)`` picks the branch every forward uses.
    """

    def __init__(self, num_features: int, max_domains: int, eps: float = 1e-5,
                 momentum: float = 0.1, mixture_scale: float = 1.0) -> None:
        super().__init__()
        self.num_features, self.max_domains = num_features, max_domains
        self.eps, self.momentum, self.mixture_scale = eps, momentum, mixture_scale
        self.weight = nn.Parameter(torch.ones(max_domains, num_features))
        self.bias = nn.Parameter(torch.zeros(max_domains, num_features))
        self.mixture = nn.Parameter(torch.zeros(max_domains, 2))  # logits of (BN, IN): 1/2 each
        self.register_buffer("running_mean", torch.zeros(max_domains, num_features))
        self.register_buffer("running_var", torch.ones(max_domains, num_features))
        self.register_buffer("domain_batches", torch.zeros(max_domains, dtype=torch.long))
        self.domain: int | None = None

    @classmethod
    def from_batchnorm(cls, bn: _BatchNorm, max_domains: int, mixture_scale: float = 1.0
                       ) -> DomainSpecificOptimizedNorm2d:
        layer = cls(bn.num_features, max_domains, bn.eps,
                    bn.momentum if bn.momentum is not None else 0.1, mixture_scale)
        with torch.no_grad():  # every branch starts as the replaced BN
            if bn.affine:
                layer.weight.copy_(bn.weight.expand(max_domains, -1))
                layer.bias.copy_(bn.bias.expand(max_domains, -1))
            if bn.track_running_stats:
                layer.running_mean.copy_(bn.running_mean.expand(max_domains, -1))
                layer.running_var.copy_(bn.running_var.expand(max_domains, -1))
        return layer

    def mixture_weights(self) -> torch.Tensor:
        """(max_domains, 2): each domain's (w_d, 1 - w_d) for (BN, IN); rows sum to one."""
        return (self.mixture_scale * self.mixture).softmax(1)

    def trained_domains(self) -> list[int]:
        return (self.domain_batches > 0).nonzero().flatten().tolist()

    def select(self, domain: int) -> None:
        if not 0 <= domain < self.max_domains:
            raise ValueError(f"domain id {domain} is outside 0..{self.max_domains - 1}; raise "
                             "dson's max_domains hyper-parameter")
        self.domain = domain

    def extra_repr(self) -> str:
        return f"{self.num_features}, max_domains={self.max_domains}, eps={self.eps}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"DSON expects (N, C, H, W) input, got {tuple(x.shape)}")
        if self.domain is None:
            raise RuntimeError("DSON needs a domain branch (select) before a forward pass")
        d = self.domain
        # per (n, c) mean and second moment as one mean and one dot product (as Switchable
        # Norm does): faster on CPU than var, the same values to float rounding
        flat = x.flatten(2)
        mean_in = flat.mean(2)[..., None, None]                                # N x C x 1 x 1
        second = (torch.linalg.vecdot(flat, flat) / flat.shape[2])[..., None, None]
        var_in = (second - mean_in**2).clamp_min(0)
        if self.training:
            mean_bn = mean_in.mean(0, keepdim=True)                            # 1 x C x 1 x 1
            var_bn = second.mean(0, keepdim=True) - mean_bn**2
            with torch.no_grad():  # running variance unbiased, as nn.BatchNorm keeps it
                n = flat.shape[0] * flat.shape[2]
                self.running_mean[d].lerp_(mean_bn.flatten(), self.momentum)
                self.running_var[d].lerp_(var_bn.flatten() * n / max(n - 1, 1), self.momentum)
                self.domain_batches[d] += 1
        else:
            mean_bn = self.running_mean[d].view(1, -1, 1, 1)
            var_bn = self.running_var[d].view(1, -1, 1, 1)
        w_bn, w_in = self.mixture_weights()[d]
        mean = w_bn * mean_bn + w_in * mean_in
        var = w_bn * var_bn + w_in * var_in
        scale = self.weight[d].view(1, -1, 1, 1) * (var + self.eps).rsqrt()
        # gamma (x - mean) / sqrt(var + eps) + beta as one multiply-add over x
        return torch.addcmul(self.bias[d].view(1, -1, 1, 1) - mean * scale, x, scale)


def dson_layers(model: nn.Module) -> list[DomainSpecificOptimizedNorm2d]:
    return [m for m in model.modules() if isinstance(m, DomainSpecificOptimizedNorm2d)]


def select_domain(model: nn.Module, domain: int) -> None:
    for layer in dson_layers(model):
        layer.select(domain)


@ADAPTERS.register("dson")
class DSON(Adapter):
    """DSON: per source domain, a learned mix of BN and IN statistics with its own affine.

    Every BatchNorm2d becomes a :class:`DomainSpecificOptimizedNorm2d`. Training batches hold
    one source domain each (``batch_key = "camera"``: on ``digits-cams`` the four seen cameras
    are the source domains) and pass through that domain's branch; the convolution and
    classifier weights are shared by all domains, and the mixture weights are learned jointly
    with them by back-propagation. A domain's IN part removes per-image
    style, its BN part keeps the domain's batch statistics; how much of each is learned.

    Inference on an unseen domain (as in the paper): the image goes through every trained
    domain's branch and the class probabilities are averaged. An image of a seen source
    domain whose id the stream names (the source test split) uses its own branch.

    Trains: the whole network, one affine, one statistics set and one (BN, IN) mixture per
    domain and layer. Adapts: nothing at test time. Resets: nothing to reset.

    Learning the mixture: the suite's recipe trains every parameter with one SGD learning
    rate and weight decay. Under it (``mixture_scale=1``) the mixtures stayed within 0.46-0.59
    of their initial 1/2 in every layer but the last (0.70) on digits-cams, so each layer
    kept half of IN's statistics, the deep layers too, and the predictions were nearly
    uniform (entropy 1.95 nats, unseen camera 72.3%, seed 0). The logits are therefore
    ``mixture_scale`` (default 10) times the trained parameter: a 100x learning rate for them
    under SGD, weight decay's relative pull unchanged. The mixtures then learn the pattern
    IBN-Net builds in by hand (IN in the lower layers, BN in the higher): stem w_bn 0.04,
    last block 1.00; unseen camera 88.3%, entropy 1.04 (seed 0).
    """

    defaults = {"max_domains": 16, "mixture_scale": 10.0}
    setting = "dg"
    changes_training = True
    requires = frozenset({"camera_ids"})
    batch_key = "camera"

    def __init__(self, **hparams: Any) -> None:
        super().__init__(**hparams)
        self._domain: int | None = None  # a seen domain's branch, or None: the ensemble

    def prepare(self, model: nn.Module) -> nn.Module:
        require_batchnorm(model, "DSON")
        max_domains = int(self.hparams["max_domains"])
        scale = float(self.hparams["mixture_scale"])
        paths = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
        return replace_modules(model, paths, lambda bn: DomainSpecificOptimizedNorm2d
                               .from_batchnorm(bn, max_domains, scale))

    def set_context(self, model: nn.Module, context: Mapping[str, Any]) -> None:
        domain = single_id(context.get(self.batch_key), "domain")
        layers = dson_layers(model)
        if domain is not None and (model.training or domain in layers[0].trained_domains()):
            self._domain = domain
            select_domain(model, self._domain)
        else:
            self._domain = None

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        model = self._require_model()
        if self._domain is not None:
            return model(x)
        domains = dson_layers(model)[0].trained_domains()
        if not domains:
            raise RuntimeError("DSON has no trained domain branch (was the model trained?)")
        probs = 0
        for d in domains:
            select_domain(model, d)
            probs = probs + model(x).softmax(1)
        # log of the averaged probabilities: its softmax is the ensemble's prediction
        return (probs / len(domains)).clamp_min(1e-12).log()

    infer = predict  # no test-time update: a late batch gets the same prediction
