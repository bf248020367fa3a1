"""The suite protocol: a shift = data (source and target domains) + source-model recipe + metric.

A suite knows nothing about adapters. The runner trains the suite's recipe on the source
domain's ``train`` split and scores every adapter on each domain's ``test`` split.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from benchmark.layers.models import create_model
from benchmark.metrics import Metric, make_metric

Split = Literal["train", "test"]


@dataclass(frozen=True)
class Recipe:
    """How the source model is built and trained. Every field is part of the checkpoint key."""

    arch: str
    epochs: int
    batch_size: int
    lr: float
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    # "inv": lr * (1 + 10 p)^-0.75 at progress p, the annealing of Ganin & Lempitsky (ICML
    # 2015, arXiv:1409.7495) that SHOT's and CDAN's digit recipes use
    schedule: Literal["cosine", "constant", "inv"] = "cosine"
    augment: Literal["none", "shift"] = "none"
    arch_kwargs: tuple[tuple[str, Any], ...] = ()
    label_smoothing: float = 0.0  # cross-entropy against (1 - e) one-hot + e / classes

    def as_dict(self) -> dict[str, Any]:
        """Every field; fields added later appear only when not at their default, so the
        identities of the recipes (and checkpoints) that existed before them stay the same."""
        fields = dataclasses.asdict(self)
        if fields["label_smoothing"] == 0.0:
            del fields["label_smoothing"]
        return fields


@dataclass
class DomainData:
    """One split of one domain, in memory: float images in [0, 1] and integer labels.

    ``extra`` holds per-sample side information a suite provides (e.g. camera ids).
    """

    images: torch.Tensor  # (N, C, H, W) float32 in [0, 1]
    labels: torch.Tensor  # (N,) int64 for classification, (N, H, W) for segmentation
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.images)

    def digest(self) -> str:
        h = hashlib.sha256()
        for t in (self.images, self.labels, *(self.extra[k] for k in sorted(self.extra))):
            h.update(str((tuple(t.shape), str(t.dtype))).encode())
            h.update(t.contiguous().numpy().tobytes())
        return h.hexdigest()


class Suite:
    """Base class of every suite. Subclasses set the class attributes and implement ``load``.

    Constructed like a torchvision dataset: ``Suite(root=..., download=False)``. Embedded
    suites ignore ``root``; real ones read their files from it.
    """

    name: ClassVar[str] = ""  # set by the registry
    task: ClassVar[Literal["classification", "segmentation"]] = "classification"
    metric: ClassVar[str] = "accuracy"
    source: ClassVar[str]
    targets: ClassVar[tuple[str, ...]]
    num_classes: ClassVar[int]
    recipe: ClassVar[Recipe]
    eval_batch_size: ClassVar[int] = 128
    provides: ClassVar[frozenset[str]] = frozenset()
    # False: the suite has no source recipe to run here (e.g. ImageNet-C), so a run needs
    # --source-model or --source-checkpoint
    trains_source: ClassVar[bool] = True

    def __init__(self, root: str | Path | None = None, download: bool = False) -> None:
        self.root = Path(root) if root is not None else None
        self.download = download
        self._fingerprint: str | None = None
        self._source_fingerprint: str | None = None

    # ---- what a subclass implements -----------------------------------------------------
    def load(self, domain: str, split: Split) -> DomainData:
        raise NotImplementedError

    # ---- shared behaviour ---------------------------------------------------------------
    @property
    def domains(self) -> tuple[str, ...]:
        return (self.source, *self.targets)

    def build_model(self) -> nn.Module:
        return create_model(self.recipe.arch, self.num_classes, **dict(self.recipe.arch_kwargs))

    def make_metric(self) -> Metric:
        return make_metric(self.metric, self.num_classes)

    def fingerprint(self) -> str:
        """A hash of every split of every domain: results are only comparable when equal."""
        if self._fingerprint is None:
            h = hashlib.sha256(self.name.encode())
            for domain in self.domains:
                for split in ("train", "test"):
                    h.update(f"{domain}/{split}:{self.load(domain, split).digest()}".encode())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def target_factors(self) -> dict[str, dict[str, Any]]:
        """What varies across the targets, per target domain, e.g. ``{"fog-3": {"corruption":
        "fog", "severity": 3}}``; empty when the targets are not a factor grid. Suites whose
        targets carry ``corruption`` and ``severity`` get corruption columns on their
        leaderboard (mean error, mCE, per corruption and per severity; see
        benchmark.report.leaderboard)."""
        return {}

    def split_fingerprint(self, domain: str, split: Split) -> str:
        """A hash of one split (e.g. the unlabeled target data a ``da`` adapter trains on).
        Suites whose data sit in checksummed files override it to avoid hashing pixels."""
        return self.load(domain, split).digest()

    def source_fingerprint(self) -> str:
        """A hash of the source domain's training split (what a source model learns from):
        suites that share it, and their recipe, share trained checkpoints."""
        if self._source_fingerprint is None:
            digest = self.split_fingerprint(self.source, "train")
            self._source_fingerprint = f"{self.source}:{digest}"
        return self._source_fingerprint

    def data_paths(self) -> list[Path]:
        """Files and folders the suite's data come from. A sandboxed adapter process
        (``--sandbox``) sees none of them. Default: ``root``; embedded suites name the
        package data they are built from."""
        return [self.root] if self.root is not None else []

    @classmethod
    def summary(cls) -> str:
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""
