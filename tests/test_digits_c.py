"""The embedded digits-c suite: the digits suite's source, the 15 corruptions x 5 severities
as targets, fixed data."""

from __future__ import annotations

import pytest
import torch

from benchmark.registry import SUITES
from suites.corruptions import CORRUPTIONS, corrupt
from suites.digits_c import corruption_seed


@pytest.fixture(scope="module")
def suite():
    return SUITES.get("digits-c")()


def test_registered_with_75_corruption_targets_and_the_digits_source(suite):
    digits = SUITES.get("digits")
    assert suite.source == digits.source == "digits"
    assert suite.recipe == digits.recipe and suite.num_classes == 10
    assert len(suite.targets) == 75 and len(set(suite.targets)) == 75
    assert "gaussian_noise-5" in suite.targets and "jpeg_compression-1" in suite.targets
    assert {t.rsplit("-", 1)[0] for t in suite.targets} == set(CORRUPTIONS)


def test_source_data_equals_the_digits_suite(suite):
    digits = SUITES.get("digits")()
    for split in ("train", "test"):
        ours, theirs = suite.load("digits", split), digits.load("digits", split)
        assert torch.equal(ours.images, theirs.images)
        assert torch.equal(ours.labels, theirs.labels)


@pytest.mark.parametrize("domain", ["gaussian_noise-5", "frost-3", "pixelate-1"])
def test_targets_are_the_corrupted_test_split(suite, domain):
    clean = suite.load("digits", "test")
    data = suite.load(domain, "test")
    assert data.images.shape == clean.images.shape == (599, 3, 32, 32)
    assert torch.equal(data.labels, clean.labels)
    assert data.images.min() >= 0 and data.images.max() <= 1
    assert not torch.equal(data.images, clean.images)
    name, severity = domain.rsplit("-", 1)
    expected = corrupt(clean.images, name, int(severity),
                       corruption_seed(name, int(severity), "test"))
    assert torch.allclose(data.images, expected, atol=1e-6)


def test_data_is_fixed_across_instances_and_calls(suite):
    other = SUITES.get("digits-c")()
    for split in ("train", "test"):
        a, b = suite.load("shot_noise-2", split), other.load("shot_noise-2", split)
        assert torch.equal(a.images, b.images)
        assert torch.equal(a.images, suite.load("shot_noise-2", split).images)
    train, test = suite.load("shot_noise-2", "train"), suite.load("shot_noise-2", "test")
    assert len(train) == 1198 and len(test) == 599


def test_severity_raises_the_corruption_strength(suite):
    clean = suite.load("digits", "test").images
    changes = [(suite.load(f"gaussian_noise-{s}", "test").images - clean).abs().mean().item()
               for s in (1, 3, 5)]
    assert changes[0] < changes[1] < changes[2]


def test_seeds_differ_per_domain_and_split():
    seeds = {corruption_seed(c, s, split) for c in CORRUPTIONS for s in range(1, 6)
             for split in ("train", "test")}
    assert len(seeds) == 150


def test_unknown_domain_and_split_are_errors(suite):
    with pytest.raises(KeyError, match="no domain"):
        suite.load("gaussian_noise-6", "test")
    with pytest.raises(KeyError, match="split"):
        suite.load("fog-1", "validation")
