"""ISW (RobustNet) -- Choi, Jung, Yun, Kim, Kim, Choo. "RobustNet: Improving Domain
Generalization in Urban-Scene Segmentation via Instance Selective Whitening", CVPR 2021
(arXiv:2103.15597). Also the shared parts of its IW and IRW variants (adapters/iw.py, irw.py).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import torch
from torch import nn

from benchmark.layers.whitening import (
    WhiteningAdapter,
    covariance,
    release_features,
    whitening_layers,
)
from benchmark.registry import ADAPTERS


# ---- ISW's selection of style-sensitive covariance entries --------------------------------
def photometric(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """RobustNet's photometric transform, per image: ColorJitter(brightness 0.8, contrast 0.8,
    saturation 0.8, hue 0.3) in a random order, then Gaussian blur with sigma ~ U(0.15, 1.3).
    Images in [0, 1]."""
    # torchvision's v2 transforms import torch._dynamo (~2 s): loaded only when used
    import torchvision.transforms.v2.functional as TF

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * torch.rand((), generator=generator).item()

    out = []
    for image in images:
        ops = [
            lambda x: TF.adjust_brightness(x, uniform(0.2, 1.8)),
            lambda x: TF.adjust_contrast(x, uniform(0.2, 1.8)),
            lambda x: TF.adjust_saturation(x, uniform(0.2, 1.8)),
            lambda x: TF.adjust_hue(x, uniform(-0.3, 0.3)),
        ]
        for i in torch.randperm(4, generator=generator).tolist():
            image = ops[i](image)
        sigma = uniform(0.15, 1.3)
        size = min(2 * math.ceil(4 * sigma) + 1, 2 * (min(image.shape[-2:]) // 2) - 1)
        out.append(TF.gaussian_blur(image, [size, size], [sigma, sigma]).clamp(0, 1))
    return torch.stack(out)


def kmeans_1d(values: torch.Tensor, k: int = 3, iterations: int = 100) -> torch.Tensor:
    """Lloyd's k-means on a 1-D tensor; returns each value's cluster index, clusters ordered
    by centroid (0 = lowest). Centroids start at the (2i+1)/2k quantiles."""
    v = values.double().flatten()
    centroids = torch.quantile(v, (torch.arange(k, dtype=torch.float64) * 2 + 1) / (2 * k))
    labels = torch.zeros_like(v, dtype=torch.long)
    for step in range(iterations):
        new = (v[:, None] - centroids[None, :]).abs().argmin(1)
        if step > 0 and torch.equal(new, labels):
            break
        labels = new
        for j in range(k):
            members = v[labels == j]
            if len(members):
                centroids[j] = members.mean()
    rank = torch.argsort(torch.argsort(centroids))
    return rank[labels]


def sensitive_entries(variance: torch.Tensor, clusters: int = 3) -> torch.Tensor:
    """C x C 0/1 mask: strict-upper-triangle entries whose variance is *not* in the lowest of
    ``clusters`` 1-D k-means clusters."""
    c = variance.shape[0]
    upper = torch.ones(c, c, dtype=torch.bool, device=variance.device).triu(diagonal=1)
    mask = torch.zeros(c, c, device=variance.device)
    mask[upper] = (kmeans_1d(variance[upper], clusters) > 0).to(mask.dtype).to(mask.device)
    return mask


def covariance_variance(model: nn.Module, batches: list[torch.Tensor],
                        generator: torch.Generator, eps: float) -> list[torch.Tensor]:
    """For every whitening layer: the variance, over each batch of [photometric copies;
    originals], of every covariance entry (strict upper triangle), averaged over batches.
    Run in eval mode without gradients, as RobustNet's ``validate_for_cov_stat``."""
    layers = whitening_layers(model)
    totals: list[torch.Tensor] = [torch.zeros(()) for _ in layers]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for images in batches:
                for layer in layers:
                    layer.captured = []
                model(torch.cat([photometric(images.cpu(), generator).to(images.device),
                                 images]))
                for i, layer in enumerate(layers):
                    assert layer.captured is not None
                    cov = covariance(layer.captured[0], eps) * layer.mask.new_ones(
                        layer.mask.shape).triu(diagonal=1)
                    totals[i] = totals[i] + cov.var(0).cpu()
    finally:
        for layer in layers:
            layer.captured = None
        model.train(was_training)
    return [t / len(batches) for t in totals]


