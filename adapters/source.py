"""Source: the trained source model as it is; the reference every method is compared to."""

from __future__ import annotations

from benchmark.adapter import Adapter
from benchmark.registry import ADAPTERS


@ADAPTERS.register("source")
class Source(Adapter):
    """No adaptation: the source model in eval mode, BN with its source running statistics.

    Trains: nothing beyond the plain source recipe. Adapts: nothing. Resets: nothing to reset.
    """
