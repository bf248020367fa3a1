"""The embedded digits-cams and digits-mm suites: determinism, shapes, ids, ranges."""

from __future__ import annotations

import pytest
import torch

from benchmark.layers.models import create_model
from benchmark.registry import SUITES
from suites import digits_cams, digits_mm
from suites.digits import digit_splits


@pytest.fixture(scope="module")
def cams():
    return SUITES.get("digits-cams")()


@pytest.fixture(scope="module")
def mm():
    return SUITES.get("digits-mm")()


def test_digits_cams_shapes_ranges_and_camera_ids(cams):
    assert cams.provides == {"camera_ids", "domain_ids"}
    n_train = len(digit_splits(32, 0)["train"][1])
    n_test = len(digit_splits(32, 0)["test"][1])
    for domain, split, n in (("cams-seen", "train", n_train), ("cams-seen", "test", n_test),
                             ("cam-unseen", "train", n_train),
                             ("cam-unseen", "test", 3 * n_test)):
        data = cams.load(domain, split)
        assert data.images.shape == (n, 3, 32, 32) and data.images.dtype == torch.float32
        assert 0 <= data.images.min() and data.images.max() <= 1
        assert torch.equal(data.images, torch.round(data.images * 255) / 255)  # 8-bit grid
        camera = data.extra["camera"]
        assert camera.dtype == torch.int64 and camera.shape == (n,)
        if domain == "cams-seen":  # four seen cameras, round-robin: balanced
            counts = camera.bincount(minlength=4)
            assert len(counts) == 4 and counts.max() - counts.min() <= 1
        else:  # one new id, constant over the split
            assert (camera == cams.unseen_camera_id).all() and cams.unseen_camera_id == 4
    test_labels = digit_splits(32, 0)["test"][1]
    assert torch.equal(cams.load("cam-unseen", "test").labels, test_labels.repeat(3))


def test_digits_cams_cameras_record_the_same_scene_differently(cams):
    data = cams.load("cams-seen", "train")
    means = torch.stack([data.images[data.extra["camera"] == k].mean((0, 2, 3))
                         for k in range(4)])
    unseen = cams.load("cam-unseen", "train").images.mean((0, 2, 3))
    # Every pair of cameras differs by more than 0.05 in some channel's mean.
    everything = torch.cat([means, unseen[None]])
    gaps = (everything[:, None] - everything[None]).abs().amax(-1)
    assert (gaps + torch.eye(5) > 0.05).all()


def test_digits_cams_is_deterministic():
    first = digits_cams._camera_split("test", "unseen", 3104)
    digits_cams._camera_split.cache_clear()
    again = SUITES.get("digits-cams")().load("cam-unseen", "test")
    assert first is not again and first.digest() == again.digest()


def test_digits_mm_layout_modalities_and_shifts(mm):
    assert "modalities" in mm.provides
    source = mm.load("mm", "test")
    n_test = len(source)
    assert source.images.shape == (n_test, 6, 32, 32) and not source.extra
    for domain in mm.targets:
        data = mm.load(domain, "test")
        assert data.images.shape == (3 * n_test, 6, 32, 32)
        assert 0 <= data.images.min() and data.images.max() <= 1
        # Thermal: one heat image repeated in channels 3-5.
        assert torch.equal(data.images[:, 3], data.images[:, 4])
        assert torch.equal(data.images[:, 3], data.images[:, 5])
    thermal = {d: mm.load(d, "test").images[:, 3] for d in mm.domains}
    rgb = {d: mm.load(d, "test").images[:, :3] for d in mm.domains}
    # Each target shifts one modality: the warmer, lower-contrast thermal sensor; the unseen RGB
    # camera. The other modality keeps the source's statistics.
    assert thermal["thermal-shift"].median() > thermal["mm"].median() + 0.1
    assert thermal["thermal-shift"].std() < thermal["mm"].std()
    assert abs(thermal["rgb-shift"].mean() - thermal["mm"].mean()) < 0.01
    assert abs(rgb["thermal-shift"].mean() - rgb["mm"].mean()) < 0.02
    assert (rgb["rgb-shift"].mean((0, 2, 3)) - rgb["mm"].mean((0, 2, 3))).abs().max() > 0.05


def test_digits_mm_is_deterministic():
    first = digits_mm._render("train", "mm", 4101, 1)
    digits_mm._render.cache_clear()
    again = SUITES.get("digits-mm")().load("mm", "train")
    assert first is not again and first.digest() == again.digest()


def test_two_stream_resnet_takes_three_channels_per_modality():
    torch.manual_seed(0)
    model = create_model("two_stream_resnet", 10, widths=(4, 8, 8), embed_dim=8)
    assert model(torch.rand(3, 6, 32, 32)).shape == (3, 10)
    separate = create_model("two_stream_resnet", 10, widths=(4, 8, 8), shared_trunk=False)
    assert set(separate.trunks) == {"rgb", "thermal"}
    assert separate(torch.rand(2, 6, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="6 channels"):
        model(torch.rand(3, 3, 32, 32))
