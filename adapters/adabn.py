"""AdaBN -- Li, Wang, Shi, Liu, Hou. "Revisiting Batch Normalization For Practical Domain
Adaptation", ICLR Workshop 2017 (arXiv:1603.04779)."""

from __future__ import annotations

from benchmark.adapter import Adapter, TargetStream
from benchmark.layers.norm import estimate_statistics, require_batchnorm
from benchmark.registry import ADAPTERS


@ADAPTERS.register("adabn")
class AdaBN(Adapter):
    """AdaBN: replace every BN layer's statistics by the target domain's (Li et al. 2016).

    Algorithm 1 of the paper: for every BN neuron j, concatenate its responses over *all*
    target images and set mu_j = E[x_j], sigma_j^2 = Var[x_j]; then
    y_j = gamma_j (x_j - mu_j) / sigma_j + beta_j with the source gamma, beta.

    One no-grad pass over the unlabeled target stream with BN normalizing with batch
    statistics (each layer sees its input normalized as in the usual recipe), accumulating
    per-channel sums in float64 (:func:`benchmark.layers.norm.estimate_statistics`), so the
    statistics are those of the whole target set, exact whatever the batch size -- not the
    average of per-batch statistics that ``momentum=None`` gives. Variance is unbiased, as
    BN's running_var is.

    Trains: nothing. Adapts: BN running mean/var (all BN layers). Resets: running stats back
    to the source ones (``reset`` restores the attached state).
    """

    def adapt(self, stream: TargetStream) -> None:
        model = self._require_model()
        estimate_statistics(model, require_batchnorm(model, "AdaBN"), stream)
