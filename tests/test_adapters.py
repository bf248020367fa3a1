"""Defining behaviour of each test-time adapter, and the BN state each one leaves behind."""

from __future__ import annotations

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from benchmark.adapter import Adapter, TargetStream
from benchmark.engine.runner import applicable
from benchmark.layers.losses import softmax_entropy
from benchmark.layers.norm import batchnorm_layers
from benchmark.registry import ADAPTERS


def fresh(tiny_source_state):
    suite, state = tiny_source_state
    model = suite.build_model()
    model.load_state_dict(state)
    return suite, model


def target_images(suite, n=256):
    return suite.load("digits-m", "test").images[:n]


def running_stats(model):
    return [(bn.running_mean.clone(), bn.running_var.clone()) for bn in batchnorm_layers(model)]


def builtin_adapters():
    return [name for name, cls in ADAPTERS.items() if not name.startswith("test-")]


def test_adabn_running_stats_are_the_target_statistics(tiny_source_state):
    suite, model = fresh(tiny_source_state)
    affine_before = [(bn.weight.clone(), bn.bias.clone()) for bn in batchnorm_layers(model)]
    x = target_images(suite)
    adapter = ADAPTERS.get("adabn")()
    adapter.attach(model)
    adapter.adapt(TargetStream(x, batch_size=50))  # uneven last batch on purpose

    # The stem BN's input does not depend on any other BN: compare with a direct computation.
    with torch.no_grad():
        features = model.stem[0](x).double()
    mean = features.mean(dim=(0, 2, 3))
    var = features.var(dim=(0, 2, 3), unbiased=True)
    stem_bn = model.stem[1]
    torch.testing.assert_close(stem_bn.running_mean.double(), mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stem_bn.running_var.double(), var, rtol=1e-5, atol=1e-6)

    # Affine parameters unchanged; model left in eval mode, predicting with the new stats.
    for bn, (w, b) in zip(batchnorm_layers(model), affine_before, strict=True):
        assert torch.equal(bn.weight, w) and torch.equal(bn.bias, b)
        assert not bn.training and bn.track_running_stats
    assert not model.training


def test_adabn_statistics_do_not_depend_on_batch_size(tiny_source_state):
    suite, _ = tiny_source_state
    x = target_images(suite, 200)
    stats = []
    for bs in (7, 200):
        _, model = fresh(tiny_source_state)
        adapter = ADAPTERS.get("adabn")()
        adapter.attach(model)
        adapter.adapt(TargetStream(x, batch_size=bs))
        stats.append(model.stem[1].running_var.clone())
    torch.testing.assert_close(stats[0], stats[1], rtol=1e-5, atol=1e-6)


def test_adabn_reset_restores_source_statistics(tiny_source_state):
    suite, model = fresh(tiny_source_state)
    source_stats = running_stats(model)
    adapter = ADAPTERS.get("adabn")()
    adapter.attach(model)
    adapter.adapt(TargetStream(target_images(suite), 64))
    assert not torch.equal(model.stem[1].running_mean, source_stats[0][0])
    adapter.reset()
    for (m, v), (m0, v0) in zip(running_stats(model), source_stats, strict=True):
        assert torch.equal(m, m0) and torch.equal(v, v0)


def test_ptbn_depends_on_batch_composition_and_leaves_stats_untouched(tiny_source_state):
    suite, model = fresh(tiny_source_state)
    before = running_stats(model)
    x = target_images(suite, 64)
    adapter = ADAPTERS.get("ptbn")()
    adapter.attach(model)
    alone = adapter.predict(x[:8])
    with_others = adapter.predict(torch.cat([x[:8], x[32:64]]))[:8]
    assert not torch.allclose(alone, with_others, atol=1e-4)
    for bn in batchnorm_layers(model):
        assert bn.training and not bn.track_running_stats
    for (m, v), (m0, v0) in zip(running_stats(model), before, strict=True):
        assert torch.equal(m, m0) and torch.equal(v, v0)


def test_source_is_independent_of_batch_composition(tiny_source_state):
    suite, model = fresh(tiny_source_state)
    before = running_stats(model)
    x = target_images(suite, 64)
    adapter = ADAPTERS.get("source")()
    adapter.attach(model)
    alone = adapter.predict(x[:8])
    with_others = adapter.predict(x[:40])[:8]
    torch.testing.assert_close(alone, with_others, rtol=1e-4, atol=1e-5)
    assert not model.training
    for (m, v), (m0, v0) in zip(running_stats(model), before, strict=True):
        assert torch.equal(m, m0) and torch.equal(v, v0)


