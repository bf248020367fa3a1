"""ETA -- Niu, Wu, Zhang, Chen, Zheng, Zhao, Tan. "Efficient Test-Time Model Adaptation without
Forgetting", ICML 2022 (arXiv:2204.02610): EATA without its anti-forgetting term."""

from __future__ import annotations

import torch
from torch import nn

from benchmark.adapter import Adapter
from benchmark.layers.tta import adapt_batchnorm_affine, entropy_margin, eta_update, make_optimizer
from benchmark.registry import ADAPTERS


@ADAPTERS.register("eta")
class ETA(Adapter):
    """ETA: entropy minimization on reliable, non-redundant test samples, weighted by certainty.

    Per test batch (paper Sec. 4, Eqs. 6-9):
    - reliable: entropy E(x) < E0 = ``e_margin`` * ln C (C: the suite's class count);
    - non-redundant: |cos(p(x), m)| < ``d_margin``, m the moving average of the softmax of
      earlier selected samples (m <- 0.9 m + 0.1 mean p over the newly selected);
    - loss: mean over the selected samples of exp(E0 - E(x)) * E(x); one step; the batch's
      prediction is the forward pass before the step. Nothing selected: no step.
    BN layers normalize with test-batch statistics; only BN's gamma and beta adapt.

    Defaults: the CIFAR-10-C setting of the authors' follow-up harnesses (Adam lr 1e-3,
    d_margin 0.4, E0 = 0.4 ln C); the ImageNet setting is SGD lr 2.5e-4, d_margin 0.05.

    Trains: nothing at training time. Adapts: BN weight and bias, online. Resets: the model,
    the optimizer and the moving average.
    """

    defaults = {"lr": 1e-3, "optimizer": "adam", "beta1": 0.9, "momentum": 0.9,
                "weight_decay": 0.0, "e_margin": 0.4, "d_margin": 0.4}
    tasks = frozenset({"classification"})

    def setup(self, model: nn.Module) -> None:
        self.margin = entropy_margin(self.num_classes, self.hparams["e_margin"])
        self.optimizer = make_optimizer(adapt_batchnorm_affine(model, "ETA"), self.hparams)
        self.moving: torch.Tensor | None = None

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        logits, self.moving = eta_update(self._require_model(), self.optimizer, x, self.margin,
                                         self.hparams["d_margin"], self.moving)
        return logits
