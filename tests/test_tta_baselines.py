"""The field's test-time baselines: each one's defining equation or selection rule, checked
against a computation written here from the paper (numpy or plain loops), not the adapter's."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from benchmark.adapter import TargetStream
from benchmark.layers.tta import reliable_and_diverse
from benchmark.registry import ADAPTERS


def fresh(tiny_source_state):
    suite, state = tiny_source_state
    model = suite.build_model()
    model.load_state_dict(state)
    return suite, model


def build(name: str, num_classes: int = 10, **hparams):
    adapter = ADAPTERS.get(name)(**hparams)
    adapter.bind("classification", num_classes)
    return adapter


def target(suite, n=128, start=0):
    return suite.load("digits-m", "test").images[start:start + n]


def np_entropy(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    return -(p * np.log(p)).sum(1), p


def params_of(model):
    return [p.detach().clone() for p in model.parameters()]


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


class ShapeBlind(nn.Module):
    """1x1 conv, BN, global average pool, linear: its output ignores where pixels are, so
    shuffling an image's patches never changes its prediction."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 1)
        self.bn = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


# ---- EATA / ETA -----------------------------------------------------------------------------
def test_eata_selection_matches_the_papers_two_filters():
    torch.manual_seed(0)
    logits = torch.randn(64, 10) * 3
    moving = torch.softmax(torch.randn(10), 0)
    margin, d_margin = 0.4 * math.log(10), 0.4
    keep, updated = reliable_and_diverse(logits, margin, d_margin, moving)

    ent, p = np_entropy(logits.numpy().astype(np.float64))
    m = moving.numpy().astype(np.float64)
    cos = p @ m / (np.linalg.norm(p, axis=1) * np.linalg.norm(m))
    expected = (ent < margin) & (np.abs(cos) < d_margin)
    assert 0 < expected.sum() < 64  # both filters bite on this draw
    np.testing.assert_array_equal(keep.numpy(), expected)
    np.testing.assert_allclose(updated.numpy(), 0.9 * m + 0.1 * p[expected].mean(0), rtol=1e-5)
    # no average yet: every reliable sample passes, and their mean starts the average
    keep0, first = reliable_and_diverse(logits, margin, d_margin, None)
    np.testing.assert_array_equal(keep0.numpy(), ent < margin)
    np.testing.assert_allclose(first.numpy(), p[ent < margin].mean(0), rtol=1e-5)


