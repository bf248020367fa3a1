"""Context Normalization with clusters as contexts -- Faye, Dilmi, Azzag, Lebbah, Bouchaffra.
"Context Normalization Layer with Applications" (the authors' slides, LIPN,
December 2023; arXiv:2303.07651)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.adapter import Adapter
from benchmark.layers.context_norm import ContextNorm, replace_first_batchnorm
from benchmark.registry import ADAPTERS


class ClusterContexts(nn.Module):
    """Assigns every image to its nearest of ``k`` centres in a small pixel space (the image
    average-pooled to ``grid`` x ``grid``), fitted by online k-means on the first
    ``fit_batches`` training batches, then frozen. Centres live in buffers, so a checkpoint
    carries them; assignment uses the image only (never a label)."""

    def __init__(self, k: int, channels: int, grid: int, fit_batches: int) -> None:
        super().__init__()
        self.k, self.grid, self.fit_batches = k, grid, fit_batches
        self.register_buffer("centres", torch.zeros(k, channels * grid * grid))
        self.register_buffer("counts", torch.zeros(k))
        self.register_buffer("batches_seen", torch.zeros((), dtype=torch.long))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, self.grid).flatten(1)

    def assign(self, features: torch.Tensor) -> torch.Tensor:
        return torch.cdist(features, self.centres).argmin(1)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x.detach())
        if self.training and int(self.batches_seen) < self.fit_batches:
            if int(self.batches_seen) == 0:
                self._init_farthest_first(features)
            self._update(features)
            self.batches_seen += 1
        return self.assign(features)

    def _init_farthest_first(self, features: torch.Tensor) -> None:
        """Deterministic seeding: the first sample, then repeatedly the farthest one."""
        chosen = [0]
        distance = torch.cdist(features, features[:1]).squeeze(1)
        for _ in range(1, min(self.k, len(features))):
            chosen.append(int(distance.argmax()))
            distance = torch.minimum(distance,
                                     torch.cdist(features, features[chosen[-1:]]).squeeze(1))
        self.centres[: len(chosen)] = features[chosen]

    def _update(self, features: torch.Tensor) -> None:
        """Mini-batch k-means (Sculley 2010): each centre moves towards its assigned samples
        with step 1 / (number of samples it has absorbed)."""
        labels = self.assign(features)
        for c in range(self.k):
            members = features[labels == c]
            if len(members):
                self.counts[c] += len(members)
                step = len(members) / self.counts[c]
                self.centres[c] += step * (members.mean(0) - self.centres[c])


class ClusterContextModel(nn.Module):
    """``net`` whose ContextNorm layer is told each image's cluster before the forward pass."""

    def __init__(self, net: nn.Module, contexts: ClusterContexts) -> None:
        super().__init__()
        self.contexts = contexts
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = self.contexts(x)
        for layer in self.net.modules():
            if isinstance(layer, ContextNorm):
                layer.context = ids
        return self.net(x)


@ADAPTERS.register("context_norm_group")
class ContextNormGroup(Adapter):
    """Context Normalization with image clusters as contexts (Faye et al.), source-only.

    The authors build contexts by grouping the data: CIFAR-100's 20 superclasses, or the
    components of a 3-component GMM fitted by EM (where CN replaces the BN of the second conv
    block of a shallow CNN). Superclasses are labels, unavailable at test time, so here the
    context is a cluster: k-means (``k`` = 3, as the slides' EM) on the images average-pooled
    to 4x4, fitted online on the first training batches and frozen; every image, in training
    and at test time, gets the id of its nearest centre. The first BatchNorm2d of the network
    becomes a ContextNorm layer (mu_r, sigma_r from small networks on the one-hot cluster id,
    (x - mu_r) / sqrt(sigma_r**2 + eps), then affine). Mixture Normalization (the slides' EM
    baseline, soft assignments) is not implemented.

    Trains: the whole network, the CN mu/sigma networks and affine; the cluster centres
    (k-means, no gradient). Adapts: nothing at test time. Resets: the model state of attach
    time.
    """

    defaults = {"k": 3, "grid": 4, "fit_batches": 20, "hidden": 16}
    setting = "dg"
    changes_training = True
    tasks = frozenset({"classification"})

    def prepare(self, model: nn.Module) -> nn.Module:
        k = int(self.hparams["k"])
        first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        if first is None or not replace_first_batchnorm(model, k, int(self.hparams["hidden"])):
            raise ValueError("context_norm_group needs a convolutional model with BatchNorm2d")
        contexts = ClusterContexts(k, first.in_channels, int(self.hparams["grid"]),
                                   int(self.hparams["fit_batches"]))
        return ClusterContextModel(model, contexts)
