"""PGD attacks, the digits-adv suite and Gated BN (small models; under a minute on CPU)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from benchmark.layers.attacks import NORMS, pgd, project_l1
from benchmark.layers.models import SmallResNet
from benchmark.registry import ADAPTERS
from suites.digits_adv import BUDGETS, DigitsAdv


def _l1_projection_numpy(v: np.ndarray, eps: float) -> np.ndarray:
    """argmin ||w - v||_2 s.t. ||w||_1 <= eps, by bisection on the soft threshold theta:
    w = sign(v) max(|v| - theta, 0) with sum max(|v| - theta, 0) = eps."""
    if np.abs(v).sum() <= eps:
        return v
    lo, hi = 0.0, np.abs(v).max()
    for _ in range(200):
        theta = (lo + hi) / 2
        if np.maximum(np.abs(v) - theta, 0).sum() > eps:
            lo = theta
        else:
            hi = theta
    return np.sign(v) * np.maximum(np.abs(v) - (lo + hi) / 2, 0)


def test_l1_projection_equals_the_soft_threshold_solution():
    torch.manual_seed(0)
    delta = torch.randn(5, 3, 4, 4, dtype=torch.float64) * torch.tensor([0.01, 1, 2, 5, 0.1],
                                                                         dtype=torch.float64
                                                                         ).view(-1, 1, 1, 1)
    projected = project_l1(delta, 3.0)
    for row, expected in zip(projected, delta, strict=True):
        assert np.allclose(row.numpy(), _l1_projection_numpy(expected.numpy(), 3.0), atol=1e-9)
    assert (projected.flatten(1).abs().sum(1) <= 3.0 + 1e-9).all()


@pytest.mark.parametrize("norm", NORMS)
def test_pgd_stays_in_its_ball_and_the_pixel_range_and_fools_the_model(norm):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10)).eval()
    x = torch.rand(32, 3, 8, 8)
    y = model(x).argmax(1)  # the model is right on every clean image
    eps = {"linf": 0.1, "l2": 1.0, "l1": 8.0}[norm]
    adv = pgd(model, x, y, norm, eps, steps=10, generator=torch.Generator().manual_seed(0))
    delta = (adv - x).flatten(1)
    size = {"linf": delta.abs().max(1).values, "l2": delta.norm(dim=1),
            "l1": delta.abs().sum(1)}[norm]
    assert (size <= eps * (1 + 1e-5)).all() and adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        assert (model(adv).argmax(1) == y).float().mean() < 0.5
    again = pgd(model, x, y, norm, eps, steps=10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(adv, again)  # seeded: the same perturbations
    assert not any(p.grad is not None for p in model.parameters())


class SmallDigitsAdv(DigitsAdv):
    """The real suite's code at 8 x 8 pixels and two training epochs: seconds, not minutes."""

    size = 8
    recipe = replace(DigitsAdv.recipe, epochs=2)


def test_digits_adv_perturbs_within_budgets_deterministically_and_caches(monkeypatch, tmp_path):
    monkeypatch.setenv("SHIFTBENCH_CACHE", str(tmp_path / "cache"))
    suite = SmallDigitsAdv()
    clean = suite.load("digits", "test")
    reference = suite.reference_model()
    with torch.no_grad():
        clean_accuracy = (reference(clean.images).argmax(1) == clean.labels).float().mean()
    for norm in NORMS:
        data = suite.load(f"adv-{norm}", "test")
        assert torch.equal(data.labels, clean.labels)
        delta = (data.images - clean.images).flatten(1)
        size = {"linf": delta.abs().max(1).values, "l2": delta.norm(dim=1),
                "l1": delta.abs().sum(1)}[norm]
        assert (size <= BUDGETS[norm] * (1 + 1e-5)).all() and size.max() > 0
        with torch.no_grad():  # crafted against the reference model: it does worse
            accuracy = (reference(data.images).argmax(1) == data.labels).float().mean()
        assert accuracy < clean_accuracy - 0.2, norm
    files = list((tmp_path / "cache" / "digits-adv").glob("*.safetensors"))
    assert len(files) == 1
    # a fresh instance reads the cache; a fresh cache regenerates the same tensors
    assert torch.equal(SmallDigitsAdv().load("adv-l1", "train").images,
                       suite.load("adv-l1", "train").images)
    monkeypatch.setenv("SHIFTBENCH_CACHE", str(tmp_path / "other"))
    assert torch.equal(SmallDigitsAdv().load("adv-l2", "test").images,
                       suite.load("adv-l2", "test").images)


