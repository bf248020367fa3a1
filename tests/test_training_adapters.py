"""Training-time adapters: DSBN, IBN-Net a/b, ISW/IW/IRW (RobustNet), Switchable Norm.

Each test checks a defining property of the method against its paper or reference
definition: layer placements and parameter counts, branch selection, the covariance and the
selective mask, the reduction of SN to IN/LN/BN."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from adapters.dsbn import DomainSpecificBatchNorm, dsbn_layers, to_dsbn
from adapters.ibn_a import InstanceBatchNorm2d
from adapters.isw import ISW, kmeans_1d
from adapters.switchable_norm import SwitchNorm2d
from benchmark.layers.models import SmallResNet, SmallSegNet, WideResNet
from benchmark.layers.whitening import (
    InstanceWhitening,
    covariance,
    to_instance_whitening,
    whitening_layers,
    whitening_loss,
)
from benchmark.registry import ADAPTERS, SUITES
from benchmark.suite import DomainData
from benchmark.training import train_source


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small models on a shared 2-core machine: one thread avoids oversubscription."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def n_params(model: nn.Module, kind: type | None = None) -> int:
    modules = [model] if kind is None else [m for m in model.modules() if isinstance(m, kind)]
    return sum(p.numel() for m in modules for p in m.parameters())


def n_running_stats(model: nn.Module) -> int:
    return sum(b.numel() for name, b in model.named_buffers()
               if name.endswith(("running_mean", "running_var")))


# ResNet-50 by definition: (planes, blocks) of stages 1-3; bottleneck bn1 has `planes`
# channels, a stage's output 4 * planes.
RESNET50_STAGES = ((64, 3), (128, 4), (256, 6))


@pytest.fixture(scope="module")
def resnet50() -> nn.Module:
    return torchvision.models.resnet50()


def fresh_resnet50(template: nn.Module) -> nn.Module:
    model = torchvision.models.resnet50()
    model.load_state_dict(template.state_dict())
    return model


# ---- IBN-Net --------------------------------------------------------------------------------
def test_ibn_a_on_resnet50_matches_the_ibn_net_definition(resnet50):
    model = ADAPTERS.get("ibn_a")().prepare(fresh_resnet50(resnet50))
    for stage, (planes, blocks) in enumerate(RESNET50_STAGES, start=1):
        for i in range(blocks):
            block = getattr(model, f"layer{stage}")[i]
            assert isinstance(block.bn1, InstanceBatchNorm2d)
            # first int(planes/2) channels IN (affine), the rest BN
            assert block.bn1.IN.num_features == planes // 2 and block.bn1.IN.affine
            assert block.bn1.BN.num_features == planes - planes // 2
            assert isinstance(block.bn2, nn.BatchNorm2d) and isinstance(block.bn3, nn.BatchNorm2d)
    assert all(isinstance(b.bn1, nn.BatchNorm2d) for b in model.layer4)  # stage 4 untouched
    assert isinstance(model.bn1, nn.BatchNorm2d)
    # IBN splits C affine pairs into half IN + half BN: the parameter count is ResNet-50's,
    # and BN running statistics shrink by the IN halves.
    in_halves = sum(blocks * (planes // 2) for planes, blocks in RESNET50_STAGES)
    assert n_params(model, nn.InstanceNorm2d) == 2 * in_halves
    assert n_params(model) == n_params(resnet50)
    assert n_running_stats(model) == n_running_stats(resnet50) - 2 * in_halves
    assert "layer1.0.bn1.IN.weight" in model.state_dict()  # the reference's key names


def test_ibn_a_splits_channels_in_then_bn():
    torch.manual_seed(0)
    ibn = InstanceBatchNorm2d(5)  # int(5 * 0.5) = 2 IN channels, as the reference rounds
    assert ibn.half == 2
    x = torch.randn(4, 5, 6, 6) * 3 + 1
    out = ibn(x)
    torch.testing.assert_close(out[:, :2], F.instance_norm(x[:, :2]))
    torch.testing.assert_close(out[:, 2:], F.batch_norm(x[:, 2:], None, None, training=True))


def test_ibn_b_on_resnet50_matches_the_ibn_net_definition(resnet50):
    model = ADAPTERS.get("ibn_b")().prepare(fresh_resnet50(resnet50))
    assert isinstance(model.bn1, nn.InstanceNorm2d) and model.bn1.affine
    assert model.bn1.num_features == 64
    # IN after the addition only in the last block of stages 1 and 2
    with_in = {name: m.IN.num_features for name, m in model.named_modules() if hasattr(m, "IN")}
    assert with_in == {"layer1.2": 4 * 64, "layer2.3": 4 * 128}
    assert not any(isinstance(m, InstanceBatchNorm2d) for m in model.modules())
    # stem: IN's affine pair replaces BN's (same count); + affine IN of 256 and 512 channels
    assert n_params(model) == n_params(resnet50) + 2 * (256 + 512)
    assert n_running_stats(model) == n_running_stats(resnet50) - 2 * 64


def test_ibn_a_stages_hparam_limits_the_stages():
    model = ADAPTERS.get("ibn_a")(stages=2).prepare(SmallResNet(10))
    ibn = [name for name, m in model.named_modules() if isinstance(m, InstanceBatchNorm2d)]
    assert ibn == ["layer1.0.bn1", "layer2.0.bn1"]


def test_ibn_a_on_basic_blocks_as_resnet18_ibn_a():
    base = torchvision.models.resnet18()
    model = ADAPTERS.get("ibn_a")().prepare(torchvision.models.resnet18())
    ibn = [name for name, m in model.named_modules() if isinstance(m, InstanceBatchNorm2d)]
    assert ibn == [f"layer{s}.{i}.bn1" for s in (1, 2, 3) for i in (0, 1)]
    assert n_params(model) == n_params(base)


@pytest.mark.parametrize("name", ["ibn_a", "ibn_b", "switchable_norm", "isw", "iw", "irw",
                                  "dsbn", "domain_norm", "transnorm", "dwt"])
def test_surgery_runs_on_small_classification_and_segmentation_models(name):
    for model, shape in ((SmallResNet(10), (2, 10)), (SmallSegNet(19), (2, 19, 32, 32)),
                         (WideResNet(10, depth=10, widen_factor=1), (2, 10))):
        model = ADAPTERS.get(name)().prepare(model)
        model.train()
        assert model(torch.rand(2, 3, 32, 32)).shape == shape
        model.eval()
        assert model(torch.rand(2, 3, 32, 32)).shape == shape


# ---- DSBN -----------------------------------------------------------------------------------
def test_dsbn_keeps_source_keys_and_adds_a_target_branch_per_bn():
    plain = SmallResNet(10)
    model = to_dsbn(SmallResNet(10))
    missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(".target." in key for key in missing)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert len(dsbn_layers(model)) == n_bn
    assert all(isinstance(layer.target, nn.BatchNorm2d) for layer in dsbn_layers(model))


def test_dsbn_branches_have_separate_statistics_and_affine_parameters():
    torch.manual_seed(0)
    adapter = ADAPTERS.get("dsbn")(target_statistics="running")
    model = adapter.prepare(SmallResNet(10)).train()
    stem: DomainSpecificBatchNorm = model.stem[1]
    x_source, x_target = torch.rand(8, 3, 32, 32), torch.rand(8, 3, 32, 32) * 0.3 + 0.5

    adapter.set_context(model, {"role": "source"})
    loss = model(x_source).logsumexp(1).mean()
    adapter.set_context(model, {"role": "target", "domain": "t"})
    assert adapter.target_loss(model, x_target) is None  # plain form: statistics only
    loss.backward()

    def stem_mean(x: torch.Tensor) -> torch.Tensor:  # BN momentum 0.1 from zero
        with torch.no_grad():
            return 0.1 * model.stem[0](x).mean((0, 2, 3))

    torch.testing.assert_close(stem.running_mean, stem_mean(x_source))
    torch.testing.assert_close(stem.target.running_mean, stem_mean(x_target))
    assert stem.weight.grad is not None and stem.target.weight.grad is None
    assert stem.weight is not stem.target.weight


def test_dsbn_inference_branch_follows_the_context():
    torch.manual_seed(0)
    adapter = ADAPTERS.get("dsbn")()
    model = adapter.prepare(SmallResNet(10))
    for layer in dsbn_layers(model):  # make the two branches visibly different
        with torch.no_grad():
            layer.target.running_mean.uniform_(-1, 1)
            layer.target.weight.uniform_(0.5, 2)
    model.eval()
    x = torch.rand(4, 3, 32, 32)
    state = model.state_dict()

    def plain_with(branch: str) -> nn.Module:
        """A plain SmallResNet holding one branch's BN values under the source names."""
        plain = SmallResNet(10)
        chosen = {}
        for key, value in state.items():
            if ".target." in key:
                if branch == "target":
                    chosen[key.replace(".target.", ".")] = value
            elif key not in chosen:
                chosen[key] = value
        plain.load_state_dict(chosen)
        return plain.eval()

    with torch.no_grad():
        adapter.set_context(model, {"role": "target", "domain": "digits-m"})
        torch.testing.assert_close(model(x), plain_with("target")(x))
        adapter.set_context(model, {"role": "source", "domain": "digits"})
        torch.testing.assert_close(model(x), plain_with("source")(x))
        assert not torch.allclose(plain_with("source")(x), plain_with("target")(x))