def test_eta_step_is_the_certainty_weighted_entropy_of_the_selected_samples(tiny_source_state):
    suite, model = fresh(tiny_source_state)
    x = target(suite)
    adapter = build("eta", optimizer="sgd", lr=0.1, momentum=0.0, d_margin=1.0)
    adapter.attach(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    logits = adapter.predict(x)

    # the same step by hand from the paper's Eq. 9: sum over selected of exp(E0-E) E / n_sel
    _, reference = fresh(tiny_source_state)
    from benchmark.layers.norm import normalize_with_batch_statistics

    normalize_with_batch_statistics(reference)
    out = reference(x)
    ent = -(out.softmax(1) * out.log_softmax(1)).sum(1)
    margin = 0.4 * math.log(10)
    selected = ent < margin
    assert 0 < int(selected.sum()) < len(x)
    loss = sum(math.exp(margin - e.item()) * e for e in ent[selected]) / int(selected.sum())
    loss.backward()
    torch.testing.assert_close(logits, out.detach())
    bn = {f"{m}.{k}" for m, layer in reference.named_modules()
          if isinstance(layer, nn.BatchNorm2d) for k in ("weight", "bias")}
    for name, p in reference.named_parameters():
        moved = dict(model.named_parameters())[name].detach()
        if name in bn:
            torch.testing.assert_close(moved, before[name] - 0.1 * p.grad, rtol=1e-4, atol=1e-6)
        else:
            assert torch.equal(moved, before[name])  # only BN affine adapts


def test_eata_fisher_is_the_mean_squared_gradient_of_self_labelled_cross_entropy(
        tiny_source_state):
    suite, model = fresh(tiny_source_state)
    source = suite.load(suite.source, "train").images[:96]
    adapter = build("eata", source_images=96)
    adapter.attach(model)
    adapter.use_source(TargetStream(source, batch_size=32))

    _, reference = fresh(tiny_source_state)
    from benchmark.layers.tta import adapt_batchnorm_affine

    params = adapt_batchnorm_affine(reference, "check")
    total = [torch.zeros_like(p) for p in params]
    for start in range(0, 96, 32):
        out = reference(source[start:start + 32])
        labels = out.argmax(1).detach()
        nll = -out.log_softmax(1)[torch.arange(len(labels)), labels].mean()
        grads = torch.autograd.grad(nll, params)
        total = [t + g**2 for t, g in zip(total, grads, strict=True)]
    for mine, theirs in zip(adapter.fisher, total, strict=True):
        torch.testing.assert_close(mine, theirs / 3, rtol=1e-4, atol=1e-9)
    assert all(float(f.sum()) > 0 for f in adapter.fisher)


def test_eata_fisher_penalty_holds_important_parameters_at_their_source_values(
        tiny_source_state):
    suite, _ = tiny_source_state
    source = suite.load(suite.source, "train").images[:128]

    def drift(alpha: float) -> tuple[float, float]:
        _, model = fresh(tiny_source_state)
        adapter = build("eata", fisher_alpha=alpha, source_images=128, optimizer="sgd",
                        lr=0.05, momentum=0.0, e_margin=1.0)
        adapter.attach(model)
        adapter.use_source(TargetStream(source, batch_size=64))
        start = [p.detach().clone() for p in adapter.params]
        for i in range(4):
            adapter.predict(target(suite, 64, 64 * i))
        moved = sum(float(((p.detach() - s) ** 2 * f).sum()) for p, s, f
                    in zip(adapter.params, start, adapter.fisher, strict=True))
        return moved, max(float(f.max()) for f in adapter.fisher)

    free, fisher_max = drift(0.0)
    # a spring as stiff as plain SGD allows (lr * 2 alpha F < 2 for every parameter)
    held, _ = drift(0.5 / (0.05 * fisher_max))
    assert 0 < held < free

    # the penalty itself: alpha * sum_i F_i (theta_i - theta_i^0)^2 (Eq. 10)
    _, model = fresh(tiny_source_state)
    adapter = build("eata", fisher_alpha=3.0, source_images=128)
    adapter.attach(model)
    adapter.use_source(TargetStream(source, batch_size=64))
    torch.manual_seed(1)
    deltas = [torch.randn_like(p) * 0.1 for p in adapter.params]
    with torch.no_grad():
        for p, d in zip(adapter.params, deltas, strict=True):
            p += d
    expected = 3.0 * sum(float((f.double() * d.double() ** 2).sum())
                         for f, d in zip(adapter.fisher, deltas, strict=True))
    assert adapter.penalty().item() == pytest.approx(expected, rel=1e-4)


def test_eata_declares_source_use_and_gets_its_count_from_a_hyperparameter():
    eata = ADAPTERS.get("eata")(source_images=500)
    assert eata.setting == "tta+src" and eata.source_image_count() == 500
    assert ADAPTERS.get("eta")().source_image_count() == 0


def test_class_count_sets_the_entropy_margin(tiny_source_state):
    _, model = fresh(tiny_source_state)
    for classes in (10, 1000):
        adapter = build("eata", num_classes=classes)
        adapter.attach(model)
        assert adapter.margin == pytest.approx(0.4 * math.log(classes))
    unbound = ADAPTERS.get("sar")()
    with pytest.raises(ValueError, match="class count"):
        unbound.attach(model)


# ---- SAR ------------------------------------------------------------------------------------
def test_sar_step_uses_the_gradient_at_the_sharpness_perturbed_weights(tiny_source_state):
    suite, model = fresh(tiny_source_state)
    x = target(suite)
    adapter = build("sar", lr=0.05, momentum=0.0, reset_constant=0.0)
    adapter.attach(model)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and not any(n.startswith("layer3") for n in names)  # top stage frozen
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    adapter.predict(x)

    # by hand: g at theta on reliable samples, eps = rho g/||g||, g' at theta+eps, step
    _, ref = fresh(tiny_source_state)
    from benchmark.layers.norm import normalize_with_batch_statistics

    normalize_with_batch_statistics(ref)
    params = [dict(ref.named_parameters())[n] for n in names]
    margin = 0.4 * math.log(10)

    def entropies():
        out = ref(x)
        return -(out.softmax(1) * out.log_softmax(1)).sum(1)

    e = entropies()
    reliable = e < margin
    g = torch.autograd.grad(e[reliable].mean(), params)
    norm = math.sqrt(sum(float((t**2).sum()) for t in g))
    with torch.no_grad():
        for p, t in zip(params, g, strict=True):
            p += 0.05 * t / norm
    e2 = entropies()[reliable]
    g2 = torch.autograd.grad(e2[e2 < margin].mean(), params)
    for n, t in zip(names, g2, strict=True):
        torch.testing.assert_close(dict(model.named_parameters())[n].detach(),
                                   before[n] - 0.05 * t, rtol=1e-4, atol=1e-6)


def test_sar_recovers_the_source_model_when_the_entropy_average_collapses(tiny_source_state):
    suite, model = fresh(tiny_source_state)
    source_state = params_of(model)
    adapter = build("sar", lr=0.05, reset_constant=1e9)  # any average is "collapsed"
    adapter.attach(model)
    adapter.predict(target(suite))
    assert same(params_of(model), source_state) and adapter.ema is None
    kept = build("sar", lr=0.05, reset_constant=0.0)
    _, other = fresh(tiny_source_state)
    kept.attach(other)
    kept.predict(target(suite))
    assert not same(params_of(other), source_state) and kept.ema is not None


# ---- DeYO -----------------------------------------------------------------------------------
def test_deyo_patch_shuffle_permutes_whole_patches():
    torch.manual_seed(0)
    from adapters.deyo import shuffle_patches

    x = torch.rand(3, 3, 32, 32)
    y = shuffle_patches(x, 4)
    for image_x, image_y in zip(x, y, strict=True):
        cut = [image_x[:, i:i + 8, j:j + 8] for i in range(0, 32, 8) for j in range(0, 32, 8)]
        got = [image_y[:, i:i + 8, j:j + 8] for i in range(0, 32, 8) for j in range(0, 32, 8)]
        matches = [[k for k, c in enumerate(cut) if torch.equal(c, g)] for g in got]
        assert sorted(m[0] for m in matches) == list(range(16))  # a permutation
    assert not torch.equal(x, y)


def test_deyo_never_adapts_a_model_whose_prediction_ignores_shape():
    torch.manual_seed(0)
    x = torch.rand(64, 3, 16, 16)
    for name, moves in (("deyo", False), ("eta", True)):
        torch.manual_seed(1)
        model = ShapeBlind()
        with torch.no_grad():
            model.fc.weight *= 20  # confident enough to pass the entropy filters
        start = params_of(model)
        adapter = build(name, margin=1.0) if name == "deyo" else build(name, e_margin=1.0)
        adapter.attach(model)
        adapter.predict(x)
        # PLPD = p(x) - p(shuffled x) = 0 for every sample: nothing passes DeYO's filter
        assert same(params_of(model), start) != moves, name


def test_deyo_adapts_bn_affine_below_the_top_stage_only(tiny_source_state):
    suite, model = fresh(tiny_source_state)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    adapter = build("deyo", lr=0.05, margin=1.0, plpd_threshold=-2.0)  # every sample kept
    adapter.attach(model)
    adapter.predict(target(suite))
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    bn = {n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert moved and all(n.rsplit(".", 1)[0] in bn for n in moved)
    assert not any(n.startswith("layer3") for n in moved)  # the top stage stays frozen


# ---- RDumb ----------------------------------------------------------------------------------
def test_rdumb_resets_to_the_source_model_every_t_steps(tiny_source_state):
    suite, model = fresh(tiny_source_state)
    batches = [target(suite, 64, 64 * i) for i in range(3)]
    adapter = build("rdumb", reset_every=2)
    adapter.attach(model)
    first = adapter.predict(batches[0])
    adapter.predict(batches[1])
    again = adapter.predict(batches[0])  # step 3 starts from the source model
    torch.testing.assert_close(again, first)
    never = build("eta")
    _, other = fresh(tiny_source_state)
    never.attach(other)
    eta_first = never.predict(batches[0])
    never.predict(batches[1])
    assert not torch.allclose(never.predict(batches[0]), eta_first)


# ---- LAME -----------------------------------------------------------------------------------
def test_lame_knn_affinity_and_fixed_point():
    from adapters.lame import affinity, laplacian_assignment

    torch.manual_seed(0)
    features = torch.randn(40, 8)
    w = affinity(features, "knn", 5)
    z = torch.nn.functional.normalize(features, dim=1).numpy()
    dist = ((z[:, None] - z[None]) ** 2).sum(-1)
    for row, d in zip(w.numpy(), dist, strict=True):
        order = np.argsort(d)
        assert row.sum() == 5 and row[order[0]] == 0  # itself excluded
        np.testing.assert_array_equal(np.flatnonzero(row), np.sort(order[1:6]))

    log_p = torch.log_softmax(torch.randn(40, 4) * 2, 1)
    assignment = laplacian_assignment(log_p, w, max_steps=500, tolerance=0)
    # a fixed point of Eq. 6: z = softmax(log p + W z)
    torch.testing.assert_close(assignment, (log_p + w @ assignment).softmax(1), atol=1e-5,
                               rtol=0)
    # no affinity: LAME returns the model's own probabilities
    torch.testing.assert_close(laplacian_assignment(log_p, torch.zeros(40, 40)), log_p.exp())


def test_lame_changes_no_parameter_and_smooths_neighbours(tiny_source_state):
    suite, model = fresh(tiny_source_state)
    start = params_of(model)
    adapter = build("lame")
    adapter.attach(model)
    x = target(suite, 200)
    adapted = adapter.predict(x).argmax(1)
    with torch.no_grad():
        plain = model(x).argmax(1)
    assert same(params_of(model), start)
    assert (adapted != plain).any()
    # per batch only: the same batch again gives the same output
    torch.testing.assert_close(adapter.predict(x).argmax(1), adapted)


# ---- T3A ------------------------------------------------------------------------------------
def test_t3a_logits_come_from_entropy_filtered_prototypes(tiny_source_state):
    suite, model = fresh(tiny_source_state)
    adapter = build("t3a", filter_k=3)
    adapter.attach(model)
    batches = [target(suite, 32, 32 * i) for i in range(3)]
    for x in batches[:2]:
        adapter.predict(x)
    got = adapter.predict(batches[2])

    # by hand: supports = classifier rows + every feature so far, each labelled by the
    # source classifier; keep the 3 lowest-entropy per class; cosine to summed prototypes
    with torch.no_grad():
        feats = []
        model.fc.register_forward_pre_hook(lambda m, i: feats.append(i[0]))
        for x in batches:
            model(x)
        w, b = model.fc.weight.numpy().astype(np.float64), model.fc.bias.numpy()
    support = np.concatenate([w, *[f.numpy() for f in feats]])
    ent, p = np_entropy(support @ w.T + b)
    label = p.argmax(1)
    proto = np.zeros((10, support.shape[1]))
    for k in range(10):
        members = np.flatnonzero(label == k)
        for i in members[np.argsort(ent[members], kind="stable")[:3]]:
            proto[k] += support[i] / np.linalg.norm(support[i])
    norms = np.linalg.norm(proto, axis=1, keepdims=True)
    expected = feats[2].numpy() @ (proto / np.where(norms > 0, norms, 1)).T
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-5)


# ---- DUA ------------------------------------------------------------------------------------
def test_dua_moves_running_statistics_by_the_decayed_momentum(tiny_source_state):
    suite, model = fresh(tiny_source_state)
    x = target(suite, 3)
    bn = model.stem[1]
    mean = bn.running_mean.clone().double()
    adapter = build("dua", padding=0, flip=False, rotate=False, copies=4)  # views = the image
    adapter.attach(model)
    adapter.predict(x)
    m = 0.1
    for image in x:
        m *= 0.94
        rho = m + 0.005
        with torch.no_grad():
            feature = model.stem[0](image.unsqueeze(0)).double()
        mean = (1 - rho) * mean + rho * feature.mean((0, 2, 3))
    torch.testing.assert_close(bn.running_mean.double(), mean, rtol=1e-5, atol=1e-6)
    assert not bn.training  # predictions use the running statistics


def test_dua_views_are_the_image_turned_by_random_quarter_turns(tiny_source_state):
    suite, model = fresh(tiny_source_state)
    image = target(suite, 1)[0]
    adapter = build("dua", padding=0, flip=False, copies=64)
    adapter.attach(model)
    views = adapter._augment(image)
    turns = [[k for k in range(4) if torch.equal(v, torch.rot90(image, k, dims=(1, 2)))]
             for v in views]
    assert all(len(t) == 1 for t in turns)  # every view is one rotation of the image
    assert {t[0] for t in turns} == {0, 1, 2, 3}  # all four occur in 64 draws


# ---- CoTTA ----------------------------------------------------------------------------------
def test_cotta_teacher_is_the_moving_average_and_restore_hits_its_rate(tiny_source_state):
    suite, model = fresh(tiny_source_state)
    source = {n: p.detach().clone() for n, p in model.named_parameters()}
    adapter = build("cotta", restore=0.0, views=2)
    adapter.attach(model)
    adapter.predict(target(suite, 64))
    for (name, student), teacher in zip(model.named_parameters(),
                                        adapter.teacher.parameters(), strict=True):
        torch.testing.assert_close(teacher, 0.999 * source[name] + 0.001 * student.detach())
    assert any(not torch.equal(p, source[n]) for n, p in model.named_parameters())

    _, model = fresh(tiny_source_state)
    adapter = build("cotta", restore=0.3, views=2, lr=0.1)
    adapter.attach(model)
    adapter.predict(target(suite, 64))
    restored = sum(int((p == source[n]).sum()) for n, p in model.named_parameters())
    total = sum(p.numel() for p in model.parameters())
    assert 0.25 < restored / total < 0.35


def test_cotta_augments_only_when_the_anchor_is_unsure(tiny_source_state):
    suite, model = fresh(tiny_source_state)
    x = target(suite, 64)
    outputs = {}
    for ap in (0.0, 1.0):  # never / always below the threshold
        _, model = fresh(tiny_source_state)
        adapter = build("cotta", ap=ap, views=4)
        adapter.attach(model)
        outputs[ap] = adapter.predict(x)
        with torch.no_grad():
            plain = adapter.anchor(x)
        assert torch.allclose(outputs[ap], plain) == (ap == 0.0)


def test_cotta_without_flips_never_mirrors_a_view():
    from torchvision.transforms import v2

    from benchmark.layers.augment import cotta_views

    def flips(views):
        return [t for t in views.transforms if isinstance(t, v2.RandomHorizontalFlip)]

    assert len(flips(cotta_views(32))) == 1 and not flips(cotta_views(32, flip=False))
    torch.manual_seed(0)
    adapter = build("cotta", flip=False, ap=1.0, views=2)
    adapter.attach(ShapeBlind())
    adapter.predict(torch.rand(8, 3, 16, 16))
    assert not flips(adapter._views)


# ---- ROID -----------------------------------------------------------------------------------
def test_roid_loss_and_prior_correction_follow_the_paper():
    from adapters.roid import soft_likelihood_ratio

    torch.manual_seed(0)
    logits = torch.randn(16, 5) * 4
    p = np.clip(torch.softmax(logits.double(), 1).numpy(), 0, 0.99)
    np.testing.assert_allclose(soft_likelihood_ratio(logits).numpy(),
                               -(p * np.log(p / (1 - p) + 1e-5)).sum(1), rtol=1e-4)

    model = ShapeBlind(5)
    adapter = build("roid", num_classes=5, lr=0.0, consistency=False)
    adapter.attach(model)
    x = torch.rand(16, 3, 8, 8)
    with torch.no_grad():
        from benchmark.layers.norm import normalize_with_batch_statistics

        reference = ShapeBlind(5)
        reference.load_state_dict(model.state_dict())
        normalize_with_batch_statistics(reference)
        raw = reference(x).double().numpy()
    out = adapter.predict(x).double().numpy()
    probs = np.exp(raw) / np.exp(raw).sum(1, keepdims=True)
    prior = probs.mean(0)
    s = max(1 / 16, 1 / 5) / prior.max()
    np.testing.assert_allclose(out, raw * (prior + s) / (1 + s * 5), rtol=1e-5, atol=1e-6)


# ---- RoTTA ----------------------------------------------------------------------------------
def test_robust_bn_normalizes_with_the_updated_global_statistics():
    from benchmark.layers.robust_norm import RobustBN2d

    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3)
    bn.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
    bn.running_var.copy_(torch.tensor([1.0, 4.0, 0.25]))
    layer = RobustBN2d(bn, momentum=0.05).train()
    x = torch.randn(8, 3, 5, 5) * 2 + 1
    out = layer(x).detach().double().numpy()
    xs = x.double().numpy()
    mean = 0.95 * bn.running_mean.double().numpy() + 0.05 * xs.mean((0, 2, 3))
    var = 0.95 * bn.running_var.double().numpy() + 0.05 * xs.var((0, 2, 3))
    expected = (xs - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + 1e-5)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(layer.mean.double().numpy(), mean, rtol=1e-5)
    layer.eval()  # evaluation: the stored statistics, unchanged
    before = layer.mean.clone()
    layer(x)
    assert torch.equal(layer.mean, before)


