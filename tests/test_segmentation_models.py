"""Segmentation backbones: output shapes and the normalization-surgery points."""

import pytest
import torch
from torch import nn

from benchmark.layers.models import SURGERY_POINTS, create_model


def module_at(model: nn.Module, path: str) -> nn.Module:
    return model.get_submodule(path)


@pytest.fixture(scope="module")
def deeplab():
    torch.manual_seed(0)
    return create_model("deeplabv3_resnet50", num_classes=19).eval()


@pytest.mark.parametrize("arch, size", [("small_segnet", (64, 128)),
                                        ("deeplabv3_resnet50", (32, 32))])
def test_logits_cover_every_pixel_and_surgery_points_exist(arch, size, request):
    torch.manual_seed(0)
    model = (request.getfixturevalue("deeplab") if arch == "deeplabv3_resnet50"
             else create_model(arch, num_classes=19).eval())
    with torch.no_grad():
        logits = model(torch.rand(1, 3, *size))
    assert logits.shape == (1, 19, *size)
    assert model.surgery_points == SURGERY_POINTS
    assert isinstance(module_at(model, SURGERY_POINTS["stem_norm"]), nn.BatchNorm2d)
    for stage in ("stage1", "stage2", "stage3"):
        layer = module_at(model, SURGERY_POINTS[stage])
        assert isinstance(layer, nn.Sequential)
        # IBN-a rewrites the first norm layer of every block of stages 1-3.
        assert all(isinstance(block.bn1, nn.BatchNorm2d) for block in layer)


def test_stage_outputs_can_be_hooked_where_ibn_b_and_isw_act():
    """IBN-b / ISW act on the stem and on the outputs of stages 1 and 2: hooks there see
    features at decreasing resolution, so surgery at these points really changes them."""
    model = create_model("small_segnet", num_classes=19).eval()
    seen = {}
    for name in ("stem_norm", "stage1", "stage2"):
        module_at(model, SURGERY_POINTS[name]).register_forward_hook(
            lambda m, i, o, name=name: seen.__setitem__(name, o.shape))
    with torch.no_grad():
        model(torch.rand(1, 3, 64, 128))
    assert seen["stem_norm"][-2:] == (32, 64)
    assert seen["stage1"][-2:] == (32, 64)
    assert seen["stage2"][-2:] == (16, 32)
    # Replacing the stem norm (IBN-b) changes the output: the point is on the forward path.
    x = torch.rand(2, 3, 64, 128)
    with torch.no_grad():
        before = model(x)
        model.backbone.bn1 = nn.InstanceNorm2d(model.backbone.bn1.num_features, affine=True)
        assert not torch.allclose(before, model(x))


def test_deeplab_loads_a_local_imagenet_backbone(tmp_path, deeplab):
    # A torchvision ResNet-50 state dict has the backbone's keys plus fc.*, which is dropped.
    state = {k: torch.randn_like(v) if v.is_floating_point() else v
             for k, v in deeplab.backbone.state_dict().items()}
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)
    path = tmp_path / "resnet50.pth"
    torch.save(state, path)
    deeplab.load_backbone(path)
    assert torch.equal(deeplab.backbone.layer3[0].conv2.weight, state["layer3.0.conv2.weight"])
    assert torch.equal(deeplab.backbone.bn1.running_var, state["bn1.running_var"])
    torch.save({"conv1.weight": torch.zeros(1)}, path)
    from benchmark.errors import ShiftbenchError

    with pytest.raises(ShiftbenchError, match="not a torchvision ResNet-50"):
        deeplab.load_backbone(path)


def test_missing_backbone_file_is_one_clear_error(tmp_path):
    from benchmark.errors import ShiftbenchError

    with pytest.raises(ShiftbenchError, match="resnet50-0676ba61.pth"):
        create_model("deeplabv3_resnet50", 19, backbone_weights=tmp_path / "nope.pth")
