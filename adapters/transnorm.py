"""TransNorm -- Wang, Jin, Long, Wang, Jordan. "Transferable Normalization: Towards Improving
Transferability of Deep Neural Networks", NeurIPS 2019."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from benchmark.adapter import Adapter
from benchmark.layers.norm import require_batchnorm, select_role, source_target_split
from benchmark.layers.surgery import replace_modules
from benchmark.registry import ADAPTERS

DOMAINS = ("source", "target")


def transferability(mean_s: torch.Tensor, var_s: torch.Tensor, mean_t: torch.Tensor,
                    var_t: torch.Tensor, eps: float) -> torch.Tensor:
    """The paper's channel attention: per channel the distance between the domains'
    standardized means, ``d = |mu_s / sqrt(var_s + eps) - mu_t / sqrt(var_t + eps)|``, turned
    into ``alpha = C (1 + d)^-1 / sum_k (1 + d_k)^-1`` (a Student-t kernel normalized to sum to
    the channel count C): channels whose statistics differ less between the domains, i.e.
    transfer better, weigh more."""
    distance = (mean_s / (var_s + eps).sqrt() - mean_t / (var_t + eps).sqrt()).abs()
    kernel = 1.0 / (1.0 + distance)
    return len(kernel) * kernel / kernel.sum()


class TransNorm2d(_BatchNorm):
    """BN with one set of statistics per domain, one shared affine, and a residual channel
    attention: ``y = (1 + alpha) * (gamma * x_hat_d + beta)``, d the input's domain.

    The layer keeps the replaced BN's names for the source statistics (a plain checkpoint
    loads into it); ``target_mean`` / ``target_var`` are the target's. In training, a batch
    whose first ``split`` images are source and the rest target normalizes each part with
    its own batch statistics (updating that domain's running averages) and computes alpha
    from the two parts' batch statistics; at evaluation the statistics of the selected
    domain (``domain``) normalize and alpha comes from the two running averages. alpha
    receives no gradient (it weighs channels; it is not trained).
    """

    def __init__(self, bn: _BatchNorm) -> None:
        super().__init__(bn.num_features, bn.eps, bn.momentum, bn.affine, True)
        self.load_state_dict(bn.state_dict(), strict=False)
        self.register_buffer("target_mean", self.running_mean.clone())
        self.register_buffer("target_var", self.running_var.clone())
        self.split: int | None = None  # set for a joint source + target training batch
        self.domain = "source"

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() != 4:
            raise ValueError(f"TransNorm2d expects 4-d input, got {input.dim()}-d")

    def _statistics(self, domain: str) -> tuple[torch.Tensor, torch.Tensor]:
        return ((self.running_mean, self.running_var) if domain == "source"
                else (self.target_mean, self.target_var))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        momentum = 0.1 if self.momentum is None else self.momentum
        if self.training and self.split is not None:
            outs, stats = [], []
            for part, domain in zip((x[:self.split], x[self.split:]), DOMAINS, strict=True):
                # BN with momentum 1 leaves this part's batch mean and unbiased variance in
                # the buffers it is given (cheaper than computing them a second time)
                mean, var = torch.zeros_like(self.running_mean), torch.ones_like(self.running_var)
                outs.append(F.batch_norm(part, mean, var, self.weight, self.bias, True, 1.0,
                                         self.eps))
                with torch.no_grad():
                    running_mean, running_var = self._statistics(domain)
                    running_mean.lerp_(mean, momentum)
                    running_var.lerp_(var, momentum)
                stats.append((mean, var))
            alpha = transferability(*stats[0], *stats[1], self.eps)
            return torch.cat(outs) * (1.0 + alpha.view(1, -1, 1, 1))
        with torch.no_grad():
            scale = 1.0 + transferability(self.running_mean, self.running_var,
                                          self.target_mean, self.target_var, self.eps)
        # (1 + alpha)(gamma x_hat + beta) as BN with affine (1 + alpha) gamma, (1 + alpha) beta:
        # the same values and gradients, without another pass over the activations
        weight = scale if self.weight is None else self.weight * scale
        bias = None if self.bias is None else self.bias * scale
        return F.batch_norm(x, *self._statistics(self.domain), weight, bias, self.training,
                            momentum, self.eps)


def transnorm_layers(model: nn.Module) -> list[TransNorm2d]:
    return [m for m in model.modules() if isinstance(m, TransNorm2d)]


def to_transnorm(model: nn.Module) -> nn.Module:
    """Every 2-d BN of the model becomes a :class:`TransNorm2d`."""
    require_batchnorm(model, "TransNorm")
    paths = [n for n, m in model.named_modules()
             if isinstance(m, nn.BatchNorm2d) and not isinstance(m, TransNorm2d)]
    return replace_modules(model, paths, TransNorm2d)


@ADAPTERS.register("transnorm")
class TransNorm(Adapter):
    """TransNorm: domain-specific BN statistics, a shared affine and a transferability
    attention over channels, in every BN layer (Wang et al., NeurIPS 2019, Sec. 3).

    Each training step passes the labelled source batch and an unlabeled target batch
    through the network together: in every layer each part is normalized with its own
    batch statistics (separate running averages per domain), both parts share gamma and
    beta, and the output is scaled by ``1 + alpha`` with alpha from the distance between
    the two parts' standardized channel means (``transferability``). The loss is the
    source cross-entropy. The paper plugs TransNorm into adversarial adaptation methods
    (DANN, CDAN) and reports those combinations; this is TransNorm with no adaptation loss,
    the normalization alone (compare it with DSBN's plain form, which also learns only
    target statistics). At test time a domain's images are normalized with that domain's
    running statistics (context ``role``: target cells use the target's, the source test
    split the source's), alpha from the two running averages.

    Cost: every step forwards and backpropagates a target batch as large as the source
    batch, so training takes at least twice plain source training (digits: 2.38x CPU time,
    ``benchmarks/training_overhead.py``).

    Trains: all weights on labelled source data, with unlabeled target images through the
    target statistics. Adapts: nothing at test time beyond selecting the domain's
    statistics. Resets: nothing to reset.
    """

    setting = "da"
    changes_training = True
    owns_training_loss = True
    tasks = frozenset({"classification"})

    def prepare(self, model: nn.Module) -> nn.Module:
        return to_transnorm(model)

    def set_context(self, model: nn.Module, context: Mapping[str, Any]) -> None:
        select_role(transnorm_layers(model), context)

    def training_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                      x_target: torch.Tensor | None, step: int) -> torch.Tensor:
        if x_target is None:
            raise ValueError("transnorm trains with unlabeled target data (setting da)")
        with source_target_split(transnorm_layers(model), len(x)):
            logits = model(torch.cat([x, x_target]))
        return F.cross_entropy(logits[:len(x)], y)
