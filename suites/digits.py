"""Embedded digits suite: scikit-learn's bundled handwritten digits -> an MNIST-M style target."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmark.registry import SUITES
from benchmark.suite import DomainData, Recipe, Split, Suite
from suites._photos import random_crops


@functools.cache
def digit_splits(size: int, split_seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The 1,797 8x8 digits, upsampled to ``size`` (bilinear), 3 channels, ink = 1,
    split 2/3 train, 1/3 test, stratified by class with a fixed seed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0)[:, None]
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    images = images.clamp(0, 1).expand(-1, 3, -1, -1).contiguous()
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=1 / 3, stratify=bunch.target, random_state=split_seed
    )
    return {
        "train": (images[train_idx], labels[train_idx]),
        "test": (images[test_idx], labels[test_idx]),
    }


def blend_with_photos(
    digits: torch.Tensor, seed: int, zoom: int = 2, brightness: float = 0.5
) -> torch.Tensor:
    """MNIST-M style blending (Ganin et al., 2016): |photo crop - digit| per channel, so the
    digit shows as the colour-inverted photo on a natural-image background.

    Two choices adapt the recipe to 8x8 digits, which are far blurrier than MNIST's:
    crops of (size / zoom) pixels of the full-resolution photos are upsampled to the digit
    size (full-detail texture at this scale erases the strokes), and the photos are scaled to
    ``brightness`` so the digit stays brighter than its background. With full-brightness
    photos every bright crop inverts its digit; measured on 3 seeds that leaves source at 27%
    and AdaBN/PTBN/Tent within 3 points of it -- a shift no normalization method can act on.
    """
    rng = np.random.default_rng(seed)
    size = digits.shape[-1]
    crops = random_crops(len(digits), size // zoom, rng, downscale=1)
    patches = F.interpolate(torch.from_numpy(crops).permute(0, 3, 1, 2), size=(size, size),
                            mode="bilinear", align_corners=False)
    return (brightness * patches - digits).abs()


@SUITES.register("digits")
class Digits(Suite):
    """Embedded: sklearn handwritten digits (clean) -> digits-m (blended with bundled photos).

    Source ``digits``: the 8x8 scikit-learn digits upsampled to 32x32, white on black, 3
    channels. Target ``digits-m``: the same splits blended MNIST-M style, |photo - digit|, with
    random crops of natural photos bundled with scikit-learn and scikit-image (photos at half
    brightness; see ``blend_with_photos``). Splits are fixed (stratified,
    seed 0): 1,198 train and 599 test digits. ``digits-m`` blends each test digit with three
    different photo crops (1,797 test images) to reduce evaluation noise, and each train digit
    once (the unlabeled target data of domain-adaptation methods). Scores use test splits.
    """

    source = "digits"
    targets = ("digits-m",)
    num_classes = 10
    size = 32
    split_seed = 0
    recipe = Recipe(arch="small_resnet", epochs=12, batch_size=64, lr=0.05, augment="shift")
    eval_batch_size = 128
    provides = frozenset({"domain_ids"})
    target_test_blends = 3

    # Fixed per (domain, split), independent of the run seed: the data never changes.
    _blend_seeds = {("digits-m", "train"): 1001, ("digits-m", "test"): 1002}

    def __init__(self, root=None, download: bool = False) -> None:
        super().__init__(root, download)
        self._cache: dict[tuple[str, str], DomainData] = {}

    def data_paths(self) -> list[Path]:
        from suites._photos import package_data_paths

        return package_data_paths()

    def load(self, domain: str, split: Split) -> DomainData:
        if domain not in self.domains:
            raise KeyError(f"suite {self.name!r} has no domain {domain!r}; has {self.domains}")
        if split not in ("train", "test"):
            raise KeyError(f"unknown split {split!r}; use 'train' or 'test'")
        if (domain, split) not in self._cache:
            images, labels = digit_splits(self.size, self.split_seed)[split]
            if domain == "digits-m":
                if split == "test":  # several blends per digit: less evaluation noise
                    images = images.repeat(self.target_test_blends, 1, 1, 1)
                    labels = labels.repeat(self.target_test_blends)
                images = blend_with_photos(images, self._blend_seeds[(domain, split)])
            self._cache[(domain, split)] = DomainData(images, labels)
        return self._cache[(domain, split)]
