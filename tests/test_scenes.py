"""The embedded scenes suite (tiny sizes), and segmentation through training and adapters."""

import copy

import numpy as np
import pytest
import torch

from adapters.adabn import AdaBN
from adapters.ptbn import PredictionTimeBN
from adapters.tent import Tent
from benchmark.adapter import Adapter, TargetStream
from benchmark.metrics import IGNORE_INDEX, MeanIoU
from benchmark.registry import SUITES, load_builtins
from benchmark.suite import Recipe
from benchmark.training import train_source
from suites.scenes import CLASSES, LABEL, Scenes
from suites.segmentation import CLASS_NAMES


class TinyScenes(Scenes):
    sizes = {"train": 6, "test": 5}
    height, width = 32, 64
    recipe = Recipe(arch="small_segnet", epochs=1, batch_size=3, lr=0.01)


def saturation(images: torch.Tensor) -> float:
    return (images.max(1).values - images.min(1).values).mean().item()


def test_registered_as_a_segmentation_suite_with_miou():
    load_builtins()
    cls = SUITES.get("scenes")
    assert cls.task == "segmentation" and cls.metric == "miou" and cls.num_classes == 12
    metric = cls().make_metric()
    assert isinstance(metric, MeanIoU) and metric.class_names == list(CLASSES)
    # the declared classes are Cityscapes classes, in trainId order
    assert [CLASS_NAMES.index(c) for c in CLASSES] == sorted(CLASS_NAMES.index(c) for c in CLASSES)
    assert SUITES.get("gta5-cityscapes").metric == "miou"


def test_scenes_are_deterministic_share_test_layouts_and_differ_in_style():
    a, b = TinyScenes(), TinyScenes()
    for domain in a.domains:
        for split in ("train", "test"):
            x, y = a.load(domain, split), b.load(domain, split)
            assert torch.equal(x.images, y.images) and torch.equal(x.labels, y.labels)
    syn, real = a.load("synthetic", "test"), a.load("real", "test")
    assert syn.images.shape == (5, 3, 32, 64) and syn.labels.shape == (5, 32, 64)
    assert syn.labels.dtype == torch.int64
    assert torch.equal(syn.labels, real.labels)  # same layouts ...
    assert (syn.images - real.images).abs().mean() > 0.05  # ... different rendering
    assert saturation(real.images) < saturation(syn.images)
    assert not torch.equal(a.load("synthetic", "train").labels[:5], syn.labels)
    classes = set(torch.cat([a.load(d, s).labels.flatten() for d in a.domains
                             for s in ("train", "test")]).unique().tolist())
    assert {LABEL[c] for c in ("road", "sidewalk", "building", "sky", "car")} <= classes
    assert classes <= set(range(len(CLASSES)))


def test_every_declared_class_is_drawn_in_the_test_split():
    """mIoU averages over the declared classes: each must occur in the scored split (the
    suite's own size), or the suite would claim classes it never scores."""
    labels = Scenes().load("synthetic", "test").labels
    counts = torch.bincount(labels.flatten(), minlength=len(CLASSES))
    assert len(counts) == len(CLASSES)
    assert (counts > 0).all(), dict(zip(CLASSES, counts.tolist(), strict=True))
    images_with = [(labels == c).flatten(1).any(1).float().mean().item()
                   for c in range(len(CLASSES))]
    assert min(images_with) > 0.2  # thin and rare classes too are in many scenes


def test_real_style_is_noisier_and_textured():
    """Synthetic surfaces are flat: neighbouring pixels of one class are nearly equal."""
    suite = TinyScenes()
    for domain, low, high in (("synthetic", 0.0, 0.01), ("real", 0.02, 1.0)):
        data = suite.load(domain, "test")
        same = data.labels[:, :, 1:] == data.labels[:, :, :-1]
        step = (data.images[:, :, :, 1:] - data.images[:, :, :, :-1]).abs().mean(1)[same]
        assert low <= step.median().item() <= high, domain


def test_disk_cache_is_reused_and_recovers_from_a_corrupt_file(tmp_path):
    fresh = TinyScenes().load("real", "test")
    cached = TinyScenes(root=tmp_path).load("real", "test")
    files = list((tmp_path / "scenes").glob("*.npz"))
    assert len(files) == 1 and torch.equal(cached.images, fresh.images)
    files[0].write_bytes(b"not an npz")
    again = TinyScenes(root=tmp_path).load("real", "test")
    assert torch.equal(again.labels, fresh.labels)
    assert np.load(files[0])["labels"].shape == (5, 32, 64)


def test_training_ignores_label_255():
    torch.manual_seed(0)
    suite = TinyScenes()
    data = copy.deepcopy(suite.load("synthetic", "train"))
    data.labels[:, : suite.height // 2] = IGNORE_INDEX  # unlabelled top half
    model = suite.build_model()
    info = train_source(model, data, suite.recipe, 0, Adapter(), torch.device("cpu"),
                        progress=False)
    assert np.isfinite(info["final_loss"])


@pytest.mark.parametrize("adapter_cls", [AdaBN, PredictionTimeBN, Tent])
def test_test_time_adapters_run_unchanged_on_segmentation(adapter_cls):
    torch.manual_seed(0)
    suite = TinyScenes()
    model = suite.build_model()
    bn_before = copy.deepcopy(model.backbone.bn1.state_dict())
    data = suite.load("real", "test")
    adapter = adapter_cls()
    adapter.attach(model)
    stream = TargetStream(data.images, batch_size=3)
    adapter.adapt(stream)
    metric = suite.make_metric()
    offset = 0
    for x in stream:
        logits = adapter.predict(x)
        assert logits.shape == (len(x), len(CLASSES), 32, 64) and torch.isfinite(logits).all()
        metric.update(logits, data.labels[offset : offset + len(x)])
        offset += len(x)
    assert 0 <= metric.result()["score"] <= 100
    bn_after = model.backbone.bn1.state_dict()
    if adapter_cls is AdaBN:  # target statistics replace the source ones
        assert not torch.allclose(bn_after["running_mean"], bn_before["running_mean"])
    if adapter_cls is Tent:  # per-pixel entropy gradients reach the BN affine parameters
        assert not torch.equal(bn_after["weight"], bn_before["weight"])
    adapter.reset()
    for key, value in bn_before.items():
        assert torch.equal(model.backbone.bn1.state_dict()[key], value)
