"""The small networks the domain adaptation literature trains on digit shifts.

Both follow the digit networks of SHOT (Liang, Hu & Feng, "Do We Really Need to Access the
Source Data? Source Hypothesis Transfer for Unsupervised Domain Adaptation", ICML 2020,
arXiv:2002.08546), which took them from CDAN (Long et al., NeurIPS 2018, arXiv:1705.10667)
and which later source-free and test-time methods reuse:

- ``lenet``: LeNet-5 (LeCun et al. 1998) as SHOT uses it for MNIST <-> USPS, on 28x28 grey
  images: conv 5x5 (20) - max-pool - ReLU - conv 5x5 (50) - channel dropout 0.5 - max-pool -
  ReLU, 800 features.
- ``dtn``: the "DTN" network (after Taigman, Polyak & Wolf, ICLR 2017, arXiv:1611.02200) SHOT
  uses for SVHN -> MNIST, on 32x32 RGB images: three conv 5x5 stride 2 (64, 128, 256), each
  followed by BN, channel dropout (0.1, 0.3, 0.5) and ReLU, 4096 features.

Both end in SHOT's head: a 256-d linear bottleneck, BN, dropout 0.5 (no ReLU), and a
weight-normalized linear classifier (Salimans & Kingma 2016). Inputs arrive in [0, 1], like
every suite's; the network standardizes them with mean 0.5 and std 0.5 per channel itself
(SHOT's ``Normalize((0.5,), (0.5,))``), so adapters see the suite's images. ``lenet`` reads
the mean over channels (our real digit suites replicate grey to 3 channels: the mean is the
grey image, exactly). Initialization as SHOT's: PyTorch defaults in the convolutional part;
in the head, Xavier-normal linear weights, zero biases, BN weights drawn from N(1, 0.02).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Standardize(nn.Module):
    """(x - mean) / std with one mean and std for every channel; no parameters or state."""

    def __init__(self, mean: float = 0.5, std: float = 0.5) -> None:
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class WeightNormLinear(nn.Linear):
    """A linear layer with weight normalization (Salimans & Kingma, NeurIPS 2016,
    arXiv:1602.07868): weight = g * v / ||v||, one norm per output unit; ``v`` and ``g`` are
    the parameters (``g`` starts at ||v||, so the initial weight is v). Plain parameters
    rather than torch's parametrization, which cannot be pickled (the runner sends models to
    the adapter process)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features)
        v = self.weight.detach().clone()
        del self.weight
        self.weight_v = nn.Parameter(v)
        self.weight_g = nn.Parameter(v.norm(dim=1, keepdim=True))

    @property  # type: ignore[override]
    def weight(self) -> Tensor:
        return self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True)

    def reset_from(self, weight: Tensor) -> None:
        """Set v to ``weight`` and g to its norms (the layer then computes ``weight``)."""
        with torch.no_grad():
            self.weight_v.copy_(weight)
            self.weight_g.copy_(weight.norm(dim=1, keepdim=True))


def _init_head_layer(module: nn.Module) -> None:
    if isinstance(module, WeightNormLinear):
        module.reset_from(nn.init.xavier_normal_(torch.empty_like(module.weight_v)))
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Linear):
        nn.init.xavier_normal_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm1d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class BottleneckHead(nn.Module):
    """SHOT's head: linear bottleneck -> BN -> dropout -> weight-normalized classifier."""

    def __init__(self, in_features: int, num_classes: int, bottleneck: int = 256) -> None:
        super().__init__()
        self.bottleneck = nn.Linear(in_features, bottleneck)
        self.bn = nn.BatchNorm1d(bottleneck)
        self.dropout = nn.Dropout(0.5)
        self.fc = WeightNormLinear(bottleneck, num_classes)
        for m in (self.bottleneck, self.bn, self.fc):
            _init_head_layer(m)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.dropout(self.bn(self.bottleneck(x))))


class LeNet(nn.Module):
    """LeNet-5 with SHOT's bottleneck head, for 28x28 digits (see the module docstring)."""

    def __init__(self, num_classes: int, bottleneck: int = 256) -> None:
        super().__init__()
        self.standardize = Standardize()
        self.features = nn.Sequential(
            nn.Conv2d(1, 20, 5), nn.MaxPool2d(2), nn.ReLU(),
            nn.Conv2d(20, 50, 5), nn.Dropout2d(0.5), nn.MaxPool2d(2), nn.ReLU(),
        )
        self.head = BottleneckHead(50 * 4 * 4, num_classes, bottleneck)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2:] != (28, 28):
            raise ValueError(f"lenet takes 28x28 images, got {tuple(x.shape[-2:])}")
        x = self.standardize(x.mean(1, keepdim=True))
        return self.head(self.features(x).flatten(1))


class DTN(nn.Module):
    """The DTN digit network with SHOT's bottleneck head, for 32x32 RGB (module docstring)."""

    def __init__(self, num_classes: int, bottleneck: int = 256) -> None:
        super().__init__()
        self.standardize = Standardize()
        layers: list[nn.Module] = []
        for c_in, c_out, drop in ((3, 64, 0.1), (64, 128, 0.3), (128, 256, 0.5)):
            layers += [nn.Conv2d(c_in, c_out, 5, stride=2, padding=2), nn.BatchNorm2d(c_out),
                       nn.Dropout2d(drop), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.head = BottleneckHead(256 * 4 * 4, num_classes, bottleneck)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2:] != (32, 32):
            raise ValueError(f"dtn takes 32x32 images, got {tuple(x.shape[-2:])}")
        return self.head(self.features(self.standardize(x)).flatten(1))
