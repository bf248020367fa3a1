"""shiftbench: a benchmark for normalization-based domain adaptation and robustness."""

from benchmark.adapter import Adapter, TargetStream
from benchmark.registry import ADAPTERS, SUITES
from benchmark.suite import DomainData, Recipe, Suite

__all__ = ["ADAPTERS", "SUITES", "Adapter", "DomainData", "Recipe", "Suite", "TargetStream"]
