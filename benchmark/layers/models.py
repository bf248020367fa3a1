"""Source-model architectures, by name. Suites pick one in their recipe.

``SmallResNet`` is the CPU workhorse for 32x32 inputs. It keeps ResNet's structure and
names (``stem``, ``layer1``..``layer3``, ``fc``) so that normalization surgery written for
torchvision ResNets (IBN after the stem / stage 1 / stage 2) applies to it unchanged.
The segmentation models (``small_segnet``, ``deeplabv3_resnet50``) use torchvision's exact
ResNet names under ``backbone``; see ``SURGERY_POINTS``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.errors import ShiftbenchError
from benchmark.layers.digit_nets import DTN, LeNet


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


# ---- two modalities, late fusion -------------------------------------------------------


class TwoStreamResNet(nn.Module):
    """Two image modalities in one network, fused late: for multi-modal suites (digits-mm).

    Input: (N, 3 * M, H, W), modality m in channels 3m .. 3m + 2 (M = 2: ``modalities``).
    Each modality goes through a SmallResNet trunk without its classifier -- by default one
    trunk shared by both (``shared_trunk``), fed the modalities *stacked along the batch*
    (2N images: first all RGB, then all thermal), as visible-infrared re-id networks share
    one backbone -- then through its own linear ``projection`` to an ``embed_dim``
    embedding, its own ``fusion_norm`` (identity here), and a linear ``classifier`` on the
    concatenated embeddings.

    Where normalization methods plug in: per-modality BN (modality BN) replaces the BN
    layers of ``trunk``, which see the stacked batch; cross-domain normalization (CDN / SBN)
    replaces ``fusion_norm[m]``, which sees modality m's embedding only.
    """

    modalities: tuple[str, ...] = ("rgb", "thermal")

    def __init__(
        self, num_classes: int, widths: tuple[int, int, int] = (16, 32, 64),
        embed_dim: int = 64, shared_trunk: bool = True,
    ) -> None:
        super().__init__()
        self.shared_trunk = shared_trunk
        names = ("shared",) if shared_trunk else self.modalities
        self.trunks = nn.ModuleDict({name: self._trunk(widths) for name in names})
        self.projection = nn.ModuleDict({m: nn.Linear(widths[2], embed_dim)
                                         for m in self.modalities})
        self.fusion_norm = nn.ModuleDict({m: nn.Identity() for m in self.modalities})
        self.classifier = nn.Linear(embed_dim * len(self.modalities), num_classes)

    @staticmethod
    def _trunk(widths: tuple[int, int, int]) -> SmallResNet:
        trunk = SmallResNet(num_classes=1, widths=widths)
        trunk.fc = nn.Identity()  # type: ignore[assignment]  (pooled features out)
        return trunk

    def split_modalities(self, x: Tensor) -> list[Tensor]:
        expected = 3 * len(self.modalities)
        if x.shape[1] != expected:
            raise ValueError(f"{type(self).__name__} takes {expected} channels (3 per "
                             f"modality: {', '.join(self.modalities)}), got {x.shape[1]}")
        return list(x.split(3, dim=1))

    def forward(self, x: Tensor) -> Tensor:
        parts = self.split_modalities(x)
        if self.shared_trunk:
            features = self.trunks["shared"](torch.cat(parts)).split(len(x))
        else:
            features = [self.trunks[m](p) for m, p in zip(self.modalities, parts, strict=True)]
        embeddings = [self.fusion_norm[m](self.projection[m](f))
                      for m, f in zip(self.modalities, features, strict=True)]
        return self.classifier(torch.cat(embeddings, 1))


# ---- WideResNet (Zagoruyko & Komodakis 2016) ---------------------------------------------
#
# Module and parameter names follow the WRN-28-10 of RobustBench's model zoo (the ``Standard``
# CIFAR-10 model that Tent and most test-time adaptation papers start from), so its
# checkpoint loads with ``load_state_dict`` unchanged: ``conv1``, ``block{1,2,3}.layer.<i>.
# {bn1,conv1,bn2,conv2,convShortcut}``, final ``bn1`` and ``fc``.


class WideBasicBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus shortcut. When the width or
    stride changes, the first BN-ReLU is shared with a 1x1 ``convShortcut``."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.convShortcut: nn.Module | None = None  # noqa: N815  (checkpoint key name)
        if in_ch != out_ch or stride != 1:
            self.convShortcut = nn.Conv2d(in_ch, out_ch, 1, stride, 0, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pre = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(pre))))
        # Identity blocks add the raw input; projection blocks project the activated one.
        shortcut = x if self.convShortcut is None else self.convShortcut(pre)
        return shortcut + out


class WideStage(nn.Module):
    """``blocks`` wide blocks held as ``layer`` (an ``nn.Sequential``), as in the checkpoints."""

    def __init__(self, blocks: int, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(*(
            WideBasicBlock(in_ch if i == 0 else out_ch, out_ch, stride if i == 0 else 1)
            for i in range(blocks)
        ))

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


def init_conv_and_linear(model: nn.Module) -> None:
    """He (fan-out) init of every conv, zero bias of every linear layer, in module order."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)


