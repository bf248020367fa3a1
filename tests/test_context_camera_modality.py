"""Defining behaviour of the training-time adapters camera_bn, modality_bn, cdn, sbn and
context_norm (small models, synthetic tensors; seconds on CPU)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adapters.camera_bn import CameraBatchNorm2d, camera_layers
from adapters.modality_bn import ModalityBatchNorm2d
from benchmark.adapter import TargetStream
from benchmark.layers.context_norm import ContextNorm, InputContextNorm, context_layers
from benchmark.layers.fusion import ScaledEmbeddingNorm
from benchmark.layers.models import SmallResNet, TwoStreamResNet
from benchmark.registry import ADAPTERS


def small_resnet() -> SmallResNet:
    torch.manual_seed(0)
    return SmallResNet(10, widths=(4, 8, 8))


def two_stream() -> TwoStreamResNet:
    torch.manual_seed(0)
    return TwoStreamResNet(10, widths=(4, 8, 8), embed_dim=16)


# ---- camera BN --------------------------------------------------------------------------

def test_camera_bn_keeps_statistics_per_camera_and_one_shared_affine():
    layer = CameraBatchNorm2d(3, max_cameras=4)
    a = torch.randn(8, 3, 5, 5) + 2.0
    b = torch.randn(8, 3, 5, 5) * 3 - 1.0
    layer.train()
    layer.select(0)
    layer(a)
    layer.select(2)
    out_b = layer(b)
    # Momentum 0.1 from the initial (0, 1): each camera's row moved towards its own batch only.
    torch.testing.assert_close(layer.camera_mean[0], 0.1 * a.mean((0, 2, 3)))
    torch.testing.assert_close(layer.camera_mean[2], 0.1 * b.mean((0, 2, 3)))
    torch.testing.assert_close(layer.camera_var[2], 0.9 + 0.1 * b.var((0, 2, 3)))
    assert torch.equal(layer.camera_mean[1], torch.zeros(3))
    assert layer.camera_batches.tolist() == [1, 0, 1, 0]
    # The batch is normalized with its own statistics, then one shared affine.
    expected = (b - b.mean((0, 2, 3), keepdim=True)) / (
        b.var((0, 2, 3), unbiased=False, keepdim=True) + layer.eps).sqrt()
    torch.testing.assert_close(out_b, expected, atol=1e-5, rtol=1e-5)
    assert [name for name, _ in layer.named_parameters()] == ["weight", "bias"]
    # Without a selection the layer holds the pooled statistics of the two seen cameras.
    both = torch.cat([a, b])
    torch.testing.assert_close(layer.running_mean, 0.1 * both.mean((0, 2, 3)))
    # Eval mode with camera 0 selected uses camera 0's statistics.
    layer.eval()
    layer.select(0)
    torch.testing.assert_close(layer.running_mean, layer.camera_mean[0])


def test_camera_bn_training_rejects_mixed_camera_batches():
    adapter = ADAPTERS.get("camera_bn")()
    model = adapter.prepare(small_resnet())
    assert len(camera_layers(model)) == sum(1 for _ in model.modules()
                                            if isinstance(_, CameraBatchNorm2d))
    assert not any(type(m) is nn.BatchNorm2d for m in model.modules())
    with pytest.raises(ValueError, match="single-camera"):
        adapter.set_context(model, {"role": "source", "camera": torch.tensor([0, 1])})


def _trained_camera_model(adapter):
    model = adapter.prepare(small_resnet()).train()
    torch.manual_seed(1)
    for camera, shift in ((0, 0.0), (1, 0.5), (0, 0.0), (1, 0.5)):
        x = torch.rand(16, 3, 16, 16) + shift
        adapter.set_context(model, {"role": "source", "camera": torch.full((16,), camera)})
        model(x)
    return model


def test_camera_bn_unseen_camera_statistics_equal_a_direct_computation():
    adapter = ADAPTERS.get("camera_bn")()
    model = _trained_camera_model(adapter)
    unseen = torch.rand(50, 3, 16, 16) * 0.3 + 0.6
    adapter.attach(model)
    adapter.set_context(model, {"role": "target", "domain": "cam-unseen", "camera": 4})
    adapter.adapt(TargetStream(unseen, batch_size=16))  # batches of 16, 16, 16, 2
    stem_bn = model.stem[1]
    with torch.no_grad():
        features = model.stem[0](unseen).double()
    torch.testing.assert_close(stem_bn.running_mean, features.mean((0, 2, 3)).float())
    torch.testing.assert_close(stem_bn.running_var, features.var((0, 2, 3)).float())
    assert not model.training
    # The stored per-camera statistics are untouched; reset keeps camera 4 selected.
    assert stem_bn.camera_batches[4] == 0
    adapter.reset()
    assert stem_bn.camera == 4


def test_camera_bn_seen_camera_uses_its_stored_statistics_without_adapting():
    adapter = ADAPTERS.get("camera_bn")()
    model = _trained_camera_model(adapter)
    adapter.attach(model)
    adapter.set_context(model, {"role": "target", "domain": "cam-1", "camera": 1})
    adapter.adapt(TargetStream(torch.rand(20, 3, 16, 16) * 5, batch_size=10))
    for layer in camera_layers(model):
        torch.testing.assert_close(layer.running_mean, layer.camera_mean[1])
        torch.testing.assert_close(layer.running_var, layer.camera_var[1])
    # A source stream mixing cameras (no constant id): the pooled statistics of the seen ones.
    adapter.set_context(model, {"role": "source", "domain": "cams-seen"})
    layer = model.stem[1]
    w = layer.camera_batches[:2].double() / layer.camera_batches.sum()
    mean = (w[:, None] * layer.camera_mean[:2].double()).sum(0)
    second = (w[:, None] * (layer.camera_var[:2] + layer.camera_mean[:2] ** 2).double()).sum(0)
    torch.testing.assert_close(layer.running_mean, mean.float())
    torch.testing.assert_close(layer.running_var, (second - mean**2).float())


# ---- modality BN ------------------------------------------------------------------------

def test_modality_bn_normalizes_each_modality_with_its_own_statistics():
    layer = ModalityBatchNorm2d(3, num_modalities=2).train()
    rgb = torch.randn(6, 3, 4, 4) + 3
    thermal = torch.randn(6, 3, 4, 4) * 0.1
    out = layer(torch.cat([rgb, thermal]))

    def standardized(t):
        return (t - t.mean((0, 2, 3), keepdim=True)) / (
            t.var((0, 2, 3), unbiased=False, keepdim=True) + layer.eps).sqrt()

    torch.testing.assert_close(out[:6], standardized(rgb), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[6:], standardized(thermal), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer.modality_mean[0], 0.1 * rgb.mean((0, 2, 3)))
    torch.testing.assert_close(layer.modality_mean[1], 0.1 * thermal.mean((0, 2, 3)))
    assert [name for name, _ in layer.named_parameters()] == ["weight", "bias"]
    layer.eval()  # each half with its modality's running statistics
    x = torch.randn(2, 3, 4, 4)
    out = layer(torch.cat([x, x]))
    for m in range(2):
        expected = (x - layer.modality_mean[m].view(1, 3, 1, 1)) / (
            layer.modality_var[m].view(1, 3, 1, 1) + layer.eps).sqrt()
        torch.testing.assert_close(out[2 * m : 2 * m + 2], expected, atol=1e-5, rtol=1e-5)


def test_modality_bn_converts_the_shared_trunk_only():
    plain = sum(isinstance(m, nn.BatchNorm2d) for m in two_stream().modules())
    model = ADAPTERS.get("modality_bn")().prepare(two_stream())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert sum(isinstance(m, ModalityBatchNorm2d) for m in model.trunks["shared"].modules()) \
        == plain > 0
    adabn = ADAPTERS.get("adabn")()
    adabn.attach(model)
    with pytest.raises(ValueError, match="BatchNorm"):  # rather than silently do nothing
        adabn.adapt(TargetStream(torch.rand(2, 6, 16, 16), 2))
    assert model(torch.rand(4, 6, 16, 16)).shape == (4, 10)
    with pytest.raises(ValueError, match="already per-modality"):
        ADAPTERS.get("modality_bn")().prepare(
            TwoStreamResNet(10, widths=(4, 8, 8), shared_trunk=False))


# ---- CDN / SBN ----------------------------------------------------------------------------

def _fusion_outputs(model, x):
    outputs = {}
    hooks = [model.fusion_norm[m].register_forward_hook(
        lambda mod, inp, out, m=m: outputs.__setitem__(m, out)) for m in model.modalities]
    logits = model(x)
    for h in hooks:
        h.remove()
    return logits, outputs


def test_cdn_scales_set_each_modality_embedding_variance():
    model = ADAPTERS.get("cdn")(scale_x=2.0, scale_y=0.5).prepare(two_stream())
    assert all(isinstance(model.fusion_norm[m], ScaledEmbeddingNorm) for m in model.modalities)
    logits, out = _fusion_outputs(model.train(), torch.rand(5, 6, 16, 16))
    # LayerNorm without affine: every sample's embedding has mean 0 and variance s**2.
    for m, s in zip(model.modalities, (2.0, 0.5), strict=True):
        torch.testing.assert_close(out[m].mean(1), torch.zeros(5), atol=1e-5, rtol=0)
        torch.testing.assert_close(out[m].var(1, unbiased=False), torch.full((5,), s**2),
                                   atol=1e-3, rtol=1e-3)
    logits.sum().backward()  # the scales are learned
    assert all(model.fusion_norm[m].scale.grad is not None for m in model.modalities)


def test_sbn_scales_set_each_modality_variance_over_the_batch():
    model = ADAPTERS.get("sbn")(scale_x=3.0, scale_y=1.0, learn_scales=False).prepare(
        two_stream())
    _, out = _fusion_outputs(model.train(), torch.rand(8, 6, 16, 16))
    for m, s in zip(model.modalities, (3.0, 1.0), strict=True):
        assert isinstance(model.fusion_norm[m].norm, nn.BatchNorm1d)
        torch.testing.assert_close(out[m].var(0, unbiased=False), torch.full((16,), s**2),
                                   atol=1e-2, rtol=1e-2)
        assert not model.fusion_norm[m].scale.requires_grad


# ---- Context Normalization ----------------------------------------------------------------

def test_context_norm_statistics_depend_only_on_the_context_id():
    torch.manual_seed(0)
    layer = ContextNorm(3, num_contexts=2)
    for head in (layer.mean_head, layer.log_std_head):
        nn.init.normal_(head.weight)
        nn.init.normal_(head.bias)
    nn.init.normal_(layer.weight)
    contexts = torch.tensor([0, 1, 1, 0])
    layer.context = contexts
    x = torch.randn(4, 3, 5, 5) * 4
    out = layer(x)
    mean, std = layer.context_statistics(torch.tensor([0, 1]))
    assert (std > 0).all() and not torch.allclose(mean[0], mean[1])
    for i, r in enumerate(contexts.tolist()):  # same formula, statistics of the sample's context
        expected = (x[i] - mean[r].view(3, 1, 1)) / (std[r].view(3, 1, 1) ** 2 + 1e-5).sqrt()
        expected = layer.weight.view(3, 1, 1) * expected + layer.bias.view(3, 1, 1)
        torch.testing.assert_close(out[i], expected)
    # Other inputs, same contexts: the same statistics (not estimated from the batch).
    y = torch.randn(4, 3, 5, 5) + 10
    manual = layer.weight.view(1, 3, 1, 1) * (y - mean[contexts].view(4, 3, 1, 1)) / (
        std[contexts].view(4, 3, 1, 1) ** 2 + 1e-5).sqrt() + layer.bias.view(1, 3, 1, 1)
    torch.testing.assert_close(layer(y), manual)


def test_context_norm_da_switches_context_by_role_and_keeps_source_bn_statistics():
    adapter = ADAPTERS.get("context_norm")()
    model = adapter.prepare(small_resnet())
    assert isinstance(model, InputContextNorm)
    (layer,) = context_layers(model)
    model.train()
    adapter.set_context(model, {"role": "source"})
    assert layer.context == 0
    model(torch.rand(8, 3, 16, 16))  # records the source batch's confidence
    adapter.set_context(model, {"role": "target", "domain": "digits-m"})
    assert layer.context == 1
    bn = model.net.stem[1]
    before = bn.running_mean.clone()
    loss = adapter.target_loss(model, torch.rand(8, 3, 16, 16))
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert torch.equal(bn.running_mean, before) and bn.training
    # A threshold nobody reaches keeps every pseudo-label out: the loss is exactly zero.
    strict = ADAPTERS.get("context_norm")(tau=2.0)
    strict_model = strict.prepare(small_resnet()).train()
    strict.set_context(strict_model, {"role": "target", "domain": "t"})
    assert strict.target_loss(strict_model, torch.rand(8, 3, 16, 16)).item() == 0.0
    # Test time: the stream's role picks the context.
    adapter.set_context(model, {"role": "source", "domain": "digits"})
    assert layer.context == 0


def test_context_norm_stem_position_replaces_the_first_batchnorm():
    model = ADAPTERS.get("context_norm")(position="stem").prepare(small_resnet())
    assert isinstance(model.stem[1], ContextNorm)
    assert model(torch.rand(2, 3, 16, 16)).shape == (2, 10)


def test_context_norm_group_contexts_are_image_clusters_frozen_after_fitting():
    from adapters.context_norm_group import ClusterContextModel

    adapter = ADAPTERS.get("context_norm_group")(k=2, fit_batches=3)
    model = adapter.prepare(small_resnet())
    assert isinstance(model, ClusterContextModel) and isinstance(model.net.stem[1], ContextNorm)
    torch.manual_seed(0)
    dark, bright = torch.rand(8, 3, 16, 16) * 0.2, torch.rand(8, 3, 16, 16) * 0.2 + 0.8
    model.train()
    for _ in range(4):  # 3 fitting batches, then frozen
        model(torch.cat([dark, bright]))
    centres = model.contexts.centres.clone()
    assert int(model.contexts.batches_seen) == 3
    model(torch.rand(16, 3, 16, 16))
    assert torch.equal(model.contexts.centres, centres)
    # Two well separated groups: two clusters, each image with its group; the CN layer got
    # the ids of the last forward pass.
    model.eval()
    model(torch.cat([dark[:3], bright[:3]]))
    ids = model.net.stem[1].context
    assert ids[:3].unique().numel() == 1 and ids[3:].unique().numel() == 1
    assert ids[0] != ids[3]


def test_context_norm_target_loss_trains_only_the_context_norm_layer_by_default():
    for updates, expect_trunk_grad in (("context_norm", False), ("all", True)):
        adapter = ADAPTERS.get("context_norm")(objective="infomax", warmup_steps=1,
                                               target_updates=updates)
        model = adapter.prepare(small_resnet()).train()
        adapter.set_context(model, {"role": "target", "domain": "t"})
        loss = adapter.target_loss(model, torch.rand(8, 3, 16, 16))
        loss.backward()
        (layer,) = context_layers(model)
        assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
        trunk = model.net.stem[0].weight.grad
        assert (trunk is not None and trunk.abs().sum() > 0) == expect_trunk_grad


def test_context_norm_infomax_rewards_confident_diverse_predictions():
    from adapters.context_norm import ContextNormDA

    confident_diverse = torch.eye(10) * 50
    collapsed = torch.zeros(10, 10)
    collapsed[:, 3] = 50
    torch.testing.assert_close(ContextNormDA._infomax_loss(confident_diverse),
                               -torch.log(torch.tensor(10.0)), atol=1e-4, rtol=0)
    torch.testing.assert_close(ContextNormDA._infomax_loss(collapsed), torch.tensor(0.0),
                               atol=1e-4, rtol=0)