def test_rotta_memory_is_category_balanced_and_evicts_the_oldest_most_uncertain():
    from adapters.rotta import CategoryBalancedMemory

    bank = CategoryBalancedMemory(capacity=4, classes=2, lambda_t=1.0, lambda_u=1.0)
    image = torch.zeros(1)
    for _ in range(5):  # class 0 only: at most capacity / C = 2 of them
        bank.add(image, 0, 0.1)
    assert [len(c) for c in bank.items] == [2, 0]
    bank.add(image, 1, 0.5)
    bank.add(image, 1, 0.2)
    assert [len(c) for c in bank.items] == [2, 2]
    ages = [i.age for i in bank.items[1]]
    assert ages == [2, 1]  # every item ages per arrival, the newcomer included
    # full: a confident newcomer of class 1 replaces class 1's highest-score item
    bank.add(image, 1, 0.0)
    assert sorted(i.uncertainty for i in bank.items[1]) == [0.0, 0.2]
    # a newcomer scoring higher than everything stored is refused
    bank.add(image, 1, 100.0)
    assert 100.0 not in [i.uncertainty for i in bank.items[1]]


# ---- NOTE -----------------------------------------------------------------------------------
def test_iabn_keeps_only_significant_instance_deviations():
    from benchmark.layers.robust_norm import InstanceAwareBatchNorm2d

    torch.manual_seed(0)
    layer = InstanceAwareBatchNorm2d(2, k=1.0).eval()
    layer.bn.running_mean.copy_(torch.tensor([0.0, 1.0]))
    layer.bn.running_var.copy_(torch.tensor([1.0, 2.0]))
    x = torch.randn(3, 2, 4, 4) + torch.tensor([0.0, 3.0]).view(1, 2, 1, 1)
    out = layer(x).detach().double().numpy()

    xs, L = x.double().numpy(), 16
    mu, s2 = np.array([0.0, 1.0])[None, :, None, None], np.array([1.0, 2.0])[None, :, None, None]
    mu_i, s2_i = xs.mean((2, 3), keepdims=True), xs.var((2, 3), ddof=1, keepdims=True)

    def shrink(v, t):
        return np.sign(v) * np.maximum(np.abs(v) - t, 0)

    mean = mu + shrink(mu_i - mu, np.sqrt((s2 + 1e-5) / L))
    var = np.maximum(s2 + shrink(s2_i - s2, (s2 + 1e-5) * np.sqrt(2 / (L - 1))), 0)
    np.testing.assert_allclose(out, (xs - mean) / np.sqrt(var + 1e-5), rtol=1e-4, atol=1e-5)


