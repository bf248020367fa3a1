"""Embedded digits-drift suite: a long stream whose corruption and severity drift continuously."""

from __future__ import annotations

import numpy as np
import torch

from benchmark.registry import SUITES
from benchmark.suite import DomainData, Split
from suites.corruptions import CORRUPTIONS, corrupt
from suites.digits import digit_splits
from suites.digits_c import DigitsC

TRANSITIONS = 15
PASSES = 4  # passes over the test split per transition: 2,396 images each, 35,940 in all
WALK_SEED = 2023


def walk() -> list[tuple[str, int]]:
    """The (corruption, severity) waypoints: every corruption once in a seeded order, each
    at a severity from 3 to 5, closing the loop back to the first."""
    rng = np.random.default_rng(WALK_SEED)
    order = [CORRUPTIONS[i] for i in rng.permutation(len(CORRUPTIONS))]
    severities = rng.integers(3, 6, size=len(order)).tolist()
    points = list(zip(order, severities, strict=True))
    return points + points[:1]


@SUITES.register("digits-drift")
class DigitsDrift(DigitsC):
    """Embedded: sklearn digits (clean) -> 35,940 images of continuously drifting corruptions.

    A long-horizon stream in the spirit of continuously changing corruptions (Press et al.,
    NeurIPS 2023, arXiv:2306.05401): a walk through the 15 CIFAR-10-C corruptions in a
    seeded order, each at severity 3-5. Target ``drift-k`` is the transition from waypoint
    k, (A, s_a), to waypoint k+1, (B, s_b): ``PASSES`` passes over the 599 test images
    (shuffled per pass, seeded), image j of the N getting (1 - t) A_{s_a}(x) + t B_{s_b}(x)
    with t = j / (N - 1), so the shift changes a little with every image and the stretches
    join without a jump. Run it with ``--protocols continual`` (one model through all 15
    stretches, 35,940 images; never reset) or ``recurring``; the per-stretch scores and
    online curves show whether a method degrades as the stream goes on. Source domain,
    recipe and checkpoints are the ``digits`` suite's. Generated with the same engine and
    cached like ``digits-c``.
    """

    targets = tuple(f"drift-{k:02d}" for k in range(TRANSITIONS))
    _domains = {f"drift-{k:02d}": (k, 0) for k in range(TRANSITIONS)}

    def load(self, domain: str, split: Split) -> DomainData:
        if domain not in self._domains:
            return super().load(domain, split)  # the clean source
        if split not in ("train", "test"):
            raise KeyError(f"unknown split {split!r}; use 'train' or 'test'")
        images, labels = digit_splits(self.size, self.split_seed)[split]
        k = int(domain.rsplit("-", 1)[1])
        if split == "train":
            mixed, order = self._transition(images, k, split, passes=1)
            return DomainData(mixed, labels[order])
        if domain not in self._test_u8:
            cached = self._cached_test_set(domain)
            if cached is None:
                mixed, _ = self._transition(images, k, split, PASSES)
                cached = torch.round(mixed * 255).to(torch.uint8)
            self._test_u8[domain] = cached
        _, order = self._order(len(images), k, split, PASSES)
        return DomainData(self._test_u8[domain].float() / 255, labels[order])

    def target_factors(self) -> dict[str, dict[str, object]]:
        points = walk()
        return {f"drift-{k:02d}": {"from": f"{points[k][0]}-{points[k][1]}",
                                   "to": f"{points[k + 1][0]}-{points[k + 1][1]}"}
                for k in range(TRANSITIONS)}

    @staticmethod
    def _order(n: int, k: int, split: Split, passes: int) -> tuple[int, torch.Tensor]:
        generator = torch.Generator().manual_seed(70_000 + 10 * k + (split == "train"))
        return passes * n, torch.cat([torch.randperm(n, generator=generator)
                                      for _ in range(passes)])

    def _transition(self, images: torch.Tensor, k: int, split: Split, passes: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        (a, s_a), (b, s_b) = walk()[k], walk()[k + 1]
        total, order = self._order(len(images), k, split, passes)
        seed = 80_000 + 100 * k + 10 * passes + (split == "train")
        start = corrupt(images[order], a, s_a, seed)
        end = corrupt(images[order], b, s_b, seed + 1)
        t = torch.linspace(0, 1, total).view(-1, 1, 1, 1)
        return (1 - t) * start + t * end, order
