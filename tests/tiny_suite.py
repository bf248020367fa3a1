"""Test-only registrations: a fast variant of the digits suite and adapters that misbehave.

Imported by conftest.py and by subprocess runs (on PYTHONPATH), so both see the same names.
"""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar

import torch

from benchmark.adapter import Adapter, TargetStream
from benchmark.registry import ADAPTERS, SUITES
from suites.digits import Digits
from suites.imagenet_c import ImageNetC


@SUITES.register("tiny-digits")
class TinyDigits(Digits):
    """Test-only: the digits data with a 4-epoch source recipe (~77% on clean digits)."""

    recipe = replace(Digits.recipe, epochs=4)


@SUITES.register("tiny-digits-1000")
class TinyDigits1000(TinyDigits):
    """Test-only: the digits data scored with 1000 classes (labels stay 0-9), the class
    count of ImageNet models given with --source-model."""

    num_classes = 1000


@SUITES.register("tiny-digits-64")
class TinyDigits64(TinyDigits):
    """Test-only: the first 64 images of every split (for CPU tests of large models)."""

    def load(self, domain: str, split: str):
        from benchmark.suite import DomainData

        data = super().load(domain, split)
        return DomainData(data.images[:64], data.labels[:64])


@SUITES.register("tiny-imagenet-c")
class TinyImageNetC(ImageNetC):
    """Test-only: ImageNet-C's layout and transform with two targets (fixture files)."""

    targets = ("gaussian_noise-5", "contrast-2")


def is_photo_domain(x: torch.Tensor) -> bool:
    """Clean digits have large exact-zero backgrounds; photo blends almost never do."""
    return (x == 0).float().mean().item() < 0.1


@ADAPTERS.register("test-raises-on-photos")
class RaisesOnPhotos(Adapter):
    """Test-only: raises while adapting to the photo-blended domain."""

    def adapt(self, stream: TargetStream) -> None:
        if is_photo_domain(next(iter(stream))):
            raise RuntimeError("deliberate failure on the photo domain")


@ADAPTERS.register("test-nan")
class ProducesNaN(Adapter):
    """Test-only: predicts NaN."""

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((len(x), 10), float("nan"))


@SUITES.register("tiny-digits-c")
class TinyDigitsC(TinyDigits):
    """Test-only: the tiny-digits source model with three corrupted copies of its test split
    as targets (a multi-target suite for the protocol tests)."""

    targets = ("gaussian_noise-5", "contrast-5", "digits-m")

    def load(self, domain: str, split: str):
        from benchmark.suite import DomainData
        from suites.corruptions import corrupt
        from suites.digits import digit_splits

        if domain in ("gaussian_noise-5", "contrast-5"):
            if (domain, split) not in self._cache:
                images, labels = digit_splits(self.size, self.split_seed)[split]
                name = domain.rsplit("-", 1)[0]
                self._cache[(domain, split)] = DomainData(corrupt(images, name, 5, seed=3),
                                                          labels)
            return self._cache[(domain, split)]
        return Digits.load(self, domain, split)


@ADAPTERS.register("test-spy")
class Spy(Adapter):
    """Test-only: records everything the runner hands it, and predicts with the model."""

    seen: ClassVar[list[tuple[str, object]]] = []

    def set_context(self, model, context) -> None:
        Spy.seen.append(("context", dict(context)))

    def adapt(self, stream: TargetStream) -> None:
        Spy.seen.append(("stream", stream))
        for x in stream:
            Spy.seen.append(("adapt-batch", x))

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        Spy.seen.append(("predict-batch", x))
        logits = super().predict(x)
        Spy.seen.append(("logits", logits))
        return logits


@ADAPTERS.register("test-da-spy")
class DASpy(Adapter):
    """Test-only: a domain-adaptation adapter that records the target batches of training."""

    setting = "da"
    changes_training = True
    target_batches: ClassVar[list[tuple[dict, torch.Tensor]]] = []
    _context: dict = {}

    def set_context(self, model, context) -> None:
        self._context = dict(context)

    def target_loss(self, model, x: torch.Tensor):
        DASpy.target_batches.append((self._context, x))
        model(x)  # statistics only, like plain DSBN
        return None
