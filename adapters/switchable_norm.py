"""Switchable Normalization -- Luo, Ren, Peng, Zhang, Li. "Differentiable Learning-to-Normalize
via Switchable Normalization", ICLR 2019 (arXiv:1806.10779)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from benchmark.adapter import Adapter, TrainingImages
from benchmark.layers.norm import require_batchnorm
from benchmark.layers.surgery import copy_batchnorm_channels, replace_modules
from benchmark.registry import ADAPTERS

NORMALIZERS = ("in", "ln", "bn")  # the order of the importance weights


class SwitchNorm2d(nn.Module):
    """Switchable Normalization for (N, C, H, W) features, paper Eq. (2)-(4):

    ``h_hat = gamma (h - sum_k w_k mu_k) / sqrt(sum_k w'_k sigma2_k + eps) + beta`` with
    k in {IN, LN, BN}, ``w = softmax(lambda)``, ``w' = softmax(lambda')`` (one learned
    3-vector each per layer, initialized to 1 -> equal weights). The statistics share one
    computation (paper Eq. 5): per (n, c) mu_in, sigma2_in over H, W; LN averages them over
    C, BN over N (sigma2 = E[sigma2 + mu^2] - mu^2). Variances are the biased (1/|I|) ones
    of the paper's definition.

    BN part at test time: ``running_mean``/``running_var``, a moving average updated in
    training with the replaced BN's momentum (the reference code's ``using_moving_average``
    mode), or, after :meth:`begin_batch_average` ... :meth:`end_batch_average`, the plain
    average of mu_bn, sigma2_bn over the mini-batches in between (the paper's "batch
    average" for inference, Sec. 3).
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
        self._sums: list[torch.Tensor] | None = None  # mu_bn, sigma2_bn, batches: averaging

    @classmethod
    def from_batchnorm(cls, bn: _BatchNorm) -> SwitchNorm2d:
        sn = cls(bn.num_features, bn.eps, bn.momentum if bn.momentum is not None else 0.1)
        copy_batchnorm_channels(bn, sn)
        return sn

    def begin_batch_average(self) -> None:
        """From now on, training-mode forwards accumulate mu_bn, sigma2_bn instead of
        updating the moving average."""
        self._sums = [torch.zeros_like(self.running_mean), torch.zeros_like(self.running_var),
                      torch.zeros((), device=self.running_mean.device)]

    def end_batch_average(self) -> None:
        """Running statistics := the average over the batches seen since the begin call."""
        assert self._sums is not None, "end_batch_average without begin_batch_average"
        mean_sum, var_sum, count = self._sums
        self._sums = None
        if count > 0:
            self.running_mean.copy_(mean_sum / count)
            self.running_var.copy_(var_sum / count)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if h.ndim != 4:
            raise ValueError(f"SwitchNorm2d expects (N, C, H, W) input, got {tuple(h.shape)}")
        # Per (n, c) mean and second moment as one mean and one dot product: much faster on
        # CPU than torch.var_mean (forward and backward), same values to float rounding.
        flat = h.flatten(2)
        mean_in = flat.mean(2)[..., None, None]                              # N x C
        second_moment = (torch.linalg.vecdot(flat, flat) / flat.shape[2])[..., None, None]
        var_in = (second_moment - mean_in**2).clamp_min(0)
        mean_ln = mean_in.mean(1, keepdim=True)                      # N x 1 x 1 x 1
        var_ln = second_moment.mean(1, keepdim=True) - mean_ln**2
        if self.training:
            mean_bn = mean_in.mean(0, keepdim=True)                  # 1 x C x 1 x 1
            var_bn = second_moment.mean(0, keepdim=True) - mean_bn**2
            with torch.no_grad():
                if self._sums is not None:
                    self._sums[0] += mean_bn.flatten()
                    self._sums[1] += var_bn.flatten()
                    self._sums[2] += 1
                else:
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

    Test-time BN statistics (``bn_statistics``): ``"batch_average"`` (default, the paper's
    choice): after the last training step, with the weights frozen, mu_bn and sigma2_bn of
    each layer are averaged over the last epoch's source mini-batches (un-augmented);
    ``"moving_average"``: the moving average kept during training.

    Trains: the whole network including the 2 x 3 importance weights per layer (plain source
    recipe). Adapts: nothing at test time (the IN and LN parts use each test image's own
    statistics). Resets: nothing to reset.
    """

    defaults = {"bn_statistics": "batch_average"}
    setting = "dg"
    changes_training = True

    def prepare(self, model: nn.Module) -> nn.Module:
        if self.hparams["bn_statistics"] not in ("batch_average", "moving_average"):
            raise ValueError("switchable_norm bn_statistics must be 'batch_average' or "
                             f"'moving_average', got {self.hparams['bn_statistics']!r}")
        return to_switchable_norm(model)

    def finish_training(self, model: nn.Module, data: TrainingImages) -> None:
        if self.hparams["bn_statistics"] != "batch_average":
            return
        layers = [m for m in model.modules() if isinstance(m, SwitchNorm2d)]
        for layer in layers:
            layer.begin_batch_average()
        for images, _ in data.source():
            model(images)
        for layer in layers:
            layer.end_batch_average()
