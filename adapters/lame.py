"""LAME -- Boudiaf, Mueller, Ben Ayed, Bertinetto. "Parameter-free Online Test-time Adaptation",
CVPR 2022 (arXiv:2201.05718)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmark.adapter import Adapter
from benchmark.layers.tta import features_and_logits
from benchmark.registry import ADAPTERS


def affinity(features: torch.Tensor, kind: str, knn: int) -> torch.Tensor:
    """W (N x N) between the L2-normalized features of a batch: ``knn``: w_pq = 1 when q is
    among p's k nearest neighbours (p itself excluded); ``rbf``: exp(-d^2 / 2 sigma^2), sigma
    the mean distance to the k-th neighbour; ``linear``: the dot product."""
    z = F.normalize(features, p=2, dim=1)
    if kind == "linear":
        return z @ z.T
    dist = torch.cdist(z, z)
    n = len(z)
    if kind == "knn":
        neighbours = dist.topk(min(knn + 1, n), dim=1, largest=False).indices[:, 1:]
        return torch.zeros(n, n, device=z.device).scatter_(1, neighbours, 1.0)
    if kind == "rbf":
        sigma = dist.topk(min(knn, n), dim=1, largest=False).values[:, -1].mean()
        return torch.exp(-dist**2 / (2 * sigma**2))
    raise ValueError(f"LAME affinity must be 'knn', 'rbf' or 'linear', got {kind!r}")


def laplacian_assignment(log_probs: torch.Tensor, kernel: torch.Tensor, max_steps: int = 100,
                         tolerance: float = 1e-8) -> torch.Tensor:
    """The assignment Z minimizing LAME's objective (paper Eq. 4)

        E(Z) = sum_p KL(z_p || p_p) - sum_{p,q} w_pq z_p^T z_q

    by its bound-optimization iterations (Eq. 6): z_p <- softmax(log p_p + sum_q w_pq z_q),
    from Z = P, until the relative change of the bound's energy is below ``tolerance``."""
    z = log_probs.softmax(1)
    previous = float("inf")
    for step in range(max_steps):
        pairwise = kernel @ z
        z = (log_probs + pairwise).softmax(1)
        energy = float((-log_probs * z - pairwise * z + z * z.clamp_min(1e-20).log()).sum())
        if step > 1 and abs(energy - previous) <= tolerance * abs(previous):
            break
        previous = energy
    return z


@ADAPTERS.register("lame")
class LAME(Adapter):
    """LAME: Laplacian-adjusted maximum likelihood on each batch's outputs; the model never changes.

    For each test batch the frozen source model gives class probabilities p and features
    (the input of the classifier head). LAME returns the assignment Z that stays close to
    p (KL term) while giving similar assignments to neighbouring samples (Laplacian term
    on a kNN affinity of the L2-normalized features), found by the bound-optimization
    iterations of Eq. 6 (at most 100, energy tolerance 1e-8). No gradient, no parameter
    and no statistic changes, so nothing carries from one batch to the next; the returned
    logits are log Z.

    Defaults: kNN affinity with k = 5, as in the paper (``rbf`` and ``linear`` available).

    Trains: nothing. Adapts: nothing (outputs only, per batch). Resets: nothing to reset.
    """

    defaults = {"affinity": "knn", "knn": 5, "max_steps": 100}
    tasks = frozenset({"classification"})

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        model = self._require_model()
        with torch.no_grad():
            features, logits = features_and_logits(model, x)
            kernel = affinity(features.flatten(1), self.hparams["affinity"], self.hparams["knn"])
            z = laplacian_assignment(logits.log_softmax(1), kernel, self.hparams["max_steps"])
        return z.clamp_min(1e-30).log()

    infer = predict  # LAME keeps no state: its prediction never adapts the model
