"""IRW (instance relaxed whitening), a RobustNet variant -- Choi et al. "RobustNet:
Improving Domain Generalization in Urban-Scene Segmentation via Instance Selective
Whitening", CVPR 2021 (arXiv:2103.15597)."""

from __future__ import annotations

from benchmark.layers.whitening import InstanceWhitening, WhiteningAdapter
from benchmark.registry import ADAPTERS


@ADAPTERS.register("irw")
class IRW(WhiteningAdapter):
    """IRW: IW with a margin, so some off-diagonal covariance may remain (RobustNet).

    Per instance and layer, with U the strict upper triangle (n = C(C-1)/2 entries) and
    margin ``m = floor(n / relax_denom)``: ``loss = max(0, (sum |Sigma * U| - m) / n)``,
    averaged over the batch, then over layers, times ``weight``. The total absolute
    off-diagonal covariance may reach m (on average 1/relax_denom per entry) for free.
    Reference script values: ``--relax_denom 64``, ``--wt_reg_weight 0.6`` (CovMatrix_IRW).

    Trains: the whole network with task + relaxed whitening loss. Adapts: nothing at test
    time. Resets: nothing to reset.
    """

    defaults = {"weight": 0.6, "relax_denom": 64.0, "eps": 1e-5}

    def margin(self, layer: InstanceWhitening) -> float:
        denom = float(self.hparams["relax_denom"])
        return float(int(layer.mask.sum().item()) // denom) if denom > 0 else 0.0
