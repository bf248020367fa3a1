"""Test-time protocols (episodic, continual, mixed, noniid), batch-size sweeps, composition,
domain-adaptation training and the label-leak guard, on the tiny multi-target suite."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from tiny_suite import DASpy, Spy

from benchmark.adapter import TargetStream
from benchmark.engine.protocols import ConcatImages, dirichlet_order, mixed_order
from benchmark.engine.runner import RunConfig, Runner
from benchmark.registry import SUITES
from benchmark.specs import AdapterSpec

SUITE = "tiny-digits-c"


def run(tmp_path, adapters, protocols=("episodic",), targets=None, batch_sizes=(None,),
        seeds=(0,), name="R", isolation="isolated"):
    config = RunConfig(suite=SUITE, adapters=[AdapterSpec.parse(a) for a in adapters],
                       seeds=list(seeds), protocols=list(protocols), targets=targets,
                       batch_sizes=list(batch_sizes), results=tmp_path / name,
                       leaderboards=tmp_path / f"{name}-L", progress=False,
                       isolation=isolation)
    summary = Runner(config).run()
    cells = pd.read_csv(tmp_path / f"{name}-L" / f"{SUITE}-cells.csv")
    return summary, cells


def flips(cells, domain, n=2):
    """Score tolerance for ``n`` near-tie predictions: the same model on the same images in
    other batches may round differently (convolution kernels block by batch on some CPUs,
    e.g. AVX-512), and a logit pair that ties to ~1e-6 can flip. Two flips is far below any
    real difference these tests look for."""
    examples = cells[(cells.domain == domain)].n_examples.iloc[0]
    return 100.0 * n / examples


def score(cells, adapter, protocol, domain, batch_size=None):
    rows = cells[(cells.adapter == adapter) & (cells.protocol == protocol)
                 & (cells.domain == domain)]
    if batch_size is not None:
        rows = rows[rows.batch_size == batch_size]
    assert len(rows) == 1, rows
    return rows.score.iloc[0]


# ---- stream orders --------------------------------------------------------------------
def class_switches(labels: torch.Tensor) -> int:
    return int((labels[1:] != labels[:-1]).sum())


def test_noniid_order_is_a_seeded_class_correlated_permutation():
    labels = torch.arange(10).repeat_interleave(60)[torch.randperm(600)]
    sticky = dirichlet_order(labels, alpha=0.01, slots=50, seed=1)
    mild = dirichlet_order(labels, alpha=100.0, slots=50, seed=1)
    for order in (sticky, mild):
        assert sorted(order.tolist()) == list(range(600))
    assert torch.equal(sticky, dirichlet_order(labels, alpha=0.01, slots=50, seed=1))
    # i.i.d. order switches class ~540 times; alpha 0.01 leaves long single-class runs
    assert class_switches(labels[sticky]) < 120 < 400 < class_switches(labels[mild])


def test_mixed_order_and_concat_images_address_every_image_once():
    parts = [torch.full((3, 1, 2, 2), 0.0), torch.full((5, 1, 2, 2), 1.0)]
    domain, local = mixed_order([3, 5], seed=0)
    assert sorted(zip(domain.tolist(), local.tolist(), strict=True)) == \
        [(0, i) for i in range(3)] + [(1, i) for i in range(5)]
    images = ConcatImages(parts, domain, local)
    batch = images[torch.arange(8)]
    assert torch.equal(batch[:, 0, 0, 0], domain.float())


# ---- protocols through the runner -------------------------------------------------------
def test_every_protocol_gives_one_row_per_adapter_and_protocol(tmp_path):
    protocols = ("episodic", "continual", "mixed", "noniid")
    summary, cells = run(tmp_path, ["source", "adabn", "tent"], protocols)
    assert summary.failed == 0
    board = summary.board
    assert sorted(zip(board.adapter, board.protocol, strict=True)) == sorted(
        (a, p) for a in ("source", "adabn", "tent") for p in protocols)
    targets = SUITES.get(SUITE).targets
    for protocol in protocols:
        # the source model does not adapt: the stream cannot change its predictions
        for domain in targets:
            assert score(cells, "source", protocol, domain) == pytest.approx(
                score(cells, "source", "episodic", domain), abs=flips(cells, domain))
    # an adapting method sees different data under each stream; the first target of a
    # continual stream is still a fresh episode, the last one is not
    first, last = targets[0], targets[-1]
    assert score(cells, "tent", "continual", first) == score(cells, "tent", "episodic", first)
    tent_last = [score(cells, "tent", p, last) for p in protocols]
    assert len(set(tent_last)) == len(tent_last)
    cont = cells[(cells.protocol == "continual") & (cells.role == "target")]
    for row in cont.itertuples():
        curve = json.loads(row.curve)
        assert len(curve) == -(-row.n_examples // row.batch_size)  # one point per batch
        assert curve[-1] == pytest.approx(row.score, abs=0.006)  # the CSV rounds scores
        assert json.loads(row.protocol_params)["order"] == list(targets)


def test_episodic_ignores_target_order_and_continual_depends_on_it(tmp_path):
    _, all_targets = run(tmp_path, ["tent"], ("episodic", "continual"), name="all")
    _, last_only = run(tmp_path, ["tent"], ("episodic", "continual"),
                       targets=["digits-m"], name="one")
    # digits-m is the last of three targets in the full stream, the only one here
    assert score(all_targets, "tent", "episodic", "digits-m") == \
        score(last_only, "tent", "episodic", "digits-m")
    assert score(all_targets, "tent", "continual", "digits-m") != pytest.approx(
        score(last_only, "tent", "continual", "digits-m"), abs=1e-6)
    # a continual stream of one target is that target's episode
    assert score(last_only, "tent", "continual", "digits-m") == \
        score(last_only, "tent", "episodic", "digits-m")


def test_batch_size_sweep_and_the_source_prior(tmp_path):
    summary, cells = run(tmp_path, ["ptbn", "bn_prior", "bn_prior(prior=0)", "source"],
                         batch_sizes=(2, 64), targets=["contrast-5"])
    board = summary.board
    assert sorted(set(board.batch_size)) == [2, 64]
    assert len(board) == 4 * 2
    for bs in (2, 64):
        # N = 0 trusts the batch alone: prediction-time BN up to Bessel's correction
        assert score(cells, "bn_prior(prior=0)", "episodic", "contrast-5", bs) == \
            pytest.approx(score(cells, "ptbn", "episodic", "contrast-5", bs), abs=1.0)
    # the source model's predictions do not depend on the batch size
    assert score(cells, "source", "episodic", "contrast-5", 2) == pytest.approx(
        score(cells, "source", "episodic", "contrast-5", 64), abs=flips(cells, "contrast-5"))


def test_bn_prior_interpolates_between_source_and_batch_statistics(tiny_source_state):
    from benchmark.registry import ADAPTERS

    suite, state = tiny_source_state
    x = suite.load("digits-m", "test").images[:8]

    def logits(name, **hp):
        model = suite.build_model()
        model.load_state_dict(state)
        adapter = ADAPTERS.get(name)(**hp)
        adapter.attach(model)
        return adapter.predict(x)

    assert torch.allclose(logits("bn_prior", prior=10**9), logits("source"), atol=1e-4)
    # N = 0 is the batch alone; it differs from prediction-time BN only by the unbiased
    # batch variance (the reference implementation's), a factor n / (n - 1) = 8 / 7 here
    assert torch.allclose(logits("bn_prior", prior=0), logits("ptbn"), atol=0.05)
    assert not torch.allclose(logits("bn_prior", prior=0), logits("ptbn"), atol=1e-5)
    middle = logits("bn_prior", prior=8)
    assert not torch.allclose(middle, logits("source"), atol=1e-3)
    assert not torch.allclose(middle, logits("ptbn"), atol=1e-3)


# ---- label-leak guard -------------------------------------------------------------------
def test_target_labels_never_reach_an_adapter_and_the_runner_scores(tmp_path):
    Spy.seen.clear()
    # in-process: the spy records into its class, which an adapter process would keep to
    # itself; the adapter side's code is the same in both modes
    _, cells = run(tmp_path, ["test-spy"], ("episodic", "mixed"), targets=["contrast-5"],
                   isolation="in-process")
    suite = SUITES.get(SUITE)()
    labels = suite.load("contrast-5", "test").labels
    streams = [obj for kind, obj in Spy.seen if kind == "stream"]
    assert streams
    for stream in streams:
        assert isinstance(stream, TargetStream)
        for value in vars(stream).values():  # nothing in the stream is a label tensor
            assert not (isinstance(value, torch.Tensor) and value.dtype == labels.dtype
                        and value.shape == labels.shape and torch.equal(value, labels))
    for kind, obj in Spy.seen:
        if kind == "context":
            assert set(obj) <= {"role", "domain"}
        if kind in ("adapt-batch", "predict-batch"):
            assert obj.dtype == torch.float32 and obj.dim() == 4  # images only
    # the stored score is the accuracy of the spy's own predictions, computed here
    episodic = [obj for kind, obj in Spy.seen if kind == "logits"]
    n = len(labels)
    source_n = len(suite.load(suite.source, "test").labels)
    preds = torch.cat(episodic)
    # first the source-domain episode, then the contrast-5 episode (plan order)
    target_preds = preds[source_n : source_n + n].argmax(1)
    expected = 100.0 * (target_preds == labels).float().mean().item()
    assert score(cells, "test-spy", "episodic", "contrast-5") == pytest.approx(expected,
                                                                               abs=0.006)


# ---- training-time adapters: composition and domain adaptation ----------------------------
def test_da_adapters_train_one_model_per_target_on_images_only(tmp_path):
    DASpy.target_batches.clear()
    summary, cells = run(tmp_path, ["test-da-spy"], targets=["contrast-5", "digits-m"],
                         isolation="in-process")  # the spy's records stay in this process
    assert summary.failed == 0
    assert set(cells.setting) == {"da"}
    contexts = {c["domain"] for c, _ in DASpy.target_batches}
    assert contexts == {"contrast-5", "digits-m"}  # one training per target
    for context, x in DASpy.target_batches:
        assert context["role"] == "target" and x.dtype == torch.float32 and x.dim() == 4
    records = [json.loads(p.read_text()) for p in (tmp_path / "R" / "cells" / SUITE).glob("*.json")]
    by_domain = {r["domain"]: r["checkpoint"]["key"] for r in records}
    assert by_domain["contrast-5"] != by_domain["digits-m"]
    assert by_domain["digits"] == by_domain["contrast-5"]  # source row: the first target's


def test_da_adapters_refuse_streams_that_cross_targets(tmp_path):
    from benchmark.errors import ShiftbenchError

    with pytest.raises(ShiftbenchError, match="setting da"):
        run(tmp_path, ["test-da-spy"], ("continual",))


def test_composition_shares_the_training_part_checkpoint(tmp_path):
    summary, cells = run(tmp_path, ["test-da-spy+tent", "test-da-spy"], targets=["digits-m"])
    assert summary.failed == 0
    board = summary.board.set_index("adapter")
    assert board.loc["test-da-spy+tent", "setting"] == "da+tta"
    records = [json.loads(p.read_text()) for p in (tmp_path / "R" / "cells" / SUITE).glob("*.json")]
    keys = {(r["label"], r["domain"]): r["checkpoint"]["key"] for r in records}
    assert keys[("test-da-spy+tent", "digits-m")] == keys[("test-da-spy", "digits-m")]
    assert score(cells, "test-da-spy+tent", "episodic", "digits-m") != \
        score(cells, "test-da-spy", "episodic", "digits-m")


def test_a_composition_needs_a_test_time_second_part():
    with pytest.raises(ValueError, match="second part must be a test-time adapter"):
        AdapterSpec.parse("tent+test-da-spy").build()
    with pytest.raises(ValueError, match="at most two"):
        AdapterSpec.parse("a+b+c")


@pytest.mark.parametrize("text", ["ibn_a(p=0.5)+tent(lr=0.0001,steps=2)", "dsbn+adabn",
                                  "tent(lr=0.001)", "/x/my.py:Mine(k='a b')+tent"])
def test_a_spec_prints_as_the_text_that_parses_back_to_it(text):
    spec = AdapterSpec.parse(text)
    assert AdapterSpec.parse(spec.text) == spec
    assert ("+" in spec.text) == (spec.then is not None)


# ---- gradual, recurring, mixed-noniid, online ----------------------------------------------
def test_gradual_visits_every_severity_up_and_down_and_each_image_once():
    from benchmark.engine.protocols import get_protocol

    factors = [{"corruption": c, "severity": s} for c in ("fog", "snow") for s in range(1, 6)]
    visits = get_protocol("gradual").visits(len(factors), factors, {})
    levels = [(factors[i]["corruption"], factors[i]["severity"]) for i, _, _ in visits]
    assert levels == [("fog", s) for s in (1, 2, 3, 4, 5, 4, 3, 2, 1)] + \
        [("snow", s) for s in (1, 2, 3, 4, 5, 4, 3, 2, 1)]
    for cell in range(len(factors)):  # the slices of a cell cover it exactly once
        parts = sorted((p, n) for i, p, n in visits if i == cell)
        assert parts in ([(0, 1)], [(0, 2), (1, 2)])
    with pytest.raises(Exception, match="corruptions x severities"):
        get_protocol("gradual").visits(2, [{}, {}], {})


def test_mixed_noniid_mixes_targets_in_a_class_correlated_order():
    from benchmark.engine.protocols import get_protocol

    labels = [torch.arange(10).repeat_interleave(30)[torch.randperm(300)] for _ in range(3)]
    params = {"alpha": 0.01, "slot_size": 30, "shuffle_seed": 0}
    domain, local = get_protocol("mixed-noniid").mixed_order(labels, params)
    seen = sorted(zip(domain.tolist(), local.tolist(), strict=True))
    assert seen == [(d, i) for d in range(3) for i in range(300)]  # every image once
    stream = torch.stack([labels[d][i] for d, i in zip(domain, local, strict=True)])
    plain, _ = get_protocol("mixed").mixed_order(labels, {"shuffle_seed": 0})
    assert len(set(plain[:100].tolist())) == 3 and len(set(domain[:100].tolist())) >= 2
    shuffled = torch.stack([labels[d][i] for d, i in zip(*get_protocol("mixed").mixed_order(
        labels, {"shuffle_seed": 0}), strict=True)])
    assert class_switches(stream) < class_switches(shuffled) / 3


def test_recurring_repeats_the_sequence_and_the_source_model_does_not_notice(tmp_path):
    summary, cells = run(tmp_path, ["source"], ("episodic", "recurring"))
    assert summary.failed == 0
    for domain in SUITES.get(SUITE).targets:
        assert score(cells, "source", "recurring", domain) == pytest.approx(
            score(cells, "source", "episodic", domain), abs=flips(cells, domain))
    row = cells[(cells.protocol == "recurring") & (cells.role == "target")].iloc[0]
    assert len(json.loads(row.curve)) == 10 * -(-row.n_examples // row.batch_size)


SLOW = '''
import torch
from benchmark.adapter import Adapter

class Slow(Adapter):
    """Four forward passes per batch: the online stream outruns it."""
    def predict(self, x):
        with torch.no_grad():
            for _ in range(3):
                self.model(x)
            return self.model(x)


class SlowBlind(Slow):
    """As Slow, but what it predicts on batches it has no time for is always class 0."""
    def infer(self, x):
        logits = torch.zeros(len(x), 10)
        logits[:, 0] = 1.0
        return logits
'''


def test_online_a_slow_adapter_adapts_on_fewer_batches_and_is_scored_on_all(tmp_path):
    path = tmp_path / "slow.py"
    path.write_text(SLOW)
    summary, cells = run(tmp_path, ["source", "tent", f"{path}:Slow", f"{path}:SlowBlind"],
                         ("online",), batch_sizes=(32,))
    assert summary.failed == 0
    target = cells[cells.role == "target"]
    for adapter, cost in (("source", 1.0), ("tent", 3.0), ("slow", 4.0)):
        rows = target[target.adapter == adapter]
        for row in rows.itertuples():
            batches = -(-row.n_examples // 32)
            assert row.batches == batches
            assert row.adapted_batches == -(-batches // int(cost))  # one in ceil(cost)
            assert row.cost_ratio == pytest.approx(cost)
            assert row.score == row.score  # scored on every image, not only adapted ones
    board = summary.board.set_index("adapter")
    assert board.loc["source", "adapted"] == 1.0
    assert board.loc["slow", "adapted"] < board.loc["tent", "adapted"] < 1.0
    # skipped batches are predicted by the adapter's infer(): the model itself by default
    assert board.loc["slow", "score"] == board.loc["source", "score"]
    assert board.loc["slowblind", "score"] < board.loc["slow", "score"]
