"""Test-only registrations: a fast variant of the digits suite and adapters that misbehave.

Imported by conftest.py and by subprocess runs (on PYTHONPATH), so both see the same names.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from benchmark.adapter import Adapter, TargetStream
from benchmark.registry import ADAPTERS, SUITES
from suites.digits import Digits


@SUITES.register("tiny-digits")
class TinyDigits(Digits):
    """Test-only: the digits data with a 4-epoch source recipe (~77% on clean digits)."""

    recipe = replace(Digits.recipe, epochs=4)


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
