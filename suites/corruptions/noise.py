"""Noise corruptions of CIFAR-10-C (Hendrycks & Dietterich, ICLR 2019): gaussian, shot,
impulse and speckle noise, with the CIFAR (32x32) constants of ``make_cifar_c.py``."""

from __future__ import annotations

import torch

GAUSSIAN_NOISE = (0.04, 0.06, 0.08, 0.09, 0.10)  # standard deviation
SHOT_NOISE = (500, 250, 100, 75, 50)  # photons per unit intensity
IMPULSE_NOISE = (0.01, 0.02, 0.03, 0.05, 0.07)  # fraction of values flipped
SPECKLE_NOISE = (0.06, 0.1, 0.12, 0.16, 0.2)  # standard deviation of the multiplier


def gaussian_noise(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    scale = GAUSSIAN_NOISE[severity - 1]
    return x + scale * torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)


def shot_noise(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    photons = SHOT_NOISE[severity - 1]
    return torch.poisson(x * photons, generator=gen) / photons


def impulse_noise(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    """skimage's salt & pepper: every channel value independently flips with probability
    ``amount``, to 1 or 0 with equal odds (so a flipped pixel is usually coloured)."""
    amount = IMPULSE_NOISE[severity - 1]
    flipped = torch.rand(x.shape, generator=gen, device=x.device) < amount
    salt = torch.rand(x.shape, generator=gen, device=x.device) < 0.5
    return torch.where(flipped, salt.to(x.dtype), x)


def speckle_noise(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    scale = SPECKLE_NOISE[severity - 1]
    return x + x * scale * torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
