"""NOTE -- Gong, Jeong, Kim, Kim, Shin, Lee. "NOTE: Robust Continual Test-time Adaptation Against
Temporal Correlation", NeurIPS 2022 (arXiv:2208.05117)."""

from __future__ import annotations

import torch
from torch import nn

from benchmark.adapter import Adapter
from benchmark.layers.losses import softmax_entropy
from benchmark.layers.robust_norm import InstanceAwareBatchNorm2d, to_instance_aware_bn
from benchmark.layers.tta import make_optimizer
from benchmark.registry import ADAPTERS


class PredictionBalancedReservoir:
    """NOTE's PBRS memory (paper Sec. 3.2, Algorithm 1): at most ``capacity`` images. When
    full, a newcomer of pseudo-class c evicts a random image of a *largest* class if c is
    not one of them; otherwise, as reservoir sampling within c, it replaces a random image
    of c with probability m_c / n_c (m_c stored, n_c seen of c) and is dropped otherwise.
    Randomness comes from torch's generator (seeded per cell by the runner)."""

    def __init__(self, capacity: int, classes: int) -> None:
        self.capacity = capacity
        self.items: list[list[torch.Tensor]] = [[] for _ in range(classes)]
        self.seen = [0] * classes

    def __len__(self) -> int:
        return sum(len(c) for c in self.items)

    def add(self, image: torch.Tensor, label: int) -> None:
        self.seen[label] += 1
        if len(self) >= self.capacity and not self._evict(label):
            return
        self.items[label].append(image)

    def _evict(self, label: int) -> bool:
        sizes = [len(c) for c in self.items]
        largest = [k for k, n in enumerate(sizes) if n == max(sizes)]
        if label not in largest:
            victim = largest[int(torch.randint(len(largest), ()))]
            self.items[victim].pop(int(torch.randint(sizes[victim], ())))
            return True
        if float(torch.rand(())) <= sizes[label] / self.seen[label]:
            self.items[label].pop(int(torch.randint(sizes[label], ())))
            return True
        return False

    def images(self) -> torch.Tensor:
        return torch.stack([image for members in self.items for image in members])


@ADAPTERS.register("note")
class NOTE(Adapter):
    """NOTE: instance-aware BN in the source model, adapted on a prediction-balanced memory.

    Training: every BN of the source model becomes an :class:`InstanceAwareBatchNorm2d`
    (IABN, k = ``k``), trained as usual on the labelled source.
    Test time, per block of ``update_every`` images (paper Sec. 3):
    1. the block is predicted in eval mode (IABN with the running statistics); each
       image enters the PBRS memory (:class:`PredictionBalancedReservoir`) under its
       predicted class;
    2. at the end of the block: one step of entropy minimization on the whole memory in
       training mode (IABN with the memory's statistics, whose running statistics move by
       ``bn_momentum``), updating only the affine parameters.
    A test batch is split at block boundaries, so predictions never use an update made
    after them.

    Defaults: the paper's (k 4, memory 64, update every 64, BN momentum 0.01, Adam lr
    1e-4).

    Trains: the source model with IABN. Adapts: IABN running statistics and affine,
    online. Resets: the model, the optimizer and the memory.
    """

    defaults = {"k": 4.0, "lr": 1e-4, "optimizer": "adam", "beta1": 0.9, "momentum": 0.9,
                "weight_decay": 0.0, "capacity": 64, "update_every": 64, "bn_momentum": 0.01}
    changes_training = True
    tasks = frozenset({"classification"})

    def prepare(self, model: nn.Module) -> nn.Module:
        return to_instance_aware_bn(model, self.hparams["k"])

    def training_signature(self) -> dict | None:
        return {"adapter": self.name, "k": self.hparams["k"]}  # test-time settings share it

    def setup(self, model: nn.Module) -> None:
        model.eval().requires_grad_(False)
        params = []
        for layer in model.modules():
            if isinstance(layer, InstanceAwareBatchNorm2d):
                layer.bn.momentum = self.hparams["bn_momentum"]
                layer.bn.requires_grad_(True)
                params += [layer.bn.weight, layer.bn.bias]
        if not params:
            raise ValueError("NOTE needs its instance-aware BN layers (train with `note`)")
        self.optimizer = make_optimizer(params, self.hparams)
        assert self.num_classes
        self.memory = PredictionBalancedReservoir(self.hparams["capacity"], self.num_classes)
        self.seen = 0

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        model = self._require_model()
        every = self.hparams["update_every"]
        outputs, start = [], 0
        while start < len(x):
            chunk = x[start:start + every - self.seen % every]
            with torch.no_grad():
                model.eval()
                out = model(chunk)
            for image, label in zip(chunk, out.argmax(1).tolist(), strict=True):
                self.memory.add(image, label)
            self.seen += len(chunk)
            if self.seen % every == 0:
                self._update(model)
            outputs.append(out)
            start += len(chunk)
        return torch.cat(outputs)

    def _update(self, model: nn.Module) -> None:
        model.train()
        with torch.enable_grad():
            loss = softmax_entropy(model(self.memory.images())).mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        model.eval()
