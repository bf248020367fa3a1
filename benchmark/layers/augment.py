"""Test-time augmentations the teacher-student methods share, built from
``torchvision.transforms.v2`` (applied to a whole batch: one random draw per call)."""

from __future__ import annotations

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF


def random_shift(x: torch.Tensor, pixels: int = 2,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Each image translated by up to ``pixels`` in each direction (zero padding, cropped back
    to its size); the recipes' ``shift`` augmentation. ``generator=None``: torch's global one."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pixels,) * 4)
    dy = torch.randint(0, 2 * pixels + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pixels + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :]
    return padded[torch.arange(n)[:, None, None, None],
                  torch.arange(x.shape[1])[None, :, None, None], rows, cols]


class RandomGamma(v2.Transform):
    """Gamma correction with gamma drawn uniformly from ``gamma`` (CoTTA's colour jitter
    includes it; torchvision's ColorJitter does not)."""

    def __init__(self, gamma: tuple[float, float]) -> None:
        super().__init__()
        self.gamma = gamma

    def make_params(self, flat_inputs: list) -> dict:
        low, high = self.gamma
        return {"gamma": float(torch.empty(1).uniform_(low, high))}

    def transform(self, inpt: torch.Tensor, params: dict) -> torch.Tensor:
        return TF.adjust_gamma(inpt, params["gamma"])


def cotta_views(size: int, padding_mode: str = "edge", blur_and_noise: bool = True,
                flip: bool = True) -> v2.Compose:
    """CoTTA's test-time augmentation for small images (Wang et al. 2022, Sec. 3.2, values
    of its CIFAR code): colour jitter with gamma, padding by half the size, random affine
    (15 degrees, 1/16 translation, 0.9-1.1 scale), [a faint Gaussian blur], centre crop
    back, [horizontal flip], [faint Gaussian noise]; clipped to [0, 1]. ROID uses it with
    reflect padding and without the blur and the noise. ``flip=False`` leaves out the
    flip, for images a mirror changes the meaning of (digits, text)."""
    steps: list[v2.Transform] = [
        v2.ColorJitter(brightness=(0.6, 1.4), contrast=(0.7, 1.3), saturation=(0.5, 1.5),
                       hue=(-0.06, 0.06)),
        RandomGamma((0.7, 1.3)),
        v2.Pad(size // 2, padding_mode=padding_mode),
        v2.RandomAffine(degrees=15, translate=(1 / 16, 1 / 16), scale=(0.9, 1.1),
                        interpolation=v2.InterpolationMode.BILINEAR),
    ]
    if blur_and_noise:
        steps.append(v2.GaussianBlur(5, sigma=(0.001, 0.5)))
    steps.append(v2.CenterCrop(size))
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    if blur_and_noise:
        steps.append(v2.GaussianNoise(mean=0.0, sigma=0.005, clip=False))
    steps.append(v2.Lambda(lambda x: x.clamp(0.0, 1.0)))
    return v2.Compose(steps)
