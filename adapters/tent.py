"""Tent -- Wang, Shelhamer, Liu, Olshausen, Darrell. "Tent: Fully Test-Time Adaptation by
Entropy Minimization", ICLR 2021 (arXiv:2006.10726)."""

from __future__ import annotations

import torch
from torch import nn

from benchmark.adapter import Adapter
from benchmark.layers.losses import softmax_entropy
from benchmark.layers.tta import adapt_batchnorm_affine, make_optimizer
from benchmark.registry import ADAPTERS


@ADAPTERS.register("tent")
class Tent(Adapter):
    """Tent: minimize the entropy of test predictions by updating only BN's affine parameters.

    Recipe (paper Sec. 3, reference ``tent.py``):
    1. configure: BN layers normalize with the test batch's statistics (running statistics
       are neither used nor updated); every parameter is frozen except BN's gamma and beta.
    2. for each test batch: forward, loss = mean entropy of the softmax predictions, one
       optimizer step (``steps`` per batch). The returned prediction is the output of the
       forward pass before that step, so each batch is predicted online, then learned from.
    3. reset restores the model and the optimizer state (episodic evaluation resets them
       before every target).

    Defaults are the reference CIFAR-10-C setting: Adam, lr 1e-3, betas (0.9, 0.999), no
    weight decay, 1 step per batch. Unlike the reference (which calls ``model.train()``),
    only the BN layers are switched to train mode, so dropout, if a model has it, stays off.

    Trains: nothing at training time. Adapts: BN weight and bias, online. Resets: model
    parameters and optimizer state.
    """

    defaults = {"lr": 1e-3, "steps": 1, "optimizer": "adam", "beta1": 0.9, "momentum": 0.9,
                "weight_decay": 0.0}

    def setup(self, model: nn.Module) -> None:
        if int(self.hparams["steps"]) < 1:
            raise ValueError("Tent needs steps >= 1")
        self.optimizer = make_optimizer(adapt_batchnorm_affine(model, "Tent"), self.hparams)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        model = self._require_model()
        with torch.enable_grad():  # adapt even if the caller runs under no_grad
            for _ in range(int(self.hparams["steps"])):
                outputs = model(x)
                loss = softmax_entropy(outputs).mean()
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
        return outputs.detach()
