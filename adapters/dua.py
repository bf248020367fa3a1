"""DUA -- Mirza, Micorek, Possegger, Bischof. "The Norm Must Go On: Dynamic Unsupervised Domain
Adaptation by Normalization", CVPR 2022 (arXiv:2112.00463)."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.transforms import v2

from benchmark.adapter import Adapter
from benchmark.layers.norm import require_batchnorm
from benchmark.registry import ADAPTERS


@ADAPTERS.register("dua")
class DUA(Adapter):
    """DUA: BN running statistics updated per image from augmented copies, with decaying momentum.

    For every incoming test image (paper Sec. 3, Eq. 3 and Algorithm 1):
    1. the momentum decays: m_t = m_{t-1} * ``decay`` (m_0 = ``momentum``), and BN uses
       rho_t = m_t + ``min_momentum`` (zeta), so early images move the statistics a lot
       and later ones fine-tune them;
    2. a batch of ``copies`` augmented views of that one image (random crop with 4 pixels
       of padding, random horizontal flip: ``torchvision.transforms.v2``, independent per
       view; then each view rotated by a random multiple of 90 degrees, as the authors'
       code does, by 0 or 180 degrees for non-square images) goes through the model with
       BN in train mode, so each BN layer's running statistics move by rho_t toward the
       views' statistics (no gradient, no parameter change).
    The batch is then predicted in eval mode with the updated running statistics.

    Defaults: the paper's (m_0 0.1, decay 0.94, zeta 0.005, 64 views). The authors' code
    also re-scores the whole test set after every image and reports the best score, which
    picks the stopping point with the test labels; here every batch is predicted once,
    right after its own images have moved the statistics.

    Trains: nothing. Adapts: BN running mean and variance, online. Resets: the running
    statistics and the momentum schedule.
    """

    heavy = True  # 64 augmented copies of each image
    defaults = {"momentum": 0.1, "decay": 0.94, "min_momentum": 0.005, "copies": 64,
                "padding": 4, "flip": True, "rotate": True}

    def setup(self, model: nn.Module) -> None:
        self.layers = require_batchnorm(model, "DUA")
        model.eval()
        self.current = float(self.hparams["momentum"])
        self._views: v2.Transform | None = None

    def _augment(self, image: torch.Tensor) -> torch.Tensor:
        if self._views is None:
            steps: list[v2.Transform] = [v2.RandomCrop(list(image.shape[-2:]),
                                                       padding=self.hparams["padding"])]
            if self.hparams["flip"]:
                steps.append(v2.RandomHorizontalFlip())
            self._views = v2.Compose(steps)
        views = [self._views(image) for _ in range(self.hparams["copies"])]
        if self.hparams["rotate"]:
            turns = 4 if image.shape[-1] == image.shape[-2] else 2
            quarter = 4 // turns  # non-square: 0 or 2 quarter turns keep the shape
            views = [torch.rot90(v, quarter * int(k), dims=(-2, -1))
                     for v, k in zip(views, torch.randint(turns, (len(views),)), strict=True)]
        return torch.stack(views)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        model = self._require_model()
        with torch.no_grad():
            for image in x:
                self.current *= self.hparams["decay"]
                for bn in self.layers:
                    bn.train()
                    bn.momentum = self.current + self.hparams["min_momentum"]
                model(self._augment(image))
                model.eval()
            return model(x)
