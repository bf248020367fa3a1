"""RoTTA -- Yuan, Xie, Li. "Robust Test-Time Adaptation in Dynamic Scenarios", CVPR 2023
(arXiv:2303.13899)."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from benchmark.adapter import Adapter
from benchmark.layers.augment import cotta_views
from benchmark.layers.robust_norm import RobustBN2d, to_robust_bn
from benchmark.layers.tta import ema_update, make_optimizer
from benchmark.registry import ADAPTERS


@dataclass
class _Item:
    image: torch.Tensor
    uncertainty: float
    age: int = 0


class CategoryBalancedMemory:
    """RoTTA's memory bank, CSTU (paper Sec. 3.3, Algorithm 1): at most ``capacity`` test
    images, at most capacity / C per pseudo-class. A new image (age 0, uncertainty = its
    entropy) enters if its class has room and the bank is not full; otherwise it replaces
    the item with the highest score lambda_t / (1 + exp(-age / capacity)) + lambda_u *
    uncertainty / ln C -- among its own class when that class is full, else among the
    majority classes -- provided that score exceeds the newcomer's. Every item ages by one
    per arrival (the newcomer included)."""

    def __init__(self, capacity: int, classes: int, lambda_t: float, lambda_u: float) -> None:
        self.capacity, self.classes = capacity, classes
        self.lambda_t, self.lambda_u = lambda_t, lambda_u
        self.items: list[list[_Item]] = [[] for _ in range(classes)]

    def score(self, age: int, uncertainty: float) -> float:
        return (self.lambda_t / (1 + math.exp(-age / self.capacity))
                + self.lambda_u * uncertainty / math.log(self.classes))

    def __len__(self) -> int:
        return sum(len(c) for c in self.items)

    def add(self, image: torch.Tensor, label: int, uncertainty: float) -> None:
        if self._make_room(label, self.score(0, uncertainty)):
            self.items[label].append(_Item(image, uncertainty))
        for members in self.items:
            for item in members:
                item.age += 1

    def _make_room(self, label: int, new_score: float) -> bool:
        if len(self.items[label]) < self.capacity / self.classes:
            if len(self) < self.capacity:
                return True
            most = max(len(c) for c in self.items)
            return self._evict([k for k, c in enumerate(self.items) if len(c) == most],
                               new_score)
        return self._evict([label], new_score)

    def _evict(self, classes: list[int], new_score: float) -> bool:
        best: tuple[float, int, int] | None = None
        for k in classes:
            for i, item in enumerate(self.items[k]):
                s = self.score(item.age, item.uncertainty)
                if best is None or s >= best[0]:
                    best = (s, k, i)
        if best is None:
            return True
        if best[0] > new_score:
            self.items[best[1]].pop(best[2])
            return True
        return False

    def contents(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, ages / capacity), class by class."""
        items = [item for members in self.items for item in members]
        return (torch.stack([i.image for i in items]),
                torch.tensor([i.age / self.capacity for i in items]))


@ADAPTERS.register("rotta")
class RoTTA(Adapter):
    """RoTTA: robust BN, a category-balanced memory, and a timeliness-weighted mean teacher.

    1. Robust BN (Eq. 4): every BN becomes a :class:`RobustBN2d` whose global statistics
       move toward each training batch by ``alpha`` and always normalize.
    2. Each test image enters the memory bank (:class:`CategoryBalancedMemory`) with the
       teacher's pseudo-label and entropy.
    3. Every ``update_every`` images: the student sees a strong augmentation of the
       memory (CoTTA's), the teacher the memory itself (both in training mode, so their
       robust BN statistics move); loss = mean over the memory of the cross-entropy to the
       teacher's softmax weighted by timeliness exp(-a) / (1 + exp(-a)), a = age /
       capacity (Eq. 8); one step on the robust BN affine parameters; teacher <- (1 -
       ``nu``) teacher + ``nu`` student.
    The batch's prediction is the teacher's (eval mode), made before adding the batch.

    Defaults: the paper's (capacity 64, update every 64 images, alpha 0.05, nu 0.001,
    lambda_t = lambda_u = 1, Adam lr 1e-3).

    Trains: nothing at training time. Adapts: robust BN statistics and affine, student and
    teacher, online. Resets: both models, the optimizer and the memory bank.
    """

    defaults = {"lr": 1e-3, "optimizer": "adam", "beta1": 0.9, "momentum": 0.9,
                "weight_decay": 0.0, "capacity": 64, "update_every": 64, "alpha": 0.05,
                "nu": 0.001, "lambda_t": 1.0, "lambda_u": 1.0}
    tasks = frozenset({"classification"})

    def attach(self, model: nn.Module) -> None:
        to_robust_bn(model, self.hparams["alpha"])  # before the state reset() returns to
        super().attach(model)

    def setup(self, model: nn.Module) -> None:
        model.eval().requires_grad_(False)
        params = []
        for layer in model.modules():
            if isinstance(layer, RobustBN2d):
                layer.requires_grad_(True)
                params += [layer.weight, layer.bias]
        if not params:
            raise ValueError("RoTTA needs BatchNorm2d layers to make robust")
        self.optimizer = make_optimizer(params, self.hparams)
        self.teacher = copy.deepcopy(model).requires_grad_(False)
        assert self.num_classes
        self.memory = CategoryBalancedMemory(self.hparams["capacity"], self.num_classes,
                                             self.hparams["lambda_t"], self.hparams["lambda_u"])
        self.seen = 0
        self._views = None

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        model = self._require_model()
        with torch.no_grad():
            model.eval()
            self.teacher.eval()
            out = self.teacher(x)
            probs = out.softmax(1)
            labels = probs.argmax(1).tolist()
            entropy = (-(probs * torch.log(probs + 1e-6)).sum(1)).tolist()
        for image, label, uncertainty in zip(x, labels, entropy, strict=True):
            self.memory.add(image, label, uncertainty)
            self.seen += 1
            if self.seen % self.hparams["update_every"] == 0:
                self._update(model)
        return out

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.teacher.eval()(x)

    def _update(self, model: nn.Module) -> None:
        model.train()
        self.teacher.train()
        images, ages = self.memory.contents()
        if self._views is None:
            self._views = cotta_views(images.shape[-1])
        with torch.enable_grad():
            with torch.no_grad():
                target = self.teacher(images).softmax(1)
            student = model(self._views(images))
            weight = torch.exp(-ages) / (1 + torch.exp(-ages))
            loss = (-(target * student.log_softmax(1)).sum(1) * weight.to(student)).mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        ema_update(self.teacher, model, 1 - self.hparams["nu"])