def test_dsbn_pseudo_label_objective_trains_the_target_affine():
    torch.manual_seed(0)
    adapter = ADAPTERS.get("dsbn")(target_objective="pseudo_label", threshold=0.0)
    model = adapter.prepare(SmallResNet(10)).train()
    adapter.set_context(model, {"role": "target", "domain": "t"})
    loss = adapter.target_loss(model, torch.rand(8, 3, 32, 32))
    assert loss is not None and torch.isfinite(loss)
    loss.backward()
    assert model.stem[1].target.weight.grad is not None and model.stem[1].weight.grad is None


# ---- Switchable Norm --------------------------------------------------------------------------
def one_hot_sn(which: int, channels: int = 6) -> SwitchNorm2d:
    sn = SwitchNorm2d(channels)
    with torch.no_grad():
        sn.weight.uniform_(0.5, 2)
        sn.bias.uniform_(-1, 1)
        logits = torch.full((3,), -50.0)
        logits[which] = 50.0
        sn.mean_weight.copy_(logits)
        sn.var_weight.copy_(logits)
    return sn


def test_switchable_norm_reduces_to_in_ln_bn_with_one_hot_weights():
    torch.manual_seed(0)
    x = torch.randn(4, 6, 5, 5) * 2 + torch.arange(6.0).view(1, 6, 1, 1)
    affine = lambda sn, y: y * sn.weight.view(1, -1, 1, 1) + sn.bias.view(1, -1, 1, 1)  # noqa: E731

    sn = one_hot_sn(0)
    torch.testing.assert_close(sn(x), F.instance_norm(x, weight=sn.weight, bias=sn.bias))
    sn = one_hot_sn(1)
    torch.testing.assert_close(sn(x), affine(sn, F.layer_norm(x, x.shape[1:])))
    sn = one_hot_sn(2)
    torch.testing.assert_close(sn(x), F.batch_norm(x, None, None, sn.weight, sn.bias,
                                                   training=True))
    # test time: the BN part uses running statistics (one momentum step from 0 / 1)
    torch.testing.assert_close(sn.running_mean, 0.1 * x.mean((0, 2, 3)))
    torch.testing.assert_close(sn.running_var, 0.9 + 0.1 * x.var((0, 2, 3), unbiased=False))
    sn.eval()
    y = torch.randn(2, 6, 5, 5)
    torch.testing.assert_close(sn(y), F.batch_norm(y, sn.running_mean, sn.running_var,
                                                   sn.weight, sn.bias, training=False))


