"""The Context Normalization layer -- Faye, Dilmi, Azzag, Lebbah, Bouchaffra, "Context
Normalization Layer with Applications" (arXiv:2303.07651) -- shared by the ``context_norm``
and ``context_norm_group`` adapters."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SOURCE_CONTEXT, TARGET_CONTEXT = 0, 1


class ContextNorm(nn.Module):
    """Normalize each sample with a mean and standard deviation learned for its context.

    The authors' formulation: the context id r is one-hot encoded and fed to a small network
    whose output feeds two heads that produce mu_r and sigma_r (per channel); then
    ``x_hat = (x - mu_r) / sqrt(sigma_r**2 + eps)`` and ``y = gamma * x_hat + beta``.
    sigma_r = exp(head output) keeps it positive. The heads start at zero (mu_r = 0,
    sigma_r = 1 for every context). ``context`` is an int (one context for the whole batch)
    or a LongTensor of per-sample ids, set by the adapter before each forward pass.
    """

    def __init__(self, num_features: int, num_contexts: int, hidden: int = 16,
                 eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features, self.num_contexts, self.eps = num_features, num_contexts, eps
        self.encoder = nn.Sequential(nn.Linear(num_contexts, hidden), nn.ReLU())
        self.mean_head = nn.Linear(hidden, num_features)
        self.log_std_head = nn.Linear(hidden, num_features)
        for head in (self.mean_head, self.log_std_head):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.context: int | torch.Tensor = SOURCE_CONTEXT

    def context_statistics(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu_r, sigma_r), each (len(context), C), for a LongTensor of context ids."""
        one_hot = F.one_hot(context, self.num_contexts).to(self.weight.dtype)
        hidden = self.encoder(one_hot)
        return self.mean_head(hidden), self.log_std_head(hidden).exp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context = self.context
        if isinstance(context, int):
            context = torch.full((len(x),), context, dtype=torch.long)
        mean, std = self.context_statistics(context.to(x.device))
        shape = (len(x), self.num_features) + (1,) * (x.ndim - 2)
        x_hat = (x - mean.view(shape)) / (std.view(shape) ** 2 + self.eps).sqrt()
        affine = (1, self.num_features) + (1,) * (x.ndim - 2)
        return self.weight.view(affine) * x_hat + self.bias.view(affine)


class InputContextNorm(nn.Module):
    """``net(context_norm(x))``: CN applied to the input channels ("CN-Channels")."""

    def __init__(self, net: nn.Module, norm: ContextNorm) -> None:
        super().__init__()
        self.context_norm = norm
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.context_norm(x))


def context_layers(model: nn.Module) -> list[ContextNorm]:
    return [m for m in model.modules() if isinstance(m, ContextNorm)]


def set_contexts(model: nn.Module, context: int | torch.Tensor) -> None:
    """Give every CN layer of ``model`` the context of the next forward pass: one id for
    the whole batch, or a LongTensor of per-sample ids."""
    for layer in context_layers(model):
        layer.context = context


def add_input_context_norm(model: nn.Module, num_contexts: int, hidden: int,
                           owner: str) -> InputContextNorm:
    """``model`` behind a CN layer on its input channels (those of its first convolution);
    ``owner`` names the adapter in the error for a model without one."""
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is None:
        raise ValueError(f"{owner} needs a convolutional model")
    return InputContextNorm(model, ContextNorm(first.in_channels, num_contexts, hidden))


def replace_first_batchnorm(module: nn.Module, num_contexts: int, hidden: int) -> bool:
    """Replace the first BatchNorm2d below ``module`` (in place) by a ContextNorm; False if
    there is none."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, ContextNorm(child.num_features, num_contexts, hidden,
                                              child.eps))
            return True
        if replace_first_batchnorm(child, num_contexts, hidden):
            return True
    return False
