"""Switchable Normalization -- Luo, Ren, Peng, Zhang, Li. "Differentiable Learning-to-Normalize
via Switchable Normalization", ICLR 2019 (arXiv:1806.10779)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from benchmark.adapter import Adapter
from benchmark.norm import require_batchnorm
from benchmark.registry import ADAPTERS
from benchmark.surgery import copy_batchnorm_channels, replace_modules

NORMALIZERS = ("in", "ln", "bn")  # the order of the importance weights


class SwitchNorm2d(nn.Module):
    """Switchable Normalization for (N, C, H, W) features, paper Eq. (2)-(4):

    ``h_hat = gamma (h - sum_k w_k mu_k) / sqrt(sum_k w'_k sigma2_k + eps) + beta`` with
    k in {IN, LN, BN}, ``w = softmax(lambda)``, ``w' = softmax(lambda')`` (one learned
    3-vector each per layer, initialized to 1 -> equal weights). The statistics share one
    computation (paper Eq. 5): per (n, c) mu_in, sigma2_in over H, W; LN averages them over
    C, BN over N (sigma2 = E[sigma2 + mu^2] - mu^2). Variances are the biased (1/|I|) ones
    of the paper's definition.

    BN part at test time: running averages of mu_bn, sigma2_bn updated in training with the
    replaced BN's momentum (the reference code's ``using_moving_average`` mode). The paper's
    preferred "batch average" (freeze the trained network, average mu_bn, sigma2_bn over
    training mini-batches) would need a pass after training, which the training loop has no
    hook for.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.mean_weight = nn.Parameter(torch.ones(3))  # lambda, order: IN, LN, BN
        self.var_weight = nn.Parameter(torch.ones(3))   # lambda'
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    @classmethod
    def from_batchnorm(cls, bn: _BatchNorm) -> SwitchNorm2d:
        sn = cls(bn.num_features, bn.eps, bn.momentum if bn.momentum is not None else 0.1)
        copy_batchnorm_channels(bn, sn)
        return sn

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if h.ndim != 4:
            raise ValueError(f"SwitchNorm2d expects (N, C, H, W) input, got {tuple(h.shape)}")
        var_in, mean_in = torch.var_mean(h, (2, 3), unbiased=False, keepdim=True)  # N x C
        second_moment = var_in + mean_in**2
        mean_ln = mean_in.mean(1, keepdim=True)                      # N x 1 x 1 x 1
        var_ln = second_moment.mean(1, keepdim=True) - mean_ln**2
        if self.training:
            mean_bn = mean_in.mean(0, keepdim=True)                  # 1 x C x 1 x 1
            var_bn = second_moment.mean(0, keepdim=True) - mean_bn**2
            with torch.no_grad():
                self.running_mean.lerp_(mean_bn.flatten(), self.momentum)
                self.running_var.lerp_(var_bn.flatten(), self.momentum)
        else:
            mean_bn = self.running_mean.view(1, -1, 1, 1)
            var_bn = self.running_var.view(1, -1, 1, 1)
        w = self.mean_weight.softmax(0)
        w_var = self.var_weight.softmax(0)
        mean = w[0] * mean_in + w[1] * mean_ln + w[2] * mean_bn
        var = w_var[0] * var_in + w_var[1] * var_ln + w_var[2] * var_bn
        # gamma (h - mean) / sqrt(var + eps) + beta, folded into one multiply-add over h
        scale = self.weight.view(1, -1, 1, 1) * (var + self.eps).rsqrt()
        return torch.addcmul(self.bias.view(1, -1, 1, 1) - mean * scale, h, scale)


def to_switchable_norm(model: nn.Module) -> nn.Module:
    """Every BatchNorm2d becomes a :class:`SwitchNorm2d` (BN of other dimensions stays)."""
    require_batchnorm(model, "Switchable Norm")
    paths = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    return replace_modules(model, paths, SwitchNorm2d.from_batchnorm)


@ADAPTERS.register("switchable_norm")
class SwitchableNorm(Adapter):
    """Switchable Norm: every BN becomes a learned softmax mix of IN, LN and BN statistics.

    Paper Sec. 3 (see :class:`SwitchNorm2d` for the equations): each normalization layer
    learns its own importance weights for the means and (separately) the variances of IN, LN
    and BN, jointly with the network by back-propagation; gamma, beta as in BN. The BN part
    uses running statistics at test time.

    Trains: the whole network including the 2 x 3 importance weights per layer (plain source
    recipe). Adapts: nothing at test time (the IN and LN parts use each test image's own
    statistics). Resets: nothing to reset.
    """

    setting = "dg"
    changes_training = True

    def prepare(self, model: nn.Module) -> nn.Module:
        return to_switchable_norm(model)