def test_switchable_norm_replaces_every_bn_and_learns_its_weights():
    model = ADAPTERS.get("switchable_norm")().prepare(SmallResNet(10)).train()
    assert not any(isinstance(m, _BatchNorm) for m in model.modules())
    model(torch.rand(4, 3, 32, 32)).sum().backward()
    layer = model.stem[1]
    assert isinstance(layer, SwitchNorm2d) and layer.mean_weight.grad.abs().sum() > 0


# ---- ISW / IW / IRW ---------------------------------------------------------------------------
def test_covariance_equals_a_direct_computation():
    torch.manual_seed(0)
    features = F.instance_norm(torch.randn(3, 5, 4, 6) * 2 + 1)
    cov = covariance(features, eps=1e-5)
    for b in range(3):
        direct = torch.cov(features[b].reshape(5, -1)) + 1e-5 * torch.eye(5)
        torch.testing.assert_close(cov[b], direct, rtol=1e-4, atol=1e-5)


def test_whitening_loss_and_irw_margin():
    torch.manual_seed(0)
    features = F.instance_norm(torch.randn(2, 4, 5, 5))
    upper = torch.ones(4, 4).triu(1)
    off = covariance(features).mul(upper).abs().sum((1, 2))  # per instance
    torch.testing.assert_close(whitening_loss(features, upper), (off / 6).mean())
    margin = off.min().item() + 1e-3  # one instance under the margin -> contributes 0
    torch.testing.assert_close(whitening_loss(features, upper, margin),
                               ((off - margin) / 6).clamp_min(0).mean())
    assert whitening_loss(features, torch.zeros(4, 4)) == 0
    irw = ADAPTERS.get("irw")()
    layer = InstanceWhitening(64)  # 2016 off-diagonal entries
    assert irw.margin(layer) == 2016 // 64


