"""The long-horizon digits-drift suite: its walk through the corruptions and its stretches."""

from __future__ import annotations

import torch

from benchmark.registry import SUITES
from suites.corruptions import CORRUPTIONS
from suites.digits import digit_splits
from suites.digits_drift import PASSES, TRANSITIONS, walk


def test_the_walk_visits_every_corruption_once_and_closes_the_loop():
    points = walk()
    assert len(points) == TRANSITIONS + 1 and points[0] == points[-1]
    assert sorted(c for c, _ in points[:-1]) == sorted(CORRUPTIONS)
    assert all(3 <= s <= 5 for _, s in points)
    assert walk() == points  # fixed: the data never changes between runs


def test_a_stretch_streams_every_test_image_once_per_pass_between_two_waypoints():
    suite = SUITES.get("digits-drift")()
    images, labels = digit_splits(suite.size, suite.split_seed)["test"]
    data = suite.load("drift-03", "test")
    assert data.images.shape == (PASSES * len(images), 3, 32, 32)
    assert 0 <= float(data.images.min()) and float(data.images.max()) <= 1
    # every test image once per pass, labels following their images
    assert torch.equal(data.labels.sort().values,
                       labels.repeat(PASSES).sort().values)
    factors = suite.target_factors()["drift-03"]
    (a, s_a), (b, s_b) = walk()[3], walk()[4]
    assert factors == {"from": f"{a}-{s_a}", "to": f"{b}-{s_b}"}
