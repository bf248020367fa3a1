"""Defining computations of the multi-source domain-generalization adapters (DSON, weighted
BN), each against an independent numpy restatement (small models; seconds on CPU)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from benchmark.layers.models import SmallResNet
from benchmark.registry import ADAPTERS


def small_resnet() -> SmallResNet:
    torch.manual_seed(0)
    return SmallResNet(10, widths=(4, 8, 8))


def _cameras(model, adapter, batches):
    """Train-mode forwards of single-camera batches, as the training loop makes them."""
    model.train()
    for camera, x in batches:
        adapter.set_context(model, {"role": "source", "camera": torch.full((len(x),), camera)})
        model(x)


# ---- DSON -----------------------------------------------------------------------------------
def _dson_numpy(x, mean_bn, var_bn, w, gamma, beta, eps):
    """Paper Eq. (4)-(6) restated: mu = w mu_bn + (1 - w) mu_in, same for the variance, then
    the domain's affine."""
    mean_in = x.mean(axis=(2, 3), keepdims=True)
    var_in = x.var(axis=(2, 3), keepdims=True)
    c = (1, -1, 1, 1)
    mean = w * mean_bn.reshape(c) + (1 - w) * mean_in
    var = w * var_bn.reshape(c) + (1 - w) * var_in
    return gamma.reshape(c) * (x - mean) / np.sqrt(var + eps) + beta.reshape(c)


def test_dson_mixes_batch_and_instance_statistics_per_domain():
    from adapters.dson import DomainSpecificOptimizedNorm2d

    torch.manual_seed(0)
    layer = DomainSpecificOptimizedNorm2d.from_batchnorm(nn.BatchNorm2d(5), max_domains=3)
    with torch.no_grad():
        layer.mixture.copy_(torch.randn(3, 2) * 2)
        layer.weight.copy_(torch.rand(3, 5) + 0.5)
        layer.bias.copy_(torch.randn(3, 5))
    weights = layer.mixture_weights()
    torch.testing.assert_close(weights.sum(1), torch.ones(3))  # (w_d, 1 - w_d) per domain
    assert weights[:, 0].std() > 0.1  # the domains' mixtures differ in this test
    xs = {0: torch.randn(6, 5, 4, 4) * 2 + 1, 2: torch.randn(6, 5, 4, 4) * 0.5 - 3}
    p = {k: v.detach().double().numpy() for k, v in layer.named_parameters()}
    layer.train()
    for d, x in xs.items():  # training: the domain's own batch statistics
        layer.select(d)
        a = x.double().numpy()
        expected = _dson_numpy(a, a.mean(axis=(0, 2, 3)), a.var(axis=(0, 2, 3)),
                               weights[d, 0].item(), p["weight"][d], p["bias"][d], layer.eps)
        assert np.allclose(layer(x).detach().numpy(), expected, atol=1e-4)
    # running statistics moved for the two trained domains only (momentum 0.1 from 0, 1)
    assert layer.domain_batches.tolist() == [1, 0, 1]
    assert layer.trained_domains() == [0, 2]
    for d, x in xs.items():
        torch.testing.assert_close(layer.running_mean[d], 0.1 * x.mean((0, 2, 3)))
        torch.testing.assert_close(layer.running_var[d], 0.9 + 0.1 * x.var((0, 2, 3)))
    assert torch.equal(layer.running_mean[1], torch.zeros(5))
    layer.eval()
    test = torch.randn(4, 5, 4, 4)
    r = {k: v.double().numpy() for k, v in layer.named_buffers()}
    for d in (0, 2):  # test time: the domain's running statistics in the BN part
        layer.select(d)
        expected = _dson_numpy(test.double().numpy(), r["running_mean"][d], r["running_var"][d],
                               weights[d, 0].item(), p["weight"][d], p["bias"][d], layer.eps)
        assert np.allclose(layer(test).detach().numpy(), expected, atol=1e-4)


def test_dson_learns_each_domains_mixture_and_affine_from_that_domains_batches():
    adapter = ADAPTERS.get("dson")(max_domains=4)
    model = adapter.prepare(small_resnet())
    from adapters.dson import dson_layers

    layers = dson_layers(model)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in small_resnet().modules())
    assert len(layers) == n_bn and not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    model.train()
    adapter.set_context(model, {"role": "source", "camera": torch.full((8,), 1)})
    model(torch.rand(8, 3, 16, 16)).logsumexp(1).mean().backward()
    stem = layers[0]
    grad_rows = (stem.mixture.grad.abs().sum(1) > 0).tolist()
    assert grad_rows == [False, True, False, False]  # only the batch's domain learns
    assert (stem.weight.grad[[0, 2, 3]] == 0).all() and stem.weight.grad[1].abs().sum() > 0


def test_dson_predicts_an_unseen_domain_with_the_average_of_every_trained_branch():
    adapter = ADAPTERS.get("dson")(max_domains=4)
    model = adapter.prepare(small_resnet())
    torch.manual_seed(1)
    _cameras(model, adapter, [(0, torch.rand(16, 3, 16, 16)), (2, torch.rand(16, 3, 16, 16) * 2),
                              (0, torch.rand(16, 3, 16, 16)), (2, torch.rand(16, 3, 16, 16) * 2)])
    adapter.attach(model)
    x = torch.rand(5, 3, 16, 16)
    from adapters.dson import select_domain

    branch = {}
    with torch.no_grad():
        for d in (0, 2):
            select_domain(model, d)
            branch[d] = model(x).softmax(1).double().numpy()
    adapter.set_context(model, {"role": "target", "domain": "cam-unseen", "camera": 3})
    ensemble = adapter.predict(x).softmax(1).double().numpy()
    assert np.allclose(ensemble, (branch[0] + branch[2]) / 2, atol=1e-5)
    assert not np.allclose(branch[0], branch[2], atol=1e-3)  # the average is not trivial
    # a seen domain named by the stream uses its own branch
    adapter.set_context(model, {"role": "source", "domain": "cams-seen", "camera": 2})
    assert np.allclose(adapter.predict(x).softmax(1).numpy(), branch[2], atol=1e-5)