def test_kmeans_1d_orders_clusters_by_centroid():
    values = torch.tensor([5.0, 0.1, 9.0, 0.0, 5.2, 0.2, 9.1, 4.9])
    assert kmeans_1d(values, 3).tolist() == [1, 0, 2, 0, 1, 0, 2, 1]


class StyleFeatures(nn.Module):
    """A fixed feature map whose channel covariance depends on the image's brightness s
    for two pairs -- (0, 1) via s, (2, 3) via s^2 -- and on nothing for the other pairs:
    channels are mixes of mutually orthogonal patterns (cosines of distinct frequencies)."""

    def __init__(self, size: int = 16) -> None:
        super().__init__()
        grid = torch.arange(size * size, dtype=torch.float64) * 2 * torch.pi / (size * size)
        self.register_buffer("patterns", torch.stack([torch.cos(k * grid)
                                                      for k in range(1, 8)]).float())
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((1, 2, 3)).view(-1, 1)
        p = self.patterns
        channels = [p[0].expand(len(x), -1), s * p[0] + (1 - s) * p[1],
                    p[2].expand(len(x), -1), s**2 * p[2] + (1 - s**2) * p[3],
                    p[4].expand(len(x), -1), p[5].expand(len(x), -1), p[6].expand(len(x), -1)]
        return torch.stack(channels, 1).view(len(x), 7, self.size, self.size)


def test_isw_mask_selects_the_style_sensitive_entries():
    torch.manual_seed(0)
    model = nn.Sequential(StyleFeatures(), InstanceWhitening(7))
    isw = ISW(trials=3)
    batches = [torch.rand(16, 3, 16, 16) * torch.rand(16, 1, 1, 1) for _ in range(2)]
    isw.compute_mask(model, batches)
    selected = {tuple(ij) for ij in model[1].mask.nonzero().tolist()}
    assert selected == {(0, 1), (2, 3)}


def test_isw_warms_up_then_computes_the_mask_then_adds_the_loss():
    torch.manual_seed(0)
    isw = ISW(warmup_steps=3, mask_batches=2, trials=2)
    model = isw.prepare(SmallResNet(10)).train()
    layers = whitening_layers(model)
    assert [layer.mask.shape[0] for layer in layers] == [16, 16, 32]  # stem, stage 1, 2
    losses = []
    for _ in range(4):
        model(torch.rand(8, 3, 32, 32))
        losses.append(isw.extra_loss(model))
    assert losses[:3] == [None, None, None] and isw.mask_ready
    assert losses[3] is not None and losses[3].requires_grad
    for layer in layers:  # a subset of the strict upper triangle, not all of it
        upper = torch.ones_like(layer.mask).triu(1)
        assert torch.all(layer.mask <= upper) and 0 < layer.mask.sum() < upper.sum()


