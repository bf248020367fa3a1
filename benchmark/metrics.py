"""Metrics computed by the runner from an adapter's predictions and the labels it holds.

A metric accumulates batches of (logits, labels) and returns a dict whose ``score`` is the
suite's headline number in percent, higher is better.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from scipy import stats


class Metric:
    name: str = ""
    higher_is_better: bool = True

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        raise NotImplementedError

    def result(self) -> dict[str, float]:
        raise NotImplementedError


class Accuracy(Metric):
    """Top-1 accuracy (%), plus expected calibration error (%, 15 equal-width confidence
    bins) and the mean Shannon entropy of the predictions (nats)."""

    name = "accuracy"
    ece_bins = 15

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self._confidence: list[torch.Tensor] = []
        self._correct: list[torch.Tensor] = []
        self._entropy: list[torch.Tensor] = []

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"expected logits of shape (N, {self.num_classes}), got {tuple(logits.shape)}"
            )
        logits = logits.detach().float().cpu()
        log_p = logits.log_softmax(1)
        p = log_p.exp()
        confidence, predicted = p.max(1)
        self._confidence.append(confidence)
        self._correct.append((predicted == labels.cpu()).float())
        self._entropy.append(-(p * log_p).sum(1))

    def result(self) -> dict[str, float]:
        confidence = torch.cat(self._confidence)
        correct = torch.cat(self._correct)
        return {
            "score": 100.0 * correct.mean().item(),
            "ece": 100.0 * expected_calibration_error(confidence, correct, self.ece_bins),
            "entropy": torch.cat(self._entropy).mean().item(),
            "n": float(len(correct)),
        }


def expected_calibration_error(
    confidence: torch.Tensor, correct: torch.Tensor, bins: int = 15
) -> float:
    """ECE = sum over bins of |bin| / N * |accuracy(bin) - confidence(bin)|, bins (k/B, (k+1)/B]."""
    edges = torch.linspace(0, 1, bins + 1)
    ece = torch.zeros(())
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            gap = (correct[in_bin].mean() - confidence[in_bin].mean()).abs()
            ece += in_bin.float().mean() * gap
    return ece.item()


METRICS = {"accuracy": Accuracy}


def make_metric(name: str, num_classes: int) -> Metric:
    try:
        return METRICS[name](num_classes)
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; known: {', '.join(METRICS)}") from None


def mean_std_ci95(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean, sample standard deviation (ddof=1) and the half-width of the two-sided 95%
    confidence interval of the mean, t-distribution with n-1 degrees of freedom.
    std and ci95 are NaN for a single value."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = sum(values) / n
    if n == 1:
        return mean, math.nan, math.nan
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, std, float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
