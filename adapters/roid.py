"""ROID -- Marsden, Döbler, Yang. "Universal Test-time Adaptation through Weight Ensembling,
Diversity Weighting, and Prior Correction", WACV 2024 (arXiv:2306.00650)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.adapter import Adapter
from benchmark.layers.augment import cotta_views
from benchmark.layers.tta import adapt_batchnorm_affine, make_optimizer
from benchmark.registry import ADAPTERS


def soft_likelihood_ratio(logits: torch.Tensor, clip: float = 0.99, eps: float = 1e-5
                          ) -> torch.Tensor:
    """SLR loss per sample: -sum_c p_c log(p_c / (1 - p_c)), probabilities clipped at
    ``clip`` (paper Eq. 3): unlike entropy, its gradient does not vanish for confident
    predictions, and it pushes the other classes' probabilities down."""
    p = logits.softmax(1).clamp(0.0, clip)
    return -(p * torch.log(p / (1 - p) + eps)).sum(1)


def symmetric_cross_entropy(student: torch.Tensor, target: torch.Tensor,
                            alpha: float = 0.5) -> torch.Tensor:
    """(1 - alpha) CE(softmax target, student) + alpha CE(softmax student, target)."""
    return (-(1 - alpha) * (target.softmax(1) * student.log_softmax(1)).sum(1)
            - alpha * (student.softmax(1) * target.log_softmax(1)).sum(1))


def min_max(w: torch.Tensor) -> torch.Tensor:
    return (w - w.min()) / (w.max() - w.min()).clamp_min(1e-12)


@ADAPTERS.register("roid")
class ROID(Adapter):
    """ROID: diversity- and certainty-weighted SLR loss, weight ensembling, prior correction.

    Per test batch (paper Sec. 3):
    1. weights: diversity w_div = 1 - cos(p(x), p_bar) (p_bar the moving average of mean
       batch predictions, momentum 0.9, starting uniform) and certainty w_cert = -E(x),
       each min-max normalized over the batch; samples with w_div below the batch mean
       are dropped; the rest get w = exp(w_div * w_cert / ``temperature``);
    2. loss = [sum_kept w * SLR(x) + sum_kept w * SCE(f(aug x), f(x))] / batch size, the
       second term a consistency loss with an augmented view (CoTTA's augmentation with
       reflect padding, no blur or noise); one step on BN's gamma and beta;
    3. weight ensembling: theta <- ``source_momentum`` * theta + (1 - it) * theta_source;
    4. prior correction of the returned output: prior = mean softmax of the batch,
       smoothed with s = max(1/N, 1/C) / max(prior): (prior + s) / (1 + s C); the
       logits of the forward pass before the step are scaled by it, as the authors'
       code does.

    Defaults: the paper's (Adam lr 1e-3, temperature 1/3, source momentum 0.99).

    Trains: nothing at training time. Adapts: BN weight and bias, online, pulled back
    toward the source. Resets: the model, the optimizer and p_bar.
    """

    defaults = {"lr": 1e-3, "optimizer": "adam", "beta1": 0.9, "momentum": 0.9,
                "weight_decay": 0.0, "temperature": 1 / 3, "source_momentum": 0.99,
                "probs_momentum": 0.9, "consistency": True, "prior_correction": True}
    tasks = frozenset({"classification"})

    def setup(self, model: nn.Module) -> None:
        self.params = adapt_batchnorm_affine(model, "ROID")
        self.optimizer = make_optimizer(self.params, self.hparams)
        self.source = [p.detach().clone() for p in self.params]
        assert self.num_classes
        self.p_bar = torch.full((self.num_classes,), 1 / self.num_classes,
                                device=self.params[0].device)
        self._views = None

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        model = self._require_model()
        hp = self.hparams
        with torch.enable_grad():
            logits = model(x)
            with torch.no_grad():
                probs = logits.softmax(1)
                w_div = min_max(1 - F.cosine_similarity(self.p_bar.unsqueeze(0), probs, dim=1))
                drop = w_div < w_div.mean()
                w_cert = min_max((probs * logits.log_softmax(1)).sum(1))  # -entropy
                weight = torch.exp(w_div * w_cert / hp["temperature"])
                weight[drop] = 0.0
                m = hp["probs_momentum"]
                self.p_bar = m * self.p_bar + (1 - m) * probs.mean(0)
            keep = ~drop
            loss = (soft_likelihood_ratio(logits) * weight)[keep].sum() / len(x)
            if hp["consistency"] and keep.any():
                if self._views is None:
                    self._views = cotta_views(x.shape[-1], "reflect", blur_and_noise=False)
                augmented = model(self._views(x[keep]))
                loss = loss + (symmetric_cross_entropy(augmented, logits[keep])
                               * weight[keep]).sum() / len(x)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        with torch.no_grad():
            m = hp["source_momentum"]
            for p, source in zip(self.params, self.source, strict=True):
                p.mul_(m).add_(source, alpha=1 - m)
        return self._corrected(logits.detach())

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self._corrected(self._require_model()(x))

    def _corrected(self, out: torch.Tensor) -> torch.Tensor:
        if not self.hparams["prior_correction"]:
            return out
        prior = out.softmax(1).mean(0)
        smooth = max(1 / out.shape[0], 1 / out.shape[1]) / prior.max()
        return out * (prior + smooth) / (1 + smooth * out.shape[1])