def test_instance_whitening_placement_on_resnet50(resnet50):
    model = to_instance_whitening(fresh_resnet50(resnet50))
    placed = {name: layer.mask.shape[0] for name, layer in model.named_modules()
              if isinstance(layer, InstanceWhitening)}
    assert placed == {"bn1": 64, "layer1.2.IN": 256, "layer2.3.IN": 512}
    assert n_params(model) == n_params(resnet50) - 2 * 64  # IN without affine at the stem


# ---- through the real training loop --------------------------------------------------------
@pytest.fixture(scope="module")
def small_data():
    suite = SUITES.get("tiny-digits")()
    source = suite.load(suite.source, "train")
    target = suite.load(suite.targets[0], "train")
    subset = DomainData(source.images[:64], source.labels[:64])
    recipe = replace(suite.recipe, epochs=2, batch_size=32)
    return suite, subset, target.images[:64], recipe


@pytest.mark.parametrize("name, hparams", [
    ("ibn_a", {}), ("ibn_b", {}), ("switchable_norm", {}), ("iw", {}), ("irw", {}),
    ("isw", {"warmup_steps": 2, "mask_batches": 2, "trials": 1}), ("dsbn", {}),
    ("domain_norm", {}), ("transnorm", {}), ("dwt", {}),
])
def test_training_loop_with_each_adapter(small_data, name, hparams):
    suite, data, target_images, recipe = small_data
    adapter = ADAPTERS.get(name)(**hparams)
    torch.manual_seed(0)
    model = adapter.prepare(suite.build_model())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    target = ("digits-m", target_images) if adapter.setting == "da" else None
    info = train_source(model, data, recipe, 0, adapter, torch.device("cpu"), progress=False,
                        target=target)
    assert info["steps"] == 4 and torch.isfinite(torch.tensor(info["final_loss"]))
    after = model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    if name == "dsbn":
        assert not torch.equal(before["stem.1.target.running_mean"],
                               after["stem.1.target.running_mean"])
    if name == "isw":
        assert adapter.mask_ready


def test_dsbn_final_target_statistics_average_the_target_images_with_the_final_weights(
        small_data):
    """``target_statistics="final"``: the same training as ``"running"`` (identical shared
    weights and source branch), but the target branch's statistics are the average over the
    target training images passed once through the final network."""
    suite, data, target_images, recipe = small_data
    states = {}
    for mode in ("final", "running"):
        adapter = ADAPTERS.get("dsbn")(target_statistics=mode)
        torch.manual_seed(0)
        model = adapter.prepare(suite.build_model())
        train_source(model, data, recipe, 0, adapter, torch.device("cpu"), progress=False,
                     target=("digits-m", target_images))
        states[mode] = model.state_dict()
    final, running = states["final"], states["running"]
    shared = [k for k in final if ".target." not in k]
    assert shared and all(torch.equal(final[k], running[k]) for k in shared)
    assert not torch.equal(final["stem.1.target.running_mean"],
                           running["stem.1.target.running_mean"])
    # the stem's target statistics: its convolution's channel means over the target images
    # (64 images in two batches of 32: the average of batch means is the overall mean)
    with torch.no_grad():
        expected = model.stem[0](target_images).mean((0, 2, 3))
    torch.testing.assert_close(final["stem.1.target.running_mean"], expected)


@pytest.mark.parametrize("mode", ["batch_average", "moving_average"])
def test_switchable_norm_batch_average_after_training(small_data, mode):
    """The paper's "batch average": after training, each layer's BN statistics are the plain
    average over training mini-batches with the final weights."""
    suite, data, _, recipe = small_data
    adapter = ADAPTERS.get("switchable_norm")(bn_statistics=mode)
    torch.manual_seed(0)
    model = adapter.prepare(suite.build_model())
    train_source(model, data, recipe, 0, adapter, torch.device("cpu"), progress=False)
    with torch.no_grad():  # the last epoch: all 64 images in two batches of 32, un-augmented
        expected = model.stem[0](data.images).mean((0, 2, 3))
    averaged = torch.allclose(model.stem[1].running_mean, expected, atol=1e-5, rtol=1e-4)
    assert averaged == (mode == "batch_average")


