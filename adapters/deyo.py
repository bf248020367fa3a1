"""DeYO -- Lee, Jung, Lee, Park, Shin, Hwang, Yoon. "Entropy is not Enough for Test-Time
Adaptation: From the Perspective of Disentangled Factors", ICLR 2024 (arXiv:2403.07366)."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.transforms.v2 import functional as TF

from benchmark.adapter import Adapter
from benchmark.layers.losses import softmax_entropy
from benchmark.layers.tta import adapt_batchnorm_affine, entropy_margin, make_optimizer, top_stage
from benchmark.registry import ADAPTERS


def shuffle_patches(x: torch.Tensor, grid: int) -> torch.Tensor:
    """Each image cut into ``grid`` x ``grid`` patches, put back in a random order (one
    permutation per image), which destroys the object's shape but keeps local texture
    (DeYO's "patch" transformation; sizes not divisible by ``grid`` are resized to the
    nearest multiple below and back)."""
    n, c, h, w = x.shape
    side_h, side_w = (h // grid) * grid, (w // grid) * grid
    y = TF.resize(x, [side_h, side_w]) if (side_h, side_w) != (h, w) else x
    ph, pw = side_h // grid, side_w // grid
    patches = y.reshape(n, c, grid, ph, grid, pw).permute(0, 2, 4, 1, 3, 5)
    patches = patches.reshape(n, grid * grid, c, ph, pw)
    order = torch.argsort(torch.rand(n, grid * grid), dim=1).to(x.device)
    patches = patches[torch.arange(n, device=x.device).unsqueeze(1), order]
    y = patches.reshape(n, grid, grid, c, ph, pw).permute(0, 3, 1, 4, 2, 5)
    y = y.reshape(n, c, side_h, side_w)
    return TF.resize(y, [h, w]) if (side_h, side_w) != (h, w) else y


@ADAPTERS.register("deyo")
class DeYO(Adapter):
    """DeYO: entropy minimization on samples whose prediction depends on shape, measured by PLPD.

    Per test batch (paper Sec. 4, Eqs. 4-7):
    1. forward (the batch's prediction); keep samples with entropy E(x) < ``margin`` * ln C;
    2. x' = x with its patches shuffled (a ``patch_grid`` x ``patch_grid`` grid); the
       pseudo-label probability difference PLPD = p_y(x) - p_y(x'), y = argmax p(x);
       keep samples with PLPD > ``plpd_threshold``;
    3. loss = mean over the kept of [exp(E0 - E(x)) + exp(PLPD)] * E(x), E0 =
       ``e_margin`` * ln C; one step (none when nothing is kept).
    BN normalizes with batch statistics (x' forms its own batch). BN's gamma and beta adapt,
    except in the network's top stage (``layer4`` of a ResNet-50; the last stage here), which
    the authors' code leaves frozen, as SAR's does.

    Defaults: the paper's (margin 0.5 ln C, E0 0.4 ln C, PLPD 0.2, 4x4 patches) with the
    CIFAR-10-C optimizer of the authors' follow-up harnesses (Adam lr 1e-3); the paper's
    ImageNet optimizer is SGD lr 2.5e-4.

    Trains: nothing at training time. Adapts: BN weight and bias below the top stage,
    online. Resets: the model and the optimizer.
    """

    defaults = {"lr": 1e-3, "optimizer": "adam", "beta1": 0.9, "momentum": 0.9,
                "weight_decay": 0.0, "margin": 0.5, "e_margin": 0.4, "plpd_threshold": 0.2,
                "patch_grid": 4}
    tasks = frozenset({"classification"})

    def setup(self, model: nn.Module) -> None:
        self.filter_margin = entropy_margin(self.num_classes, self.hparams["margin"])
        self.margin = entropy_margin(self.num_classes, self.hparams["e_margin"])
        self.optimizer = make_optimizer(
            adapt_batchnorm_affine(model, "DeYO", exclude=top_stage(model)), self.hparams)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        model = self._require_model()
        with torch.enable_grad():
            logits = model(x)
            entropy = softmax_entropy(logits)
            keep = entropy < self.filter_margin
            if keep.any():
                with torch.no_grad():
                    shuffled = model(shuffle_patches(x[keep], self.hparams["patch_grid"]))
                probs = logits[keep].softmax(1)
                label = probs.argmax(1, keepdim=True)
                plpd = (probs.gather(1, label)
                        - shuffled.softmax(1).gather(1, label)).reshape(-1).detach()
                shape = plpd > self.hparams["plpd_threshold"]
                if shape.any():
                    chosen = entropy[keep][shape]
                    weight = (1 / torch.exp(chosen.detach() - self.margin)
                              + 1 / torch.exp(-plpd[shape]))
                    loss = (chosen * weight).mean()
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    self.optimizer.step()
        return logits.detach()