class WideResNet(nn.Module):
    """WRN-depth-k for 32x32 inputs (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC
    2016): a 3x3 stem to 16 channels, three stages of (depth - 4) / 6 pre-activation blocks of
    width 16k, 32k, 64k (strides 1, 2, 2), BN-ReLU, global average pooling, linear. No input
    standardization: like RobustBench's models it takes pixels in [0, 1]. WRN-28-10 has
    36.5M parameters for 10 classes."""

    def __init__(self, num_classes: int, depth: int = 28, widen_factor: int = 10) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n + 4 (e.g. 16, 22, 28), got {depth}")
        blocks = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.block1 = WideStage(blocks, widths[0], widths[1], 1)
        self.block2 = WideStage(blocks, widths[1], widths[2], 2)
        self.block3 = WideStage(blocks, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(widths[3], num_classes)
        init_conv_and_linear(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = self.relu(self.bn1(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def wrn28_10(num_classes: int) -> WideResNet:
    return WideResNet(num_classes, depth=28, widen_factor=10)


class ResNeXtBlock(nn.Module):
    """ResNeXt's bottleneck (type C): 1x1 reduce to ``groups`` paths of ``path_width``
    channels, grouped 3x3 (stride here), 1x1 expand to 4x ``planes``; BN after each conv,
    ReLU after the first two and after the residual sum. Module names are those of the
    CIFAR ResNeXt that AugMix trained and RobustBench distributes, so its checkpoints load."""

    def __init__(self, inplanes: int, planes: int, groups: int, path_width: int,
                 stride: int = 1) -> None:
        super().__init__()
        width = groups * (planes * path_width // 64)
        self.conv_reduce = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn_reduce = nn.BatchNorm2d(width)
        self.conv_conv = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.conv_expand = nn.Conv2d(width, 4 * planes, 1, bias=False)
        self.bn_expand = nn.BatchNorm2d(4 * planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != 4 * planes:  # a projection shortcut
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, 4 * planes, 1, stride,
                                                      bias=False), nn.BatchNorm2d(4 * planes))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn_reduce(self.conv_reduce(x)))
        out = F.relu(self.bn(self.conv_conv(out)))
        out = self.bn_expand(self.conv_expand(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(shortcut + out)


class CifarResNeXt(nn.Module):
    """ResNeXt for 32x32 inputs (Xie et al., "Aggregated Residual Transformations for Deep
    Neural Networks", CVPR 2017, arXiv:1611.05431): a 3x3 stem to 64 channels, three stages
    of (depth - 2) / 9 ``ResNeXtBlock``s (planes 64, 128, 256; strides 1, 2, 2), 8x8 average
    pooling, linear. ResNeXt-29 with 4 groups of width 32 is AugMix's CIFAR model (Hendrycks
    et al., ICLR 2020, arXiv:1912.02781), RobustBench's ``Hendrycks2020AugMix_ResNeXt``. No
    input standardization (RobustBench standardizes with mean = std = 0.5 around it)."""

    def __init__(self, num_classes: int, depth: int = 29, groups: int = 4,
                 path_width: int = 32) -> None:
        super().__init__()
        if (depth - 2) % 9:
            raise ValueError(f"CIFAR ResNeXt depth must be 9n + 2 (e.g. 29), got {depth}")
        blocks = (depth - 2) // 9
        self.conv_1_3x3 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn_1 = nn.BatchNorm2d(64)
        stages, inplanes = [], 64
        for planes, stride in ((64, 1), (128, 2), (256, 2)):
            layers = [ResNeXtBlock(inplanes, planes, groups, path_width, stride)]
            layers += [ResNeXtBlock(4 * planes, planes, groups, path_width)
                       for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layers))
            inplanes = 4 * planes
        self.stage_1, self.stage_2, self.stage_3 = stages
        self.avgpool = nn.AvgPool2d(8)
        self.classifier = nn.Linear(4 * 256, num_classes)
        init_conv_and_linear(self)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn_1(self.conv_1_3x3(x)))
        x = self.stage_3(self.stage_2(self.stage_1(x)))
        return self.classifier(self.avgpool(x).flatten(1))


# ---- semantic segmentation -------------------------------------------------------------
#
# Both segmentation models below share torchvision's ResNet names, so normalization surgery
# (IBN-Net a/b, ISW / RobustNet) is written once, against these module paths:
#
#   backbone.conv1, backbone.bn1, backbone.relu  the stem; ``backbone.bn1`` is its norm layer
#                                                (IBN-b: IN instead of BN; ISW: IN + whitening)
#   backbone.layer1 .. backbone.layer4            the four residual stages; each is an
#                                                nn.Sequential of blocks with ``bn1`` as the
#                                                first norm layer (IBN-a: half IN in ``bn1``
#                                                of every block of layers 1-3)
#   outputs of backbone.layer1 / backbone.layer2  "after stage 1 / 2" (IBN-b: IN after the
#                                                last block's residual addition; ISW: IN +
#                                                whitening loss on these features)
#
# ``SURGERY_POINTS`` names them; every segmentation model carries it as ``surgery_points``.
# Inputs are images in [0, 1]; the models standardize them with the ImageNet mean and std
# themselves (a fixed, non-trainable step), so suites hand over raw pixels.

SURGERY_POINTS: dict[str, str] = {
    "stem_norm": "backbone.bn1",
    "stage1": "backbone.layer1",
    "stage2": "backbone.layer2",
    "stage3": "backbone.layer3",
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageNetStandardize(nn.Module):
    """(x - mean) / std per channel with ImageNet statistics; no parameters, no state."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1),
                             persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class SmallSegBackbone(nn.Module):
    """A ResNet with torchvision's module names, scaled down for CPU: stem conv (stride 2),
    four stages of basic blocks with strides 1, 2, 2 and a dilated stride-1 layer4 (output
    stride 8, as in DeepLab's dilated ResNets)."""

    def __init__(self, widths: tuple[int, int, int, int] = (16, 32, 48, 64)) -> None:
        super().__init__()
        w1, w2, w3, w4 = widths
        self.conv1 = nn.Conv2d(3, w1, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(w1)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(BasicBlock(w1, w1, 1))
        self.layer2 = nn.Sequential(BasicBlock(w1, w2, 2))
        self.layer3 = nn.Sequential(BasicBlock(w2, w3, 2))
        self.layer4 = nn.Sequential(BasicBlock(w3, w4, 1))
        for conv in (self.layer4[0].conv1, self.layer4[0].conv2):  # dilation 2 keeps stride 8
            conv.dilation, conv.padding = (2, 2), (2, 2)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        low = self.layer1(self.relu(self.bn1(self.conv1(x))))
        return {"low": low, "out": self.layer4(self.layer3(self.layer2(low)))}


class SmallSegNet(nn.Module):
    """CPU encoder-decoder for small street scenes (e.g. 64x128): ``SmallSegBackbone`` plus a
    DeepLabV3+-style decoder (context features upsampled to stage-1 resolution, concatenated
    with projected stage-1 features, one 3x3 conv, 1x1 classifier, bilinear upsampling to the
    input size). Module names follow torchvision's ResNet; see ``SURGERY_POINTS``."""

    surgery_points = SURGERY_POINTS

    def __init__(
        self, num_classes: int, widths: tuple[int, int, int, int] = (16, 32, 48, 64),
        decoder_width: int = 32,
    ) -> None:
        super().__init__()
        self.standardize = ImageNetStandardize()
        self.backbone = SmallSegBackbone(widths)
        self.project_low = nn.Sequential(
            nn.Conv2d(widths[0], 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True)
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(widths[3] + 16, decoder_width, 3, 1, 1, bias=False),
            nn.BatchNorm2d(decoder_width), nn.ReLU(inplace=True),
        )
        self.classifier = nn.Conv2d(decoder_width, num_classes, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m is not self.classifier:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        features = self.backbone(self.standardize(x))
        low = self.project_low(features["low"])
        context = F.interpolate(features["out"], size=low.shape[-2:], mode="bilinear",
                                align_corners=False)
        logits = self.classifier(self.decoder(torch.cat([context, low], 1)))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


class DeepLabV3ResNet50(nn.Module):
    """DeepLabV3 with a dilated ResNet-50 backbone (Chen et al. 2017, "Rethinking Atrous
    Convolution for Semantic Image Segmentation", arXiv:1706.05587), built by torchvision with
    ``weights=None, weights_backbone=None`` (nothing is downloaded); output stride 8.

    ``backbone_weights``: optional local file with an ImageNet ResNet-50 state dict
    (torchvision's ``resnet50-*.pth`` or a ``.safetensors`` file); its ``fc.*`` entries are
    dropped, every other backbone weight must match. Module names: see ``SURGERY_POINTS``.
    """

    surgery_points = SURGERY_POINTS

    def __init__(self, num_classes: int, backbone_weights: str | Path | None = None) -> None:
        super().__init__()
        from torchvision.models.segmentation import deeplabv3_resnet50

        if backbone_weights is not None:
            _require_backbone_file(Path(backbone_weights))  # fail before the slow build

        net = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=num_classes,
                                 aux_loss=False)
        self.standardize = ImageNetStandardize()
        self.backbone = net.backbone  # IntermediateLayerGetter: conv1, bn1, ..., layer4
        self.classifier = net.classifier
        if backbone_weights is not None:
            self.load_backbone(backbone_weights)

    def load_backbone(self, path: str | Path) -> None:
        path = Path(path)
        _require_backbone_file(path)
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        try:
            missing, unexpected = self.backbone.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shape mismatches
            raise ShiftbenchError(f"{path} is not a torchvision ResNet-50 state dict: {exc}"
                                  ) from None
        if missing or unexpected:
            raise ShiftbenchError(
                f"{path} is not a torchvision ResNet-50 state dict: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        logits = self.classifier(self.backbone(self.standardize(x))["out"])
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def _require_backbone_file(path: Path) -> None:
    if not path.is_file():
        raise ShiftbenchError(
            f"ImageNet ResNet-50 backbone file {path} not found; download torchvision's "
            "https://download.pytorch.org/models/resnet50-0676ba61.pth there, or build the "
            "model without backbone_weights (random initialization)"
        )


MODELS: dict[str, Callable[..., nn.Module]] = {
    "small_resnet": SmallResNet,
    "lenet": LeNet,
    "dtn": DTN,
    "small_segnet": SmallSegNet,
    "deeplabv3_resnet50": DeepLabV3ResNet50,
    "wide_resnet": WideResNet,
    "wrn28_10": wrn28_10,
    "two_stream_resnet": TwoStreamResNet,
}


def create_model(arch: str, num_classes: int, **kwargs: Any) -> nn.Module:
    try:
        factory = MODELS[arch]
    except KeyError:
        raise KeyError(f"unknown architecture {arch!r}; known: {', '.join(MODELS)}") from None
    return factory(num_classes=num_classes, **kwargs)