# ---- Domain Normalization ----------------------------------------------------------------
def test_domain_norm_is_instance_norm_then_unit_l2_norm_per_position_then_affine():
    """The layer against the paper's definition computed in numpy: standardize each image's
    channel over its positions, divide each position's channel vector by its L2 norm,
    scale and shift per channel."""
    from adapters.domain_norm import DomainNorm2d

    torch.manual_seed(0)
    layer = DomainNorm2d(6)
    with torch.no_grad():
        layer.weight.copy_(torch.rand(6) + 0.5)
        layer.bias.copy_(torch.randn(6))
    x = torch.randn(3, 6, 5, 7) * torch.rand(3, 6, 1, 1) * 4 + torch.randn(3, 6, 1, 1) * 3
    a = x.double().numpy()
    mean = a.mean(axis=(2, 3), keepdims=True)
    var = a.var(axis=(2, 3), keepdims=True)
    standardized = (a - mean) / np.sqrt(var + layer.eps)
    unit = standardized / np.linalg.norm(standardized, axis=1, keepdims=True)
    expected = unit * layer.weight.detach().double().numpy()[None, :, None, None] \
        + layer.bias.detach().double().numpy()[None, :, None, None]
    assert np.allclose(layer(x).detach().double().numpy(), expected, atol=1e-5)
    with torch.no_grad():  # gamma = 1, beta = 0: every position's feature has unit norm
        layer.weight.fill_(1.0)
        layer.bias.zero_()
    norms = layer(x).norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    # a per-image, per-channel gain and offset (a style change) leaves the output unchanged
    styled = x * (torch.rand(3, 6, 1, 1) + 0.5) + torch.randn(3, 6, 1, 1)
    assert torch.allclose(layer(styled), layer(x), atol=1e-4)
    # train and eval compute the same (no statistics kept)
    assert torch.equal(layer.train()(x), layer.eval()(x))


def test_domain_norm_replaces_the_feature_extractors_batchnorm_and_keeps_the_parameters():
    from adapters.domain_norm import DomainNorm2d

    for make in (lambda: SmallResNet(10), lambda: SmallSegNet(19)):
        plain = make()
        bn = [n for n, m in plain.named_modules() if isinstance(m, nn.BatchNorm2d)]
        shallow = [n for n in bn if ".layer3" not in "." + n and ".layer4" not in "." + n
                   and not n.startswith(("project_low", "decoder"))]
        swapped = ADAPTERS.get("domain_norm")().prepare(make())
        assert sorted(n for n, m in swapped.named_modules()
                      if isinstance(m, DomainNorm2d)) == sorted(shallow)
        assert n_params(swapped) == n_params(plain)  # gamma, beta per channel, as BN's
        everywhere = ADAPTERS.get("domain_norm")(last_stage=-1).prepare(make())
        assert not any(isinstance(m, nn.BatchNorm2d) for m in everywhere.modules())
        assert sum(isinstance(m, DomainNorm2d) for m in everywhere.modules()) == len(bn)


# ---- TransNorm ------------------------------------------------------------------------------
def _transferability_numpy(mean_s, var_s, mean_t, var_t, eps):
    """The paper's attention, restated: alpha_j = C (1 + d_j)^-1 / sum_k (1 + d_k)^-1 with
    d_j = |mu_s / sqrt(var_s + eps) - mu_t / sqrt(var_t + eps)|."""
    d = np.abs(mean_s / np.sqrt(var_s + eps) - mean_t / np.sqrt(var_t + eps))
    k = 1.0 / (1.0 + d)
    return len(k) * k / k.sum()


