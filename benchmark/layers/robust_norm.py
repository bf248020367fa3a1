"""Normalization layers of the non-i.i.d. test-time methods: RoTTA's robust BN and NOTE's
instance-aware BN. Each replaces a trained BatchNorm2d and starts from its statistics."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from benchmark.layers.surgery import batchnorm_paths, replace_modules


class RobustBN2d(nn.Module):
    """RoTTA's robust BN (Yuan et al., CVPR 2023, Eq. 4): global statistics that move toward
    each training-mode batch by ``momentum`` (mu <- (1 - m) mu + m mu_batch, biased batch
    variance), and normalize with the *updated global* statistics in both modes, never with
    the raw batch's. Starts from the trained BN's running statistics and affine."""

    def __init__(self, bn: _BatchNorm, momentum: float) -> None:
        super().__init__()
        self.momentum, self.eps = momentum, bn.eps
        self.register_buffer("mean", bn.running_mean.detach().clone())
        self.register_buffer("var", bn.running_var.detach().clone())
        self.weight = nn.Parameter(bn.weight.detach().clone())
        self.bias = nn.Parameter(bn.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, var = self.mean, self.var
        if self.training:  # the gradient flows through the batch's share of the statistics
            var_b, mean_b = torch.var_mean(x, dim=(0, 2, 3), unbiased=False)
            m = self.momentum
            mean, var = (1 - m) * mean + m * mean_b, (1 - m) * var + m * var_b
            self.mean, self.var = mean.detach(), var.detach()
        view = (1, -1, 1, 1)
        x = (x - mean.view(view)) / torch.sqrt(var.view(view) + self.eps)
        return x * self.weight.view(view) + self.bias.view(view)


def to_robust_bn(model: nn.Module, momentum: float) -> list[RobustBN2d]:
    """Replace every BatchNorm2d by a :class:`RobustBN2d`; returns the new layers."""
    paths = [p for p in batchnorm_paths(model)
             if isinstance(model.get_submodule(p), nn.BatchNorm2d)]
    replace_modules(model, paths, lambda bn: RobustBN2d(bn, momentum))
    return [m for m in model.modules() if isinstance(m, RobustBN2d)]


def soft_shrink(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """sign(x) max(|x| - threshold, 0), with a per-element threshold."""
    return F.relu(x - threshold) - F.relu(-x - threshold)


class InstanceAwareBatchNorm2d(nn.Module):
    """NOTE's instance-aware BN, IABN (Gong et al., NeurIPS 2022, Eqs. 1-4).

    Per instance, its own statistics mu_i, s2_i over space (unbiased variance); the
    reference mu, s2: the batch's (training) or the running ones (evaluation). The
    instance keeps its deviation from the reference only where it is larger than sampling
    noise explains: mu_adj = mu + softshrink(mu_i - mu, k sqrt(s2 / L)) and
    s2_adj = s2 + softshrink(s2_i - s2, k s2 sqrt(2 / (L - 1))), L = H W; then
    (x - mu_adj) / sqrt(s2_adj + eps) and the affine. With L <= 1 it is plain BN. The
    running statistics are kept by an inner BatchNorm2d (``bn``), updated in training."""

    def __init__(self, channels: int, k: float = 4.0, eps: float = 1e-5,
                 momentum: float = 0.1) -> None:
        super().__init__()
        self.k, self.eps = k, eps
        self.bn = nn.BatchNorm2d(channels, eps=eps, momentum=momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        var_i, mean_i = torch.var_mean(x, dim=(2, 3), keepdim=True, unbiased=True) \
            if h * w > 1 else (None, None)
        if self.training:
            self.bn(x)  # only to update the running statistics
            var, mean = torch.var_mean(x, dim=(0, 2, 3), keepdim=True, unbiased=True)
        else:
            mean = self.bn.running_mean.view(1, c, 1, 1)
            var = self.bn.running_var.view(1, c, 1, 1)
        if mean_i is not None and var_i is not None:
            length = h * w
            mean = mean + soft_shrink(mean_i - mean, self.k * torch.sqrt((var + self.eps)
                                                                        / length))
            var = F.relu(var + soft_shrink(var_i - var, self.k * (var + self.eps)
                                           * (2 / (length - 1)) ** 0.5))
        out = (x - mean) * torch.rsqrt(var + self.eps)
        return out * self.bn.weight.view(1, c, 1, 1) + self.bn.bias.view(1, c, 1, 1)


def to_instance_aware_bn(model: nn.Module, k: float) -> nn.Module:
    """Replace every BatchNorm2d by a fresh :class:`InstanceAwareBatchNorm2d` (before
    training: NOTE trains its source model with IABN)."""
    paths = [p for p in batchnorm_paths(model)
             if isinstance(model.get_submodule(p), nn.BatchNorm2d)]
    return replace_modules(model, paths, lambda bn: InstanceAwareBatchNorm2d(
        bn.num_features, k, bn.eps, bn.momentum if bn.momentum is not None else 0.1))


class UnMixTNS2d(nn.Module):
    """UnMix-TNS (Tomar et al., ICLR 2024, Sec. 3): K statistics components per BN layer.

    Initialized from the trained BN (mean mu_s, variance s2_s): mu_k = mu_s + sqrt(alpha K /
    (K - 1)) sqrt(s2_s) eps_k, s2_k = (1 - alpha) s2_s, with eps_k normal draws centred
    over the K components and scaled to unit (K - 1)-normalized variance, so that the
    components' mixture has exactly the source mean and variance. Per test batch, each
    instance i (its mean mu_i and biased variance s2_i over space) is assigned to the components by
    p_ik = softmax_k(cos(mu_i, mu_k) / tau), and normalized with the mixture of the
    components each shifted toward it: mu_ik = (1 - p_ik) mu_k + p_ik mu_i (s2 alike),
    mean = avg_k mu_ik, var = avg_k s2_ik + avg_k mu_ik^2 - mean^2. Then every component
    moves toward the instances assigned to it: mu_k += m avg_i p_ik (mu_i - mu_k) (s2 alike),
    m = 1 - (1 - ``momentum``)^(B / ``batch_max``) for a batch of B."""

    def __init__(self, bn: _BatchNorm, components: int, alpha: float = 0.5,
                 temperature: float = 0.07, momentum: float = 0.1, batch_max: int = 64) -> None:
        super().__init__()
        self.eps, self.temperature = bn.eps, temperature
        self.momentum, self.batch_max = momentum, batch_max
        mean, var = bn.running_mean.detach(), bn.running_var.detach()
        spread = math.sqrt(alpha * components / (components - 1)) if components > 1 else 0.0
        shrink = alpha if components > 1 else 0.0
        noise = torch.randn(components, len(mean), device=mean.device)
        if components > 1:  # centred, unit (K - 1)-variance draws: the K / (K - 1) factor
            # then makes the components' mixture exactly the source mean and variance; raw
            # draws shift every channel of every layer by ~0.2 sigma and wreck the model
            noise = (noise - noise.mean(0)) / noise.std(0, unbiased=True)
        self.register_buffer("means", mean + spread * var.sqrt() * noise)
        self.register_buffer("vars", ((1 - shrink) * var).repeat(components, 1))
        self.weight = nn.Parameter(bn.weight.detach().clone())
        self.bias = nn.Parameter(bn.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        var_i, mean_i = torch.var_mean(x, dim=(2, 3), unbiased=False)  # (B, C)
        with torch.no_grad():
            sim = F.normalize(mean_i, dim=1) @ F.normalize(self.means, dim=1).T  # (B, K)
            p = torch.softmax(sim / self.temperature, dim=1).unsqueeze(-1)  # (B, K, 1)
        mu = (1 - p) * self.means.unsqueeze(0) + p * mean_i.unsqueeze(1)  # (B, K, C)
        s2 = (1 - p) * self.vars.unsqueeze(0) + p * var_i.unsqueeze(1)
        mean = mu.mean(1)
        var = s2.mean(1) + (mu**2).mean(1) - mean**2
        with torch.no_grad():
            m = 1 - (1 - self.momentum) ** (n / self.batch_max)
            self.means += m * (p * (mean_i.unsqueeze(1) - self.means.unsqueeze(0))).mean(0)
            self.vars += m * (p * (var_i.unsqueeze(1) - self.vars.unsqueeze(0))).mean(0)
        out = (x - mean.view(n, c, 1, 1)) / torch.sqrt(var.view(n, c, 1, 1) + self.eps)
        return out * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)


def to_unmix_tns(model: nn.Module, components: int, **options: float) -> list[UnMixTNS2d]:
    """Replace every BatchNorm2d by an :class:`UnMixTNS2d`; returns the new layers."""
    paths = [p for p in batchnorm_paths(model)
             if isinstance(model.get_submodule(p), nn.BatchNorm2d)]
    replace_modules(model, paths, lambda bn: UnMixTNS2d(bn, components, **options))
    return [m for m in model.modules() if isinstance(m, UnMixTNS2d)]
