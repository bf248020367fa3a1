"""Normalization surgery by position: paths on every ResNet-shaped model, replacement, and
the post-addition norm (IBN-b / RobustNet) on basic and bottleneck blocks."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from benchmark.layers.models import DeepLabV3ResNet50, SmallResNet, SmallSegNet, WideResNet
from benchmark.layers.surgery import (
    SurgeryError,
    add_norm_after_addition,
    batchnorm_paths,
    first_norm_paths,
    get_module,
    last_block_path,
    replace_modules,
    stem_norm_path,
)


@pytest.fixture(scope="module")
def resnet50() -> nn.Module:
    return torchvision.models.resnet50()


@pytest.fixture(scope="module")
def deeplab() -> nn.Module:
    return DeepLabV3ResNet50(num_classes=19)


# (model, stem norm, blocks per stage 1-3, last block of stages 1 and 2)
CASES = {
    "small_resnet": (lambda: SmallResNet(10, blocks=2), "stem.1", (2, 2, 2),
                     ("layer1.1", "layer2.1")),
    "small_segnet": (lambda: SmallSegNet(19), "backbone.bn1", (1, 1, 1),
                     ("backbone.layer1.0", "backbone.layer2.0")),
    "resnet18": (lambda: torchvision.models.resnet18(), "bn1", (2, 2, 2),
                 ("layer1.1", "layer2.1")),
    "wide_resnet": (lambda: WideResNet(10, depth=16, widen_factor=1), "block1.layer.0.bn1",
                    (2, 2, 2), ("block1.layer.1", "block2.layer.1")),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_positions_on_small_models(name):
    build, stem, per_stage, last_blocks = CASES[name]
    model = build()
    assert stem_norm_path(model) == stem
    assert isinstance(get_module(model, stem), _BatchNorm)
    firsts = first_norm_paths(model, (1, 2, 3))
    assert len(firsts) == sum(per_stage)
    # the BN after each block's first conv: bn1, or bn2 in pre-activation (WRN) blocks
    after_first_conv = ".bn2" if name == "wide_resnet" else ".bn1"
    assert all(p.endswith(after_first_conv) and isinstance(get_module(model, p), _BatchNorm)
               for p in firsts)
    assert (last_block_path(model, 1), last_block_path(model, 2)) == last_blocks


def test_positions_on_resnet50_and_deeplab_backbone(resnet50, deeplab):
    for model, prefix in ((resnet50, ""), (deeplab, "backbone.")):
        assert stem_norm_path(model) == f"{prefix}bn1"
        firsts = first_norm_paths(model, (1, 2, 3))
        assert len(firsts) == 3 + 4 + 6  # ResNet-50's blocks in stages 1-3
        assert firsts[0] == f"{prefix}layer1.0.bn1" and firsts[-1] == f"{prefix}layer3.5.bn1"
        assert last_block_path(model, 1) == f"{prefix}layer1.2"
        assert last_block_path(model, 2) == f"{prefix}layer2.3"
    assert len(batchnorm_paths(resnet50)) == 1 + 3 * (3 + 4 + 6 + 3) + 4  # + downsample BNs


def test_non_resnet_models_get_a_clear_error():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    with pytest.raises(SurgeryError, match="not a ResNet-shaped"):
        stem_norm_path(model)
    with pytest.raises(SurgeryError, match="not a ResNet block"):
        add_norm_after_addition(nn.Conv2d(3, 3, 1), nn.Identity())


def test_replace_modules_replaces_every_batchnorm():
    model = SmallSegNet(19)
    paths = batchnorm_paths(model)
    replace_modules(model, paths, lambda bn: nn.GroupNorm(1, bn.num_features))
    assert not batchnorm_paths(model)
    assert sum(isinstance(m, nn.GroupNorm) for m in model.modules()) == len(paths)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 19, 32, 32)


class Negate(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -x


def residual_sum(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """F(x) + shortcut(x), computed from the block's parts by hand."""
    out = block.relu(block.bn1(block.conv1(x)))
    out = block.bn2(block.conv2(out))
    if hasattr(block, "conv3"):
        out = block.bn3(block.conv3(block.relu(out)))
    return out + (x if block.downsample is None else block.downsample(x))


@pytest.mark.parametrize("which", ["small_basic", "torchvision_basic", "bottleneck"])
def test_norm_after_addition_sits_between_sum_and_relu(which, resnet50):
    torch.manual_seed(0)
    if which == "small_basic":
        block, x = SmallResNet(10).layer2[0], torch.randn(2, 16, 8, 8)
    elif which == "torchvision_basic":
        block, x = torchvision.models.resnet18().layer2[0], torch.randn(2, 64, 8, 8)
    else:
        block, x = copy.deepcopy(resnet50.layer1[0]), torch.randn(2, 64, 8, 8)
    block.eval()
    keys = set(block.state_dict())
    with torch.no_grad():
        expected_plain = block(x)
        add_norm_after_addition(block, nn.Identity())
        assert torch.allclose(block(x), expected_plain)  # identity norm: unchanged block
        block.IN = Negate()
        assert torch.allclose(block(x), torch.relu(-residual_sum(block, x)))
    assert set(block.state_dict()) == keys  # the block keeps its parameter names
    with pytest.raises(SurgeryError, match="already"):
        add_norm_after_addition(block, nn.Identity())


def test_norm_after_addition_on_a_preactivation_block_normalizes_its_output():
    torch.manual_seed(0)
    block = WideResNet(10, depth=16, widen_factor=1).block2.layer[1].eval()  # identity shortcut
    x = torch.randn(2, 32, 8, 8)
    with torch.no_grad():
        plain = block(x)
        add_norm_after_addition(block, Negate())
        assert torch.allclose(block(x), -plain)  # the sum, negated; no ReLU after it