def test_transnorm_eval_uses_the_domains_statistics_and_the_transferability_attention():
    from adapters.transnorm import TransNorm2d

    torch.manual_seed(0)
    layer = TransNorm2d(nn.BatchNorm2d(5)).eval()
    with torch.no_grad():
        for buffer in (layer.running_mean, layer.target_mean):
            buffer.copy_(torch.randn(5))
        for buffer in (layer.running_var, layer.target_var):
            buffer.copy_(torch.rand(5) + 0.2)
        layer.weight.copy_(torch.rand(5) + 0.5)
        layer.bias.copy_(torch.randn(5))
    x = torch.randn(4, 5, 3, 3)
    n = {k: v.detach().double().numpy() for k, v in layer.state_dict().items()}
    alpha = _transferability_numpy(n["running_mean"], n["running_var"], n["target_mean"],
                                   n["target_var"], layer.eps)
    assert alpha.sum() == pytest.approx(5.0) and alpha.std() > 0
    for domain, (mean, var) in {"source": ("running_mean", "running_var"),
                                "target": ("target_mean", "target_var")}.items():
        layer.domain = domain
        c = (1, -1, 1, 1)
        expected = ((x.double().numpy() - n[mean].reshape(c)) / np.sqrt(n[var].reshape(c)
                    + layer.eps) * n["weight"].reshape(c) + n["bias"].reshape(c)) \
            * (1 + alpha.reshape(c))
        assert np.allclose(layer(x).detach().double().numpy(), expected, atol=1e-5)


def test_transnorm_training_normalizes_each_domain_with_its_own_batch_and_running_stats():
    from adapters.transnorm import TransNorm2d

    torch.manual_seed(1)
    layer = TransNorm2d(nn.BatchNorm2d(4)).train()
    source, target = torch.randn(6, 4, 3, 3), torch.randn(5, 4, 3, 3) * 3 + 2
    layer.split = 6
    out = layer(torch.cat([source, target])).detach().double().numpy()

    def stats(a):
        a = a.double().numpy()
        return a.mean(axis=(0, 2, 3)), a.var(axis=(0, 2, 3)), a.var(axis=(0, 2, 3), ddof=1)

    (ms, vs, us), (mt, vt, ut) = stats(source), stats(target)
    alpha = _transferability_numpy(ms, us, mt, ut, layer.eps).reshape(1, -1, 1, 1)
    c = (1, -1, 1, 1)
    for part, raw, mean, var in ((out[:6], source, ms, vs), (out[6:], target, mt, vt)):
        expected = (raw.double().numpy() - mean.reshape(c)) / np.sqrt(var.reshape(c)
                                                                        + layer.eps)
        assert np.allclose(part, expected * (1 + alpha), atol=1e-5)  # gamma 1, beta 0
    # each domain's running averages moved towards its own part only (momentum 0.1)
    assert np.allclose(layer.running_mean.numpy(), 0.1 * ms, atol=1e-6)
    assert np.allclose(layer.target_mean.numpy(), 0.1 * mt, atol=1e-6)
    assert np.allclose(layer.target_var.numpy(), 0.9 + 0.1 * ut, atol=1e-5)


def test_transnorm_trains_source_and_target_in_one_pass_and_tests_with_target_statistics(
        small_data):
    suite, data, target_images, recipe = small_data
    adapter = ADAPTERS.get("transnorm")()
    torch.manual_seed(0)
    model = adapter.prepare(suite.build_model())
    train_source(model, data, recipe, 0, adapter, torch.device("cpu"), progress=False,
                 target=("digits-m", target_images))
    from adapters.transnorm import transnorm_layers

    stem = transnorm_layers(model)[0]
    assert not torch.equal(stem.running_mean, stem.target_mean)
    model.eval()
    adapter.set_context(model, {"role": "target", "domain": "digits-m"})
    on_target = model(target_images[:8])
    adapter.set_context(model, {"role": "source"})
    assert not torch.allclose(on_target, model(target_images[:8]))


