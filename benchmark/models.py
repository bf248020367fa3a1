"""Source-model architectures, by name. Suites pick one in their recipe.

``SmallResNet`` is the CPU workhorse for 32x32 inputs. It keeps ResNet's structure and
names (``stem``, ``layer1``..``layer3``, ``fc``) so that normalization surgery written for
torchvision ResNets (IBN after the stem / stage 1 / stage 2) applies to it unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class SmallResNet(nn.Module):
    """Stem conv-BN-ReLU, three stages of basic blocks (stride 1, 2, 2), global pool, linear."""

    def __init__(
        self, num_classes: int, widths: tuple[int, int, int] = (16, 32, 64), blocks: int = 1
    ) -> None:
        super().__init__()
        w1, w2, w3 = widths
        self.stem = nn.Sequential(
            nn.Conv2d(3, w1, 3, 1, 1, bias=False), nn.BatchNorm2d(w1), nn.ReLU(inplace=True)
        )
        self.layer1 = self._stage(w1, w1, blocks, stride=1)
        self.layer2 = self._stage(w1, w2, blocks, stride=2)
        self.layer3 = self._stage(w2, w3, blocks, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w3, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @staticmethod
    def _stage(in_ch: int, out_ch: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_ch, out_ch, stride)]
        layers += [BasicBlock(out_ch, out_ch, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(self.pool(x).flatten(1))


MODELS: dict[str, Callable[..., nn.Module]] = {"small_resnet": SmallResNet}


def create_model(arch: str, num_classes: int, **kwargs: Any) -> nn.Module:
    try:
        factory = MODELS[arch]
    except KeyError:
        raise KeyError(f"unknown architecture {arch!r}; known: {', '.join(MODELS)}") from None
    return factory(num_classes=num_classes, **kwargs)
