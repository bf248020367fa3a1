"""T3A -- Iwasawa, Matsuo. "Test-Time Classifier Adjustment Module for Model-Agnostic Domain
Generalization", NeurIPS 2021."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.adapter import Adapter
from benchmark.layers.losses import softmax_entropy
from benchmark.layers.tta import classifier_head, features_and_logits
from benchmark.registry import ADAPTERS


@ADAPTERS.register("t3a")
class T3A(Adapter):
    """T3A: replace the linear classifier by class prototypes built from confident test features.

    The support set S_k of class k starts as the classifier's weight vector w_k (labelled
    by the class the classifier gives it). For each test batch (paper Sec. 3, Eqs. 2-5):
    1. z = the features entering the classifier; each z joins S_k for k = argmax of the
       *source* classifier's output, with that output's entropy;
    2. each S_k keeps its ``filter_k`` lowest-entropy members (-1: all);
    3. prototype c_k = sum over S_k of z / ||z||; the batch's logits are z . c_k / ||c_k||.
    The feature extractor and the classifier never change; the supports carry over from
    batch to batch within an episode.

    Defaults: filter_k 100 (DomainBed's default for T3A; the paper selects it from
    {1, 5, 20, 50, 100, all} on validation data).

    Trains: nothing. Adapts: the support set (no parameter). Resets: the support set.
    """

    defaults = {"filter_k": 100}
    tasks = frozenset({"classification"})

    def setup(self, model: nn.Module) -> None:
        model.eval()
        head = classifier_head(model)
        with torch.no_grad():
            self.supports = head.weight.detach().clone()
            scores = head(self.supports)
        self.labels = scores.argmax(1)
        self.entropy = softmax_entropy(scores)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        model = self._require_model()
        with torch.no_grad():
            z, logits = features_and_logits(model, x)
            z = z.flatten(1)
            self.supports = torch.cat([self.supports, z])
            self.labels = torch.cat([self.labels, logits.argmax(1)])
            self.entropy = torch.cat([self.entropy, softmax_entropy(logits)])
            self._filter()
            return self._classify(model, z)

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        model = self._require_model()
        with torch.no_grad():
            z, _ = features_and_logits(model, x)
            return self._classify(model, z.flatten(1))

    def _classify(self, model: nn.Module, z: torch.Tensor) -> torch.Tensor:
        """Scores against the current prototypes: normalized class sums of the supports."""
        onehot = F.one_hot(self.labels, classifier_head(model).out_features).float()
        prototypes = F.normalize(self.supports, dim=1).T @ onehot
        return z @ F.normalize(prototypes, dim=0)

    def _filter(self) -> None:
        keep_k = self.hparams["filter_k"]
        if keep_k < 0:
            return
        keep = []
        for k in self.labels.unique():
            members = (self.labels == k).nonzero().flatten()
            order = torch.sort(self.entropy[members], stable=True).indices
            keep.append(members[order[:keep_k]])
        chosen = torch.cat(keep).sort().values
        self.supports, self.labels = self.supports[chosen], self.labels[chosen]
        self.entropy = self.entropy[chosen]
