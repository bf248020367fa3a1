"""Metrics computed by the runner from an adapter's predictions and the labels it holds.

A metric accumulates batches of (logits, labels) and returns a dict whose ``score`` is the
suite's headline number in percent, higher is better.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


class Metric:
    name: str = ""
    higher_is_better: bool = True

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        raise NotImplementedError

    def result(self) -> dict[str, float]:
        raise NotImplementedError


class Accuracy(Metric):
    """Top-1 accuracy (%), plus expected calibration error (%, 15 equal-width confidence
    bins), the mean Shannon entropy of the predictions (nats), and a collapse check.

    ``top_class_share`` is the share (%) of predictions that go to the most predicted class.
    ``collapsed`` is 1 when that class takes at least half of the predictions *and* at least
    twice its true share of the labels, else 0: a model that answers (nearly) one class for
    everything. A target whose labels are themselves mostly one class is not flagged.
    """

    name = "accuracy"
    ece_bins = 15

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self._confidence: list[torch.Tensor] = []
        self._correct: list[torch.Tensor] = []
        self._entropy: list[torch.Tensor] = []
        self._predicted = torch.zeros(num_classes, dtype=torch.int64)
        self._labels = torch.zeros(num_classes, dtype=torch.int64)

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
        self._predicted += torch.bincount(predicted, minlength=self.num_classes)
        self._labels += torch.bincount(labels.cpu(), minlength=self.num_classes)

    def result(self) -> dict[str, float]:
        confidence = torch.cat(self._confidence)
        correct = torch.cat(self._correct)
        top = int(self._predicted.argmax())
        share = self._predicted[top].item() / len(correct)
        true_share = self._labels[top].item() / len(correct)
        return {
            "score": 100.0 * correct.mean().item(),
            "ece": 100.0 * expected_calibration_error(confidence, correct, self.ece_bins),
            "entropy": torch.cat(self._entropy).mean().item(),
            "n": float(len(correct)),
            "top_class_share": 100.0 * share,
            "collapsed": float(share >= 0.5 and share >= 2 * true_share),
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


IGNORE_INDEX = 255
"""Label of pixels that count for nothing (Cityscapes' ignore trainId)."""


class MeanIoU(Metric):
    """Mean intersection over union (%) for semantic segmentation, from one confusion matrix
    accumulated over every pixel of the split (not an average of per-image scores).

    Pixels labelled ``ignore_index`` (255) are skipped. For class c with confusion matrix
    M[true, predicted]: IoU_c = M[c, c] / (sum_j M[c, j] + sum_i M[i, c] - M[c, c]).
    Absent classes: a class with no pixel in the ground truth *and* none in the predictions
    has an undefined IoU (0/0) and is left out of the mean (reported as NaN); a class that
    is only predicted, or only in the ground truth, has IoU 0 and counts. This matches the
    usual Cityscapes evaluation (e.g. RobustNet's ``evaluate_eval``, nanmean over classes).

    ``result()``: ``score`` = mIoU in percent, ``iou/<class>`` = per-class IoU in percent,
    ``pixel_accuracy`` in percent and ``n_pixels`` (non-ignored pixels).
    """

    name = "miou"

    def __init__(
        self, num_classes: int, class_names: Sequence[str] | None = None,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.num_classes = num_classes
        self.class_names = (list(class_names) if class_names is not None
                            else [str(c) for c in range(num_classes)])
        self.ignore_index = ignore_index
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        if logits.ndim != 4 or logits.shape[1] != self.num_classes:
            raise ValueError(f"expected logits of shape (N, {self.num_classes}, H, W), "
                             f"got {tuple(logits.shape)}")
        if labels.shape != (logits.shape[0], *logits.shape[2:]):
            raise ValueError(f"labels of shape {tuple(labels.shape)} do not match logits "
                             f"{tuple(logits.shape)}; expected (N, H, W)")
        predicted = logits.detach().argmax(1).cpu().flatten()
        truth = labels.detach().cpu().flatten().long()
        valid = truth != self.ignore_index
        truth, predicted = truth[valid], predicted[valid]
        if len(truth) and (truth.min() < 0 or truth.max() >= self.num_classes):
            raise ValueError(f"labels must be in [0, {self.num_classes}) or "
                             f"{self.ignore_index} (ignore); got {truth.min()}..{truth.max()}")
        self.confusion += torch.bincount(
            truth * self.num_classes + predicted, minlength=self.num_classes ** 2
        ).reshape(self.num_classes, self.num_classes)

    def per_class_iou(self) -> torch.Tensor:
        """IoU per class as a float64 tensor; NaN for classes absent from truth and prediction."""
        m = self.confusion.double()
        hits = m.diagonal()
        union = m.sum(0) + m.sum(1) - hits
        return torch.where(union > 0, hits / union.clamp_min(1), torch.full_like(hits, math.nan))

    def result(self) -> dict[str, float]:
        iou = self.per_class_iou()
        present = ~iou.isnan()
        total = int(self.confusion.sum())
        out = {
            "score": 100.0 * iou[present].mean().item() if present.any() else math.nan,
            "pixel_accuracy": (100.0 * self.confusion.diagonal().sum().item() / total
                               if total else math.nan),
            "n_pixels": float(total),
        }
        out.update({f"iou/{name}": 100.0 * v for name, v in zip(self.class_names,
                                                                 iou.tolist(), strict=True)})
        return out


METRICS = {"accuracy": Accuracy, "miou": MeanIoU}


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
    from scipy import stats  # imported here: ~1 s that a cached re-run should not pay

    return mean, std, float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
