"""Embedded digits-c suite: the scikit-learn digits under the 15 CIFAR-10-C corruptions."""

from __future__ import annotations

import torch

from benchmark.registry import SUITES
from benchmark.suite import DomainData, Split
from suites.corruptions import CORRUPTIONS, SEVERITIES, corrupt
from suites.digits import Digits, _digit_splits


def corruption_domain(name: str, severity: int) -> str:
    return f"{name}-{severity}"


def corruption_seed(name: str, severity: int, split: Split) -> int:
    """Fixed per (corruption, severity, split), independent of the run seed: the data never
    changes between runs, and every domain draws its own noise."""
    return 50_000 + 100 * CORRUPTIONS.index(name) + 10 * severity + (split == "train")


@SUITES.register("digits-c")
class DigitsC(Digits):
    """Embedded: sklearn handwritten digits (clean) -> the same digits under the 15 CIFAR-10-C
    corruptions x 5 severities (75 targets, e.g. ``gaussian_noise-5``).

    The source domain, splits, recipe and source model are those of the ``digits`` suite, so
    ``source`` rows of both suites are comparable. Each target is the 599-image test split
    (and, as unlabeled adaptation data, the 1,198-image train split) corrupted by
    ``suites.corruptions.corrupt`` with the CIFAR-10-C (32x32) parameters and a fixed seed
    per corruption, severity and split. Frost uses procedural textures (see
    ``suites.corruptions.weather.frost_textures``). Test splits are generated on first use
    and kept in memory as 8-bit images (the engine's output is on the 1/255 grid; 140 MB for
    all 75); train splits, needed only by domain-adaptation adapters and the data
    fingerprint, are regenerated on request (same seed, same images) to keep memory low.
    """

    targets = tuple(corruption_domain(c, s) for c in CORRUPTIONS for s in SEVERITIES)
    _domains = {corruption_domain(c, s): (c, s) for c in CORRUPTIONS for s in SEVERITIES}

    def __init__(self, root=None, download: bool = False) -> None:
        super().__init__(root, download)
        self._test_u8: dict[str, torch.Tensor] = {}

    def load(self, domain: str, split: Split) -> DomainData:
        if domain not in self._domains:
            return super().load(domain, split)  # the clean source; checks the name and split
        if split not in ("train", "test"):
            raise KeyError(f"unknown split {split!r}; use 'train' or 'test'")
        name, severity = self._domains[domain]
        images, labels = _digit_splits(self.size, self.split_seed)[split]
        if split == "train":
            return DomainData(self._generate(images, name, severity, split), labels)
        if domain not in self._test_u8:
            corrupted = self._generate(images, name, severity, split)
            self._test_u8[domain] = torch.round(corrupted * 255).to(torch.uint8)
        return DomainData(self._test_u8[domain].float() / 255, labels)

    @staticmethod
    def _generate(images: torch.Tensor, name: str, severity: int, split: Split) -> torch.Tensor:
        return corrupt(images, name, severity, corruption_seed(name, severity, split))
