"""IW (instance whitening), the RobustNet baseline variant -- Choi et al. "RobustNet:
Improving Domain Generalization in Urban-Scene Segmentation via Instance Selective
Whitening", CVPR 2021 (arXiv:2103.15597)."""

from __future__ import annotations

from benchmark.layers.whitening import WhiteningAdapter
from benchmark.registry import ADAPTERS


@ADAPTERS.register("iw")
class IW(WhiteningAdapter):
    """IW: push every off-diagonal entry of each instance's covariance to zero (RobustNet).

    Same layers as ISW (IN without affine at the stem and after stages 1 and 2); from the
    first step the loss is ``weight * mean over layers of mean over batch of
    sum_{i<j} |Sigma_ij| / (C(C-1)/2)`` with ``Sigma = F F^T/(HW-1) + eps I`` of the
    IN-standardized features. Weight 0.8 is the reference's IW script value
    (``--wt_reg_weight 0.8``, ``--wt_layer 0 0 1 1 1 0 0``, ``--relax_denom 0``).

    Trains: the whole network with task + whitening loss. Adapts: nothing at test time.
    Resets: nothing to reset.
    """

    defaults = {"weight": 0.8, "eps": 1e-5}