# ---- Gated BN -------------------------------------------------------------------------------
def test_gated_bn_routes_training_batches_and_mixes_branches_by_its_gate_at_test_time():
    from adapters.gbn import GatedBatchNorm2d

    torch.manual_seed(0)
    layer = GatedBatchNorm2d(nn.BatchNorm2d(4), branches=3)
    x = torch.randn(6, 4, 5, 5) * 2 + 1
    layer.train()
    layer.route = 1
    out = layer(x)
    reference = nn.BatchNorm2d(4).train()
    torch.testing.assert_close(out, reference(x))  # branch 1, its batch statistics
    torch.testing.assert_close(layer.bns[1].running_mean, reference.running_mean)
    assert torch.equal(layer.bns[0].running_mean, torch.zeros(4))  # other branches untouched
    assert layer.gate_logits is not None and layer.gate_logits.shape == (6, 3)
    # test time: sum_k softmax(gate(GAP(x)))_k BN_k(x), each with running statistics
    layer.eval()
    layer.route = None
    with torch.no_grad():
        for k, bn in enumerate(layer.bns):
            bn.running_mean.copy_(torch.randn(4))
            bn.running_var.copy_(torch.rand(4) + 0.5)
            bn.weight.copy_(torch.rand(4) + 0.5 + k)
    a = x.double().numpy()
    pooled = a.mean(axis=(2, 3))
    lin1, lin2 = layer.gate[0], layer.gate[2]
    hidden = np.maximum(pooled @ lin1.weight.detach().double().numpy().T
                        + lin1.bias.detach().double().numpy(), 0)
    logits = hidden @ lin2.weight.detach().double().numpy().T + lin2.bias.detach().double().numpy()
    g = np.exp(logits - logits.max(1, keepdims=True))
    g = g / g.sum(1, keepdims=True)
    expected = np.zeros_like(a)
    for k, bn in enumerate(layer.bns):
        s = {n: t.detach().double().numpy().reshape(1, -1, 1, 1)
             for n, t in bn.state_dict().items() if t.ndim == 1}
        normalized = (a - s["running_mean"]) / np.sqrt(s["running_var"] + bn.eps)
        expected += g[:, k, None, None, None] * (s["weight"] * normalized + s["bias"])
    assert np.allclose(layer(x).detach().double().numpy(), expected, atol=1e-5)


def test_gated_bn_gate_learns_to_route_each_perturbation_type_to_its_branch():
    """The adapter's training loss on two input types that differ in style: afterwards the
    gates send each type's test images to its own branch."""
    adapter = ADAPTERS.get("gbn")(norms="linf,l2", eps="0.05,0.5", attack_steps=1)
    torch.manual_seed(0)
    model = adapter.prepare(SmallResNet(10, widths=(4, 8, 8)))
    from adapters.gbn import gated_layers

    layers = gated_layers(model)
    assert layers and not any(isinstance(m, nn.BatchNorm2d) and not any(
        m is bn for layer in layers for bn in layer.bns) for m in model.modules())
    x, y = torch.rand(16, 3, 8, 8), torch.randint(0, 10, (16,))
    model.train()
    loss = adapter.training_loss(model, x, y, None, 0)
    loss.backward()
    assert torch.isfinite(loss) and all(layer.route is None for layer in layers)
    assert all(layer.gate[0].weight.grad.abs().sum() > 0 for layer in layers)
    # every branch was trained by its own adversarial batch
    assert all(not torch.equal(layer.bns[k].running_mean, torch.zeros_like(
        layer.bns[k].running_mean)) for layer in layers for k in (0, 1))
    # the gate of the stem learns to tell two styles apart, through the same routed forward
    stem = layers[0]
    optimizer = torch.optim.SGD([p for layer in layers for p in layer.gate.parameters()], lr=0.5)
    dark, bright = torch.rand(16, 3, 8, 8) * 0.2, torch.rand(16, 3, 8, 8) * 0.2 + 0.8
    for _ in range(60):
        for k, batch in enumerate((dark, bright)):
            for layer in layers:
                layer.route = k
            model(batch)
            gate_loss = nn.functional.cross_entropy(stem.gate_logits, torch.full((16,), k))
            optimizer.zero_grad()
            gate_loss.backward()
            optimizer.step()
    for layer in layers:
        layer.route = None
    model.eval()
    with torch.no_grad():
        features = model.stem[0](torch.cat([dark, bright]))
        weights = stem.gate_weights(features)
    assert (weights[:16, 0] > 0.9).all() and (weights[16:, 1] > 0.9).all()


def test_single_bn_baseline_is_plain_batchnorm_with_the_same_adversarial_training():
    adapter = ADAPTERS.get("gbn")(branches=1)
    model = adapter.prepare(SmallResNet(10, widths=(4, 8, 8)))
    from adapters.gbn import gated_layers

    assert all(len(layer.bns) == 1 and layer.gate is None for layer in gated_layers(model))
    with pytest.raises(ValueError, match="one eps per norm"):
        ADAPTERS.get("gbn")(norms="linf,l2", eps="0.1")


def test_gated_bn_budget_warmup_grows_linearly_then_holds():
    adapter = ADAPTERS.get("gbn")(eps_warmup=0.5)
    adapter.bind("classification", 10, total_steps=10)
    assert [round(adapter._budget(0, s), 6) for s in (0, 1, 4, 9)] == [0.06, 0.12, 0.3, 0.3]
    plain = ADAPTERS.get("gbn")(eps_warmup=0.0)
    plain.bind("classification", 10, total_steps=10)
    assert plain._budget(2, 0) == 30.0