# ---- weighted BN (multi-source domain alignment layers) -------------------------------------
def _weighted_bn_numpy(x, w, mean, var, gamma, beta, eps):
    """y_i = gamma sum_d w_id (x_i - mu_d) / sqrt(var_d + eps) + beta, restated per image."""
    out = np.zeros_like(x)
    for i in range(len(x)):
        for d in range(w.shape[1]):
            out[i] += w[i, d] * (x[i] - mean[d][:, None, None]) / np.sqrt(var[d] + eps)[:, None,
                                                                                      None]
    return gamma[None, :, None, None] * out + beta[None, :, None, None]


def test_weighted_bn_normalizes_with_the_weighted_statistics_of_each_domain():
    from adapters.wbn import WeightedBatchNorm2d

    torch.manual_seed(0)
    layer = WeightedBatchNorm2d.from_batchnorm(nn.BatchNorm2d(4), max_domains=3)
    with torch.no_grad():
        layer.weight.copy_(torch.rand(4) + 0.5)
        layer.bias.copy_(torch.randn(4))
    x = torch.randn(6, 4, 5, 5) * torch.rand(6, 1, 1, 1) * 3 + torch.randn(6, 4, 1, 1)
    w = torch.rand(6, 3).softmax(1)
    w[:, 2] = 0  # a domain without weight in the batch
    w = w / w.sum(1, keepdim=True)
    a, wn = x.double().numpy(), w.double().numpy()
    gamma, beta = layer.weight.detach().double().numpy(), layer.bias.detach().double().numpy()
    mean = np.zeros((3, 4))
    var = np.ones((3, 4))
    for d in (0, 1):  # the domain's weighted mean and variance over images and positions
        share = wn[:, d] / wn[:, d].sum()
        mean[d] = np.einsum("i,ichw->c", share, a) / (5 * 5)
        var[d] = np.einsum("i,ichw->c", share, (a - mean[d][None, :, None, None]) ** 2) / 25
    layer.train()
    layer.weights = w
    out = layer(x).detach().double().numpy()
    assert np.allclose(out, _weighted_bn_numpy(a, wn, mean, var, gamma, beta, layer.eps),
                       atol=1e-4)
    n = wn[:, :2].sum(0)[:, None] * 25
    assert np.allclose(layer.running_mean[:2].double().numpy(), 0.1 * mean[:2], atol=1e-6)
    assert np.allclose(layer.running_var[:2].double().numpy(),
                       0.9 + 0.1 * var[:2] * n / (n - 1), atol=1e-5)
    assert torch.equal(layer.running_mean[2], torch.zeros(4))  # no weight: unchanged
    # test time: the same combination with the running statistics
    layer.eval()
    r_mean, r_var = (b.double().numpy() for b in (layer.running_mean, layer.running_var))
    assert np.allclose(layer(x).detach().double().numpy(),
                       _weighted_bn_numpy(a, wn, r_mean, r_var, gamma, beta, layer.eps),
                       atol=1e-4)
    # one-hot weights: a plain BN of the batch
    layer.train()
    layer.weights = torch.nn.functional.one_hot(torch.full((6,), 1), 3).float()
    bn = nn.BatchNorm2d(4).train()
    bn.load_state_dict({"weight": layer.weight, "bias": layer.bias}, strict=False)
    torch.testing.assert_close(layer(x), bn(x), atol=1e-5, rtol=1e-5)


def test_weighted_bn_learns_the_domains_and_weighs_test_images_with_its_domain_branch():
    adapter = ADAPTERS.get("wbn")(max_domains=4)
    model = adapter.prepare(small_resnet())
    from adapters.wbn import WeightedBatchNorm2d

    layers = model.layers()
    assert layers and all(isinstance(m, WeightedBatchNorm2d) for m in layers)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.net.modules())
    torch.manual_seed(1)
    bright, dark = torch.rand(16, 3, 16, 16) * 0.3 + 0.7, torch.rand(16, 3, 16, 16) * 0.3
    optimizer = torch.optim.SGD(model.domain_head.parameters(), lr=0.5)
    model.train()
    for _ in range(30):  # only the domain loss, on the branch: it learns bright=0, dark=2
        for camera, x in ((0, bright), (2, dark)):
            adapter.set_context(model, {"role": "source",
                                        "camera": torch.full((16,), camera)})
            model(x)
            loss = adapter.extra_loss(model)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    assert model.domain_batches.tolist() == [30, 0, 30, 0]
    adapter.finish_training(model, None)
    adapter.attach(model)
    adapter.set_context(model, {"role": "target", "domain": "cam-unseen", "camera": 3})
    x = torch.cat([bright[:2], dark[:2]])
    with torch.no_grad():
        weights = model.domain_weights(x)
    assert torch.equal(weights[:, [1, 3]], torch.zeros(4, 2))  # unseen in training: 0
    assert (weights[:2, 0] > 0.9).all() and (weights[2:, 2] > 0.9).all()
    logits = adapter.predict(x)
    for layer in layers:  # the prediction used the branch's weights in every layer
        torch.testing.assert_close(layer.weights, weights)
    with torch.no_grad():  # and equals the network run with those weights set by hand
        for layer in layers:
            layer.weights = weights
        torch.testing.assert_close(model.net(x), logits)