def test_pbrs_memory_balances_predicted_classes():
    from adapters.note import PredictionBalancedReservoir

    torch.manual_seed(0)
    memory = PredictionBalancedReservoir(capacity=64, classes=2)
    for _ in range(200):
        memory.add(torch.zeros(1), 0)
    assert [len(c) for c in memory.items] == [64, 0]
    for _ in range(50):
        memory.add(torch.zeros(1), 1)
    assert [len(c) for c in memory.items] == [32, 32]


def test_note_trains_with_iabn_and_predicts_blocks_before_their_update(tiny_source_state):
    from benchmark.layers.robust_norm import InstanceAwareBatchNorm2d

    suite, _ = tiny_source_state
    note = build("note", update_every=16)
    model = note.prepare(suite.build_model())
    inner = {id(m.bn) for m in model.modules() if isinstance(m, InstanceAwareBatchNorm2d)}
    plain = [m for m in model.modules()
             if isinstance(m, nn.BatchNorm2d) and id(m) not in inner]
    assert inner and not plain  # every BN became IABN (its running statistics inside)
    note.attach(model)
    x = target(suite, 40)
    with torch.no_grad():
        model.eval()
        first_block = model(x[:16])
    out = note.predict(x)
    torch.testing.assert_close(out[:16], first_block)  # predicted before the first update
    assert note.seen == 40 and len(note.memory) == 40