def test_tent_trains_only_bn_affine_and_lowers_entropy(tiny_source_state):
    suite, model = fresh(tiny_source_state)
    before = running_stats(model)
    params_before = {n: p.clone() for n, p in model.named_parameters()}
    x = target_images(suite, 128)
    adapter = ADAPTERS.get("tent")()
    adapter.attach(model)

    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    bn_affine = {f"{name}.{p}" for name, m in model.named_modules()
                 if isinstance(m, _BatchNorm) for p in ("weight", "bias")}
    assert trainable == bn_affine

    entropies = []
    with torch.no_grad():  # Tent must adapt even inside an evaluator's no_grad
        for _ in range(5):
            entropies.append(softmax_entropy(adapter.predict(x)).mean().item())
    assert entropies[-1] < entropies[0]

    for n, p in model.named_parameters():
        if n in bn_affine:
            continue
        assert torch.equal(p, params_before[n]), f"{n} changed but Tent must freeze it"
    assert any(not torch.equal(dict(model.named_parameters())[n], params_before[n])
               for n in bn_affine)
    for bn in batchnorm_layers(model):  # batch statistics, running stats untouched
        assert bn.training and not bn.track_running_stats
    for (m, v), (m0, v0) in zip(running_stats(model), before, strict=True):
        assert torch.equal(m, m0) and torch.equal(v, v0)


def test_tent_prediction_is_the_forward_before_the_update(tiny_source_state):
    suite, model = fresh(tiny_source_state)
    x = target_images(suite, 64)
    adapter = ADAPTERS.get("tent")()
    adapter.attach(model)
    with torch.no_grad():
        expected = model(x)  # same config, before any update
    got = adapter.predict(x)
    torch.testing.assert_close(got, expected)
    with torch.no_grad():
        after = model(x)
    assert not torch.allclose(after, expected)  # and the update did happen


def test_tent_reset_restores_parameters_and_optimizer(tiny_source_state):
    suite, model = fresh(tiny_source_state)
    x = target_images(suite, 64)
    adapter = ADAPTERS.get("tent")()
    adapter.attach(model)
    first = adapter.predict(x)
    adapter.predict(x)
    adapter.reset()
    assert all(not s for s in adapter.optimizer.state.values())
    torch.testing.assert_close(adapter.predict(x), first)


def test_tent_hyperparameters_are_validated():
    with pytest.raises(TypeError, match="unknown hyper-parameter"):
        ADAPTERS.get("tent")(learning_rate=1e-3)
    assert ADAPTERS.get("tent")(lr=1e-4).label() == "tent(lr=0.0001)"
    assert ADAPTERS.get("tent")().label() == "tent"


@pytest.mark.parametrize("name", builtin_adapters())
def test_every_adapter_passes_check_through_its_real_lifecycle(name):
    """Each built-in adapter through ``check``, which drives the runner itself: ``prepare``
    and training with the adapter's hooks (its own checkpoint for training-time methods,
    target images for da), every protocol that applies, set_context and camera grouping,
    then determinism, episodic independence, reset and finiteness."""
    from benchmark.check import CheckSuite, check_adapter

    cls = ADAPTERS.get(name)
    if name == "source":
        pytest.skip("the baseline: check refuses an adapter that overrides no hook")
    if not applicable(cls, CheckSuite):
        pytest.skip(f"{name} needs {sorted(cls.requires)}; the check suite provides "
                    f"{sorted(CheckSuite.provides)}")
    report = check_adapter(name)
    assert report.passed, [text for ok, text in report.lines if not ok]


@pytest.mark.parametrize("name", [n for n in builtin_adapters()
                                  if ADAPTERS.get(n).changes_training])
def test_training_time_adapters_change_the_model_they_train(name):
    """So that the lifecycle test above is not passed by a method that acts like source."""
    from benchmark.registry import SUITES

    suite = next(cls() for _, cls in SUITES.items() if applicable(ADAPTERS.get(name), cls)
                 and not cls.__module__.startswith("tests"))
    plain = repr(suite.build_model())
    adapter = ADAPTERS.get(name)()
    assert adapter.training_signature() is not None
    prepared = repr(adapter.prepare(suite.build_model()))
    assert prepared != plain or type(adapter).extra_loss is not Adapter.extra_loss \
        or type(adapter).target_loss is not Adapter.target_loss \
        or adapter.owns_training_loss, name


def test_target_stream_yields_only_images_in_a_fixed_order():
    images = torch.arange(10, dtype=torch.float32).view(10, 1, 1, 1)
    stream = TargetStream(images, batch_size=4)
    batches = list(stream)
    assert [len(b) for b in batches] == [4, 4, 2] and len(stream) == 3
    assert all(isinstance(b, torch.Tensor) for b in batches)
    assert torch.equal(torch.cat(batches), images)
    assert torch.equal(torch.cat(list(stream)), images)  # re-iterable, same order