# ---- DWT ------------------------------------------------------------------------------------
def test_dwt_whitens_each_group_with_the_cholesky_factor_of_its_domains_covariance():
    """Against numpy: W = L^-1 with L L^T = (1 - eps) Sigma + eps I per group, y = gamma W
    (x - mu) + beta; with a tiny eps the whitened groups have identity covariance."""
    from adapters.dwt import DomainWhitening2d

    torch.manual_seed(0)
    mixing = torch.randn(8, 8)  # correlated channels
    x = torch.einsum("oc,nchw->nohw", mixing, torch.randn(16, 8, 5, 5)) + torch.randn(8)[:, None,
                                                                                         None]
    layer = DomainWhitening2d(8, group_size=4, eps=1e-3).train()
    with torch.no_grad():
        layer.weight.copy_(torch.rand(8) + 0.5)
        layer.bias.copy_(torch.randn(8))
    out = layer(x).detach().double().numpy()
    a = x.double().numpy().transpose(1, 0, 2, 3).reshape(8, -1)
    expected = np.empty_like(a)
    for g in range(2):
        part = a[4 * g:4 * g + 4]
        centred = part - part.mean(1, keepdims=True)
        sigma = centred @ centred.T / centred.shape[1]
        factor = np.linalg.cholesky((1 - 1e-3) * sigma + 1e-3 * np.eye(4))
        expected[4 * g:4 * g + 4] = np.linalg.inv(factor) @ centred
    gamma = layer.weight.detach().double().numpy()[:, None]
    beta = layer.bias.detach().double().numpy()[:, None]
    expected = (gamma * expected + beta).reshape(8, 16, 5, 5).transpose(1, 0, 2, 3)
    assert np.allclose(out, expected, atol=1e-4)
    plain = DomainWhitening2d(8, group_size=4, eps=1e-7).train()
    white = plain(x).detach().double().numpy().transpose(1, 0, 2, 3).reshape(8, -1)
    for g in range(2):
        cov = np.cov(white[4 * g:4 * g + 4], bias=True)
        assert np.allclose(cov, np.eye(4), atol=1e-3)
    assert np.abs(np.cov(white, bias=True)[:4, 4:]).max() > 0.05  # across groups: not whitened


def test_dwt_training_whitens_source_and_target_apart_and_tests_with_the_domains_statistics():
    from adapters.dwt import DomainWhitening2d, group_whiten

    torch.manual_seed(0)
    layer = DomainWhitening2d(4, group_size=2).train()
    source, target = torch.randn(6, 4, 3, 3), torch.randn(5, 4, 3, 3) * 3 + 2
    layer.split = 6
    out = layer(torch.cat([source, target]))
    layer.split = None
    layer.domain = "target"
    alone = DomainWhitening2d(4, group_size=2).train()
    alone.domain = "target"
    torch.testing.assert_close(out[6:], alone(target))  # the target part: its own statistics
    # running statistics per domain (momentum 0.1 from 0 and the identity)
    torch.testing.assert_close(layer.running_mean[1], 0.1 * target.mean((0, 2, 3)))
    torch.testing.assert_close(layer.running_mean[0], 0.1 * source.mean((0, 2, 3)))
    layer.eval()
    test = torch.randn(3, 4, 3, 3)
    for d, domain in enumerate(("source", "target")):
        layer.domain = domain
        torch.testing.assert_close(
            layer(test), group_whiten(test, layer.running_mean[d], layer.running_cov[d],
                                      layer.eps))
    layer.domain = "source"
    assert not torch.allclose(layer(test), group_whiten(test, layer.running_mean[1],
                                                         layer.running_cov[1], layer.eps))


def test_dwt_consensus_loss_and_placement():
    from adapters.dwt import DomainWhitening2d, min_entropy_consensus

    torch.manual_seed(0)
    l1, l2 = torch.randn(7, 10), torch.randn(7, 10)
    p1, p2 = l1.log_softmax(1).numpy(), l2.log_softmax(1).numpy()
    expected = -np.mean(np.max(0.5 * (p1 + p2), axis=1))
    assert min_entropy_consensus(l1, l2).item() == pytest.approx(expected, abs=1e-6)
    confident = torch.zeros(7, 10)
    confident[:, 3] = 20
    assert min_entropy_consensus(confident, confident).item() < 1e-6  # agreeing, certain
    model = ADAPTERS.get("dwt")().prepare(SmallResNet(10))
    sizes = {n: m.group_size for n, m in model.named_modules()
             if isinstance(m, DomainWhitening2d)}
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert {n for n, g in sizes.items() if g == 4} == {
        n for n in sizes if n.startswith(("stem.", "layer1."))}
    assert all(g == 1 for n, g in sizes.items() if n.startswith(("layer2.", "layer3.")))