# ---- UnMix-TNS ------------------------------------------------------------------------------
def test_unmix_tns_normalization_is_the_mixture_of_shifted_components():
    from benchmark.layers.robust_norm import UnMixTNS2d

    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3)
    bn.running_var.fill_(2.0)
    x = torch.randn(6, 3, 4, 4) * 3 + 1
    one = UnMixTNS2d(bn, components=1)  # one component: every instance is its own
    xs = x.double().numpy()
    instance = (xs - xs.mean((2, 3), keepdims=True)) / np.sqrt(
        xs.var((2, 3), keepdims=True) + 1e-5)
    np.testing.assert_allclose(one(x).detach().numpy(), instance, rtol=1e-4, atol=1e-4)

    layer = UnMixTNS2d(bn, components=16)
    means, vars_ = layer.means.double().numpy(), layer.vars.double().numpy()
    np.testing.assert_allclose(vars_, 1.0, rtol=1e-6)  # (1 - alpha) s2
    out = layer(x).detach().double().numpy()
    mu_i, s2_i = xs.mean((2, 3)), xs.var((2, 3))
    unit = mu_i / np.linalg.norm(mu_i, axis=1, keepdims=True)
    comp = means / np.linalg.norm(means, axis=1, keepdims=True)
    logits = unit @ comp.T / 0.07
    p = np.exp(logits - logits.max(1, keepdims=True))
    p = (p / p.sum(1, keepdims=True))[:, :, None]
    mu = (1 - p) * means[None] + p * mu_i[:, None]
    s2 = (1 - p) * vars_[None] + p * s2_i[:, None]
    mean, var = mu.mean(1), s2.mean(1) + (mu**2).mean(1) - mu.mean(1) ** 2
    expected = (xs - mean[:, :, None, None]) / np.sqrt(var[:, :, None, None] + 1e-5)
    np.testing.assert_allclose(out, expected, rtol=1e-3, atol=1e-4)
    m = 1 - 0.9 ** (6 / 64)
    np.testing.assert_allclose(layer.means.double().numpy(),
                               means + m * (p * (mu_i[:, None] - means[None])).mean(0),
                               rtol=1e-5, atol=1e-6)


# ---- infer: the online protocol's prediction without adapting --------------------------------
@pytest.mark.parametrize("name", ["tent", "eta", "eata", "sar", "deyo", "rdumb", "lame", "t3a",
                                  "cotta", "roid", "dua", "rotta", "ptbn", "adabn", "bn_prior"])
def test_infer_predicts_without_changing_any_state(tiny_source_state, name):
    suite, model = fresh(tiny_source_state)
    adapter = build(name)
    adapter.attach(model)
    if adapter.source_image_count():
        adapter.use_source([target(suite, 32)])  # type: ignore[arg-type]
    adapter.predict(target(suite, 64))  # some adaptation first, so there is state to keep
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = adapter.infer(target(suite, 64, 64))
    again = adapter.infer(target(suite, 64, 64))
    torch.testing.assert_close(first, again)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert first.shape == (64, 10)