@ADAPTERS.register("isw")
class ISW(WhiteningAdapter):
    """ISW: instance *selective* whitening of the style-sensitive covariance entries.

    RobustNet (paper Sec. 3.3-3.4, reference ``train.py``/``cov_settings.py``):

    1. IN (no affine) at the stem and after stages 1 and 2 (:func:`to_instance_whitening`).
    2. Warm-up: train with the task loss only for ``warmup_steps``.
    3. Selection: for each trial, pass batches of images concatenated with photometrically
       transformed copies (colour jitter, Gaussian blur; :func:`photometric`) through the
       model (eval mode); at each layer compute every instance's covariance
       ``Sigma = F F^T/(HW-1) + eps I`` and the variance of each strict-upper entry across
       the 2B instances; average over batches; 1-D k-means with ``clusters`` = 3; entries
       outside the lowest-variance cluster are sensitive (M = 1). The mask is the
       intersection over trials.
    4. Afterwards the loss is ``weight * mean over layers of mean over batch of
       sum |Sigma * M| / |M|`` (:func:`whitening_loss`), added to the task loss.

    The training loop is the benchmark's, so the adapter counts ``extra_loss`` calls as
    steps, keeps the last ``mask_batches`` training input batches (a forward pre-hook on the
    model) and computes the mask from them right after step ``warmup_steps``.
    Reference values vs the CPU-scale defaults here: warm-up 5 epochs (~3.9k iterations of
    40k) vs 50 steps; 500 batches per trial vs ``mask_batches`` = 8 stored batches; 10
    trials vs 5 (each trial redraws the photometric transforms). Weight 0.6 and k = 3 as
    in the reference. Two further differences from the reference code: k-means runs on the
    strict-upper-triangle variances only (the reference clusters all C x C entries, the
    zeros of the diagonal and lower triangle included), and it is Lloyd's algorithm from
    quantile starts (the reference's ``kmeans1d`` finds the exact 1-D optimum).

    Trains: the whole network with the task loss and, after warm-up, the selective
    whitening loss. Adapts: nothing at test time. Resets: nothing to reset.
    """

    defaults = {"weight": 0.6, "warmup_steps": 50, "mask_batches": 8, "trials": 5,
                "clusters": 3, "eps": 1e-5}

    def prepare(self, model: nn.Module) -> nn.Module:
        model = super().prepare(model)
        self._steps = 0
        self._recent: deque[torch.Tensor] = deque(maxlen=int(self.hparams["mask_batches"]))
        self.mask_ready = False
        model.register_forward_pre_hook(self._remember_inputs)
        return model

    def _remember_inputs(self, model: nn.Module, inputs: tuple[Any, ...]) -> None:
        if model.training and not self.mask_ready:
            self._recent.append(inputs[0].detach())

    def compute_mask(self, model: nn.Module, batches: list[torch.Tensor]) -> None:
        """Step 3 above: set each whitening layer's mask from ``batches`` of images."""
        if not batches:
            raise RuntimeError("ISW: no training batches were seen before the mask step")
        generator = torch.Generator().manual_seed(torch.initial_seed() % 2**63 + 1)
        eps, clusters = float(self.hparams["eps"]), int(self.hparams["clusters"])
        layers = whitening_layers(model)
        masks: list[torch.Tensor] | None = None
        for _ in range(int(self.hparams["trials"])):
            variances = covariance_variance(model, batches, generator, eps)
            trial = [sensitive_entries(v, clusters) for v in variances]
            masks = trial if masks is None else [a * b for a, b in zip(masks, trial,
                                                                      strict=True)]
        assert masks is not None
        for layer, mask in zip(layers, masks, strict=True):
            layer.mask.copy_(mask)
        self.mask_ready = True

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        self._steps += 1
        if self.mask_ready:
            return super().extra_loss(model)
        release_features(whitening_layers(model))
        if self._steps >= int(self.hparams["warmup_steps"]):
            self.compute_mask(model, list(self._recent))
            self._recent.clear()
        return None
