"""RDumb -- Press, Schneider, Kümmerer, Bethge. "RDumb: A simple approach that questions our
progress in continual test-time adaptation", NeurIPS 2023 (arXiv:2306.05401)."""

from __future__ import annotations

import torch
from torch import nn

from benchmark.adapter import Adapter
from benchmark.layers.tta import adapt_batchnorm_affine, entropy_margin, eta_update, make_optimizer
from benchmark.registry import ADAPTERS


@ADAPTERS.register("rdumb")
class RDumb(Adapter):
    """RDumb: ETA's entropy minimization, with the model reset to the source model every T steps.

    The paper adapts with ETA's loss (reliable, non-redundant, certainty-weighted entropy;
    Niu et al. 2022) and, every ``reset_every`` = T = 1000 adaptation steps, restores the
    model, the optimizer and ETA's moving average to their state at attach -- a full reset
    that bounds how far a long stream can drag the model (paper Sec. 4). The step count
    includes steps in which ETA selected no sample (one step per test batch).

    Trains: nothing at training time. Adapts: BN weight and bias, online. Resets: the model,
    the optimizer, ETA's moving average and the step count -- every T steps and at reset.
    """

    defaults = {"lr": 1e-3, "optimizer": "adam", "beta1": 0.9, "momentum": 0.9,
                "weight_decay": 0.0, "e_margin": 0.4, "d_margin": 0.4, "reset_every": 1000}
    tasks = frozenset({"classification"})

    def setup(self, model: nn.Module) -> None:
        if self.hparams["reset_every"] < 1:
            raise ValueError("RDumb needs reset_every >= 1")
        self.margin = entropy_margin(self.num_classes, self.hparams["e_margin"])
        self.optimizer = make_optimizer(adapt_batchnorm_affine(model, "RDumb"), self.hparams)
        self.moving: torch.Tensor | None = None
        self.steps = 0

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        if self.steps == self.hparams["reset_every"]:
            self.reset()  # back to the source model; setup() zeroes the count
        logits, self.moving = eta_update(self._require_model(), self.optimizer, x, self.margin,
                                         self.hparams["d_margin"], self.moving)
        self.steps += 1
        return logits
