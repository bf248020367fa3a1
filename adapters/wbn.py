"""Weighted BN (multi-source domain alignment layers for domain generalization) -- Mancini,
Rota Bulo, Caputo, Ricci. "Robust Place Categorization with Deep Domain Generalization", IEEE
Robotics and Automation Letters 3(3), 2018 (arXiv:1805.12048); its layer is the mDA layer of
Mancini, Porzi, Rota Bulo, Caputo, Ricci, "Boosting Domain Adaptation by Discovering Latent
Domains", CVPR 2018 (arXiv:1805.01386)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from benchmark.adapter import Adapter
from benchmark.layers.norm import require_batchnorm
from benchmark.layers.surgery import replace_modules
from benchmark.registry import ADAPTERS


class WeightedBatchNorm2d(nn.Module):
    """Per-domain BN statistics, applied to each image with weights over the domains:

    ``y_i = gamma * sum_d w_id (x_i - mu_d) / sqrt(sigma2_d + eps) + beta`` (the mDA layer),
    with ``w_i`` (N x max_domains, rows summing to one) set in ``weights`` before each
    forward. Training: ``mu_d = sum_i w_id mean_hw(x_i) / sum_i w_id`` and ``sigma2_d`` the
    same w-weighted average of ``(x_i - mu_d)^2`` over images and positions (the
    domain's weighted batch statistics); each domain with weight in the batch moves its
    running statistics towards them. With one-hot weights (known source domains) this is a
    BN per domain. Test time: the running statistics of each domain. gamma, beta are shared.
    """

    def __init__(self, num_features: int, max_domains: int, eps: float = 1e-5,
                 momentum: float = 0.1) -> None:
        super().__init__()
        self.num_features, self.max_domains = num_features, max_domains
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(max_domains, num_features))
        self.register_buffer("running_var", torch.ones(max_domains, num_features))
        self.weights: torch.Tensor | None = None  # (N, max_domains), set by the model

    @classmethod
    def from_batchnorm(cls, bn: _BatchNorm, max_domains: int) -> WeightedBatchNorm2d:
        layer = cls(bn.num_features, max_domains, bn.eps,
                    bn.momentum if bn.momentum is not None else 0.1)
        with torch.no_grad():
            if bn.affine:
                layer.weight.copy_(bn.weight)
                layer.bias.copy_(bn.bias)
            if bn.track_running_stats:
                layer.running_mean.copy_(bn.running_mean.expand(max_domains, -1))
                layer.running_var.copy_(bn.running_var.expand(max_domains, -1))
        return layer

    def extra_repr(self) -> str:
        return f"{self.num_features}, max_domains={self.max_domains}, eps={self.eps}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weights
        if w is None or w.shape != (x.shape[0], self.max_domains):
            raise RuntimeError("weighted BN needs per-image domain weights (N x max_domains) "
                               "before its forward pass; run it inside WeightedBNNet")
        w = w.to(x.dtype)
        if self.training:
            mass = w.sum(0)                                                    # D
            share = w / mass.clamp_min(1e-12)                                  # N x D
            flat = x.flatten(2)
            mean_img = flat.mean(2)                                            # N x C
            second_img = torch.linalg.vecdot(flat, flat) / flat.shape[2]      # N x C
            mean = share.t() @ mean_img                                        # D x C
            # E_w[(x - mu_d)^2] = E_w[mean_hw(x^2)] - mu_d^2, per domain d
            var = (share.t() @ second_img - mean**2).clamp_min(0)
            with torch.no_grad():
                used = mass > 1e-6
                n = mass[used, None] * x.shape[2] * x.shape[3]  # unbiased, as nn.BatchNorm
                unbiased = var[used] * n / (n - 1).clamp_min(1)
                self.running_mean[used] = torch.lerp(self.running_mean[used], mean[used],
                                                     self.momentum)
                self.running_var[used] = torch.lerp(self.running_var[used], unbiased,
                                                    self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        inv_std = (var + self.eps).rsqrt()                                     # D x C
        scale = w @ inv_std                                      # N x C: sum_d w_d / sigma_d
        shift = -(w @ (mean * inv_std))                          # N x C: -sum_d w_d mu_d / sigma_d
        scale = scale * self.weight
        shift = shift * self.weight + self.bias
        return torch.addcmul(shift[..., None, None], x, scale[..., None, None])


class DomainHead(nn.Module):
    """The domain prediction branch: a small CNN from the image to source-domain logits.

    The paper branches it off the network's first layers; here it reads the image (at half
    resolution) with two convolutions of its own, so its output never depends on the
    weighted layers it drives.
    """

    def __init__(self, max_domains: int, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(  # half resolution first: style needs no fine detail
            nn.AvgPool2d(2), nn.Conv2d(3, width, 3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(2 * width, max_domains)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class WeightedBNNet(nn.Module):
    """The network with weighted-BN layers and its domain prediction branch.

    Training with known domain ids (``domain_ids`` set): one-hot weights, and the domain
    branch's cross-entropy on those ids is left in ``domain_loss``. Otherwise the weights
    are the domain branch's softmax over the domains seen in training.
    """

    def __init__(self, net: nn.Module, max_domains: int) -> None:
        super().__init__()
        self.net = net
        self.domain_head = DomainHead(max_domains)
        self.max_domains = max_domains
        self.register_buffer("domain_batches", torch.zeros(max_domains, dtype=torch.long))
        self.domain_ids: torch.Tensor | None = None
        self.domain_loss: torch.Tensor | None = None

    def layers(self) -> list[WeightedBatchNorm2d]:
        return [m for m in self.net.modules() if isinstance(m, WeightedBatchNorm2d)]

    def domain_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax of the domain branch over the domains with training batches."""
        logits = self.domain_head(x)
        seen = self.domain_batches > 0
        if not seen.any():
            raise RuntimeError("weighted BN has no trained source domain (was it trained?)")
        return logits.masked_fill(~seen, float("-inf")).softmax(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.domain_ids is not None:
            ids = self.domain_ids.to(x.device)
            weights = F.one_hot(ids, self.max_domains).to(x.dtype)
            self.domain_loss = F.cross_entropy(self.domain_head(x), ids)
            if self.training:
                with torch.no_grad():
                    self.domain_batches += torch.bincount(ids, minlength=self.max_domains) > 0
        else:
            weights = self.domain_weights(x)
        for layer in self.layers():
            layer.weights = weights
        return self.net(x)


@ADAPTERS.register("wbn")
class WeightedBN(Adapter):
    """Weighted BN: per-source-domain BN statistics, combined per image by a domain classifier.

    Every BatchNorm2d becomes a :class:`WeightedBatchNorm2d` and a domain prediction branch
    (:class:`DomainHead`) is added. Training: mini-batches mix the source
    domains (their ids: the suite's ``camera`` field; on ``digits-cams`` the four seen
    cameras); each image is normalized with its own domain's statistics computed over that
    domain's images in the batch (one-hot weights), and the domain branch learns to predict
    the source domain (cross-entropy times ``domain_weight``, added to the task loss);
    gamma, beta and every other weight are shared. Mixed batches matter: trained on
    single-domain batches (one label per batch), the branch learned only the domains'
    frequencies (25% accuracy on digits-cams, chance), and every test image got equal
    weights. Test time, any image (the source test split
    too): the branch's probabilities over the source domains weigh the per-domain
    normalizations of every layer, so an image of an unseen domain is normalized as the
    mixture of the source domains it resembles.

    Trains: the whole network, per-domain statistics and the domain branch. Adapts: nothing
    at test time (the weights are computed per image). Resets: nothing to reset.
    """

    defaults = {"max_domains": 16, "domain_weight": 1.0}
    setting = "dg"
    changes_training = True
    requires = frozenset({"camera_ids"})
    domain_field = "camera"

    def prepare(self, model: nn.Module) -> nn.Module:
        require_batchnorm(model, "weighted BN")
        max_domains = int(self.hparams["max_domains"])
        paths = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
        net = replace_modules(
            model, paths, lambda bn: WeightedBatchNorm2d.from_batchnorm(bn, max_domains))
        return WeightedBNNet(net, max_domains)

    def set_context(self, model: nn.Module, context: Mapping[str, Any]) -> None:
        assert isinstance(model, WeightedBNNet)
        ids = context.get(self.domain_field)
        # Known ids in training only: at test time every image is weighted by the branch.
        if isinstance(ids, torch.Tensor) and model.training:
            if int(ids.max()) >= model.max_domains:
                raise ValueError(f"domain id {int(ids.max())} is outside "
                                 f"0..{model.max_domains - 1}; raise wbn's max_domains")
            model.domain_ids = ids.long()
        else:
            model.domain_ids = None

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        assert isinstance(model, WeightedBNNet)
        if model.domain_loss is None:
            return None
        loss, model.domain_loss = model.domain_loss, None
        return float(self.hparams["domain_weight"]) * loss

    def finish_training(self, model: nn.Module, data: Any) -> None:
        assert isinstance(model, WeightedBNNet)
        model.domain_ids = None  # a saved or evaluated model weighs with its domain branch
