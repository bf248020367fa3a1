"""SAR -- Niu, Wu, Zhang, Wen, Chen, Zhao, Tan. "Towards Stable Test-Time Adaptation in Dynamic
Wild World", ICLR 2023 (arXiv:2302.12400)."""

from __future__ import annotations

import math

import torch
from torch import nn

from benchmark.adapter import Adapter
from benchmark.layers.losses import softmax_entropy
from benchmark.layers.tta import adapt_batchnorm_affine, entropy_margin, top_stage
from benchmark.registry import ADAPTERS


@ADAPTERS.register("sar")
class SAR(Adapter):
    """SAR: sharpness-aware minimization of reliable entropy, with model recovery.

    Per test batch (paper Sec. 4, Eqs. 2-5, Algorithm 1):
    1. forward; reliable samples S = {x : E(x) < E0}, E0 = ``e_margin`` * ln C; the batch's
       prediction is this forward pass;
    2. sharpness-aware step (SAM, Foret et al. 2021): g = grad of mean_S E(x);
       eps = ``rho`` * g / ||g||; move the parameters to theta + eps;
    3. forward again at theta + eps; keep the samples of S whose new entropy is still
       < E0; theta <- SGD step (lr, momentum 0.9) using the gradient of their mean entropy
       at theta + eps, applied from theta;
    4. recovery: e_m <- 0.9 e_m + 0.1 * (that loss) (the first value starts it); when
       e_m < ``reset_constant`` (0.2) the model is collapsing onto trivial solutions:
       restore the source model and the optimizer, clear e_m.
    Adapted: BN's gamma and beta (batch statistics), except in the network's top stage
    (``layer4`` of a ResNet-50; the last stage here), which the paper leaves frozen.

    Defaults: SGD with momentum 0.9 at lr 1e-3 (the CIFAR-10-C setting of the authors'
    follow-up harnesses; the paper's ImageNet value is 2.5e-4 for batch 64), rho 0.05,
    E0 = 0.4 ln C, e_m 0.2.

    Trains: nothing at training time. Adapts: BN weight and bias below the top stage,
    online. Resets: the model, the optimizer and e_m (also whenever recovery triggers).
    """

    defaults = {"lr": 1e-3, "momentum": 0.9, "rho": 0.05, "e_margin": 0.4,
                "reset_constant": 0.2}
    tasks = frozenset({"classification"})

    def setup(self, model: nn.Module) -> None:
        self.margin = entropy_margin(self.num_classes, self.hparams["e_margin"])
        self.params = adapt_batchnorm_affine(model, "SAR", exclude=top_stage(model))
        self.optimizer = torch.optim.SGD(self.params, lr=self.hparams["lr"],
                                         momentum=self.hparams["momentum"])
        self.ema: float | None = None

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        model = self._require_model()
        with torch.enable_grad():
            logits = model(x)
            entropy = softmax_entropy(logits)
            reliable = entropy < self.margin
            # an empty selection gives a NaN loss and zero gradients: eps = 0, and the
            # SGD step below still moves by its momentum, as in the reference code
            self.optimizer.zero_grad(set_to_none=True)
            entropy[reliable].mean().backward()
            self._sam_step(model, x, reliable)
        if self.ema is not None and self.ema < self.hparams["reset_constant"]:
            self.reset()
        return logits.detach()

    def _sam_step(self, model: nn.Module, x: torch.Tensor, reliable: torch.Tensor) -> None:
        grads = [p.grad for p in self.params if p.grad is not None]
        norm = torch.norm(torch.stack([g.norm(2) for g in grads]), 2)
        scale = self.hparams["rho"] / (norm + 1e-12)
        theta = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p in self.params:
                if p.grad is not None:
                    p.add_(p.grad * scale)
        self.optimizer.zero_grad(set_to_none=True)
        entropy = softmax_entropy(model(x))[reliable]
        loss = entropy[entropy < self.margin].mean()
        if not math.isnan(loss.item()):
            value = loss.item()
            self.ema = value if self.ema is None else 0.9 * self.ema + 0.1 * value
        loss.backward()
        with torch.no_grad():  # back to theta; the step uses the gradient taken at theta+eps
            for p, original in zip(self.params, theta, strict=True):
                p.copy_(original)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
