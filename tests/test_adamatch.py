"""AdaMatch's defining computations (Berthelot et al., ICLR 2022, Algorithm 1) against
independent calculations, and its training step's structure."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from adapters.adamatch import AdaMatch
from benchmark.layers.context_norm import ContextNorm


def test_random_logit_interpolation_draws_one_weight_per_logit():
    joint, alone = torch.randn(6, 10), torch.randn(6, 10)
    torch.manual_seed(3)
    got = AdaMatch.interpolate(joint, alone)
    torch.manual_seed(3)
    lam = torch.rand(6, 10)
    assert torch.allclose(got, lam * joint + (1 - lam) * alone)
    assert lam.std() > 0.2  # per logit, not one lambda for the batch


def test_distribution_alignment_and_relative_threshold_match_a_numpy_calculation():
    rng = np.random.default_rng(0)
    source, target = rng.normal(size=(16, 5)) * 3, rng.normal(size=(24, 5)) * 2
    adapter = AdaMatch(tau=0.9)
    pseudo, mask = adapter.pseudo_labels(torch.tensor(source), torch.tensor(target))

    def softmax(z):
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    ps, pt = softmax(source), softmax(target)
    aligned = pt * (ps.mean(0) / pt.mean(0))
    aligned /= aligned.sum(1, keepdims=True)
    threshold = 0.9 * ps.max(1).mean()
    assert pseudo.tolist() == aligned.argmax(1).tolist()
    assert mask.tolist() == (aligned.max(1) >= threshold).astype(float).tolist()
    assert 0 < mask.sum() < len(mask)  # the threshold is relative, and it bites here


def test_warmup_rises_from_zero_to_one_over_the_first_half():
    adapter = AdaMatch()
    adapter.bind("classification", 10, total_steps=400)
    assert adapter.warmup(0) == pytest.approx(0.0)
    assert adapter.warmup(100) == pytest.approx(0.5)
    assert adapter.warmup(200) == pytest.approx(1.0)
    assert adapter.warmup(399) == pytest.approx(1.0)
    assert adapter.warmup(50) == pytest.approx(0.5 - math.cos(math.pi / 4) / 2)


def test_training_step_normalizes_source_and_target_together_with_per_sample_contexts():
    """The joint pass holds both domains' weak and strong views (BN sees all 2n + 2m), the
    second pass the source views alone; with Context Norm, contexts go sample by sample."""
    torch.manual_seed(0)
    adapter = AdaMatch(context_norm=True)
    adapter.bind("classification", 10, total_steps=100)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    model = adapter.prepare(net)
    seen_batch, seen_contexts = [], []
    net[1].register_forward_pre_hook(lambda _m, inputs: seen_batch.append(len(inputs[0])))
    norm = next(m for m in model.modules() if isinstance(m, ContextNorm))
    norm.register_forward_pre_hook(lambda m, _i: seen_contexts.append(m.context.tolist()))
    x, y = torch.rand(4, 3, 16, 16), torch.randint(0, 10, (4,))
    loss = adapter.training_loss(model, x, y, torch.rand(6, 3, 16, 16), step=60)
    assert seen_batch == [2 * 4 + 2 * 6, 2 * 4]
    assert seen_contexts == [[0] * 8 + [1] * 12, [0] * 8]
    loss.backward()
    assert norm.mean_head.weight.grad is not None and torch.isfinite(loss)
    strong = adapter.strong(x)
    assert strong.shape == x.shape and not torch.equal(strong, x)
    assert not torch.equal(strong[0] - x[0], strong[1] - x[1])  # own operations per image
