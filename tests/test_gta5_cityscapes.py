"""GTA5 -> Cityscapes loaders on tiny fixture trees in the real file layouts."""

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from benchmark.engine.runner import RunConfig, Runner
from benchmark.errors import DatasetNotFoundError
from benchmark.metrics import IGNORE_INDEX
from benchmark.registry import SUITES
from benchmark.specs import AdapterSpec
from benchmark.suite import Recipe
from suites.gta5_cityscapes import GTA5Cityscapes
from suites.segmentation import CLASS_NAMES, NUM_CLASSES, to_train_ids

# label id -> trainId, a few of each kind: evaluated classes and ignored ones.
ID_CASES = {7: 0, 8: 1, 11: 2, 23: 10, 26: 13, 33: 18, 0: 255, 4: 255, 9: 255, 29: 255, 34: 255}


class TinyGTA5Cityscapes(GTA5Cityscapes):
    """The real suite with fixture-sized evaluation and training sizes."""

    gta5_size = (8, 12)
    cityscapes_size = (6, 10)
    crop_size = 6
    gta5_test_every = 2


def label_ids(h, w, seed):
    ids = np.array(list(ID_CASES), dtype=np.uint8)
    return np.random.default_rng(seed).choice(ids, size=(h, w))


def save_palette_label(path, ids):
    """GTA5 style: a palette PNG whose indices are the label ids."""
    img = Image.fromarray(ids, mode="P")
    img.putpalette(list(np.random.default_rng(0).integers(0, 256, 768)))
    img.save(path)


def make_tree(root, gta_sizes=((8, 12), (8, 12), (9, 13), (8, 12))):
    gta = root / "gta5"
    (gta / "images").mkdir(parents=True)
    (gta / "labels").mkdir()
    for i, (h, w) in enumerate(gta_sizes):
        Image.fromarray(np.full((h, w, 3), 10 * i, np.uint8)).save(gta / "images" / f"{i:05d}.png")
        save_palette_label(gta / "labels" / f"{i:05d}.png", label_ids(h, w, i))
    for split, cities in (("train", ("aachen",)), ("val", ("frankfurt", "lindau"))):
        for city in cities:
            img_dir = root / "cityscapes" / "leftImg8bit" / split / city
            gt_dir = root / "cityscapes" / "gtFine" / split / city
            img_dir.mkdir(parents=True)
            gt_dir.mkdir(parents=True)
            for k in range(2):
                stem = f"{city}_{k:06d}_000019"
                Image.fromarray(np.full((6, 10, 3), 200, np.uint8)).save(
                    img_dir / f"{stem}_leftImg8bit.png")
                Image.fromarray(label_ids(6, 10, 100 + k), mode="L").save(
                    gt_dir / f"{stem}_gtFine_labelIds.png")
                # Files the loader must not mistake for labels.
                Image.fromarray(np.zeros((6, 10), np.uint8), mode="L").save(
                    gt_dir / f"{stem}_gtFine_instanceIds.png")
    return root


def test_label_table_maps_ids_to_train_ids_and_everything_else_to_ignore():
    ids = np.array(list(ID_CASES) + [255, 200], dtype=np.int64)
    assert to_train_ids(ids).tolist() == list(ID_CASES.values()) + [255, 255]
    assert len(CLASS_NAMES) == NUM_CLASSES == 19
    assert CLASS_NAMES[0] == "road" and CLASS_NAMES[13] == "car" and CLASS_NAMES[18] == "bicycle"


def test_cityscapes_val_is_the_target_test_split_with_mapped_labels(tmp_path):
    suite = TinyGTA5Cityscapes(root=make_tree(tmp_path))
    data = suite.load("cityscapes", "test")
    assert len(data) == 4  # 2 cities x 2 images of val
    images, labels = data.images[torch.arange(4)], data.labels[0:4]
    assert images.shape == (4, 3, 6, 10) and images.dtype == torch.float32
    assert torch.allclose(images, torch.full_like(images, 200 / 255))
    assert labels.dtype == torch.int64
    expected = torch.from_numpy(to_train_ids(label_ids(6, 10, 100))).long()
    assert torch.equal(labels[0], expected)
    assert set(labels.unique().tolist()) <= set(range(19)) | {IGNORE_INDEX}
    assert (labels == IGNORE_INDEX).any()
    assert len(suite.load("cityscapes", "train")) == 2


def test_gta5_palette_labels_read_as_ids_and_split_held_out(tmp_path):
    suite = TinyGTA5Cityscapes(root=make_tree(tmp_path))
    test = suite.load("gta5", "test")  # every 2nd frame: 00000 and 00002
    assert [p[0].name for p in suite.pairs("gta5", "test")] == ["00000.png", "00002.png"]
    assert [p[0].name for p in suite.pairs("gta5", "train")] == ["00001.png", "00003.png"]
    labels = test.labels[0:2]
    assert torch.equal(labels[0], torch.from_numpy(to_train_ids(label_ids(8, 12, 0))).long())
    # A frame of another size is resized to the evaluation size (labels: nearest).
    assert labels.shape == (2, 8, 12)
    assert set(labels[1].unique().tolist()) <= set(ID_CASES.values())


def test_gta5_training_samples_are_random_crops_with_matching_labels(tmp_path):
    suite = TinyGTA5Cityscapes(root=make_tree(tmp_path))
    train = suite.load("gta5", "train")
    index = torch.tensor([1, 0])
    images, labels = train.images[index], train.labels[index]
    assert images.shape == (2, 3, 6, 6) and labels.shape == (2, 6, 6)
    # Frame 00003 is a flat grey 30/255 (or 0 where padded), so pixels and labels pair up.
    assert torch.isclose(images[0], torch.tensor(30 / 255)).any()
    padded = (images[0] == 0).all(0)
    assert (labels[0][padded] == IGNORE_INDEX).all()
    # Same draws on every fresh load: training is reproducible.
    again = suite.load("gta5", "train")
    assert torch.equal(again.images[index], images) and torch.equal(again.labels[index], labels)


def test_missing_data_names_the_paths_and_where_to_get_them(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="--data-root"):
        TinyGTA5Cityscapes(root=None).load("gta5", "test")
    make_tree(tmp_path)
    for folder in (tmp_path / "cityscapes" / "gtFine" / "val").iterdir():
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()
    (tmp_path / "cityscapes" / "gtFine" / "val").rmdir()
    with pytest.raises(DatasetNotFoundError,
                       match=r"gtFine.val.*gtFine_trainvaltest\.zip.*cityscapes-dataset\.com"):
        TinyGTA5Cityscapes(root=tmp_path).load("cityscapes", "test")
    (tmp_path / "gta5" / "labels" / "00002.png").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"00002\.png.*from_games"):
        TinyGTA5Cityscapes(root=tmp_path).load("gta5", "train")


def test_fingerprint_changes_when_a_file_changes(tmp_path):
    make_tree(tmp_path)
    before = TinyGTA5Cityscapes(root=tmp_path).fingerprint()
    assert TinyGTA5Cityscapes(root=tmp_path).fingerprint() == before
    Image.fromarray(np.zeros((9, 12, 3), np.uint8)).save(tmp_path / "gta5" / "images" / "00001.png")
    assert TinyGTA5Cityscapes(root=tmp_path).fingerprint() != before


class RunnableTinyGTA5Cityscapes(TinyGTA5Cityscapes):
    """Fixture-sized, with the CPU segmentation model so the runner trains it in seconds."""

    recipe = Recipe(arch="small_segnet", epochs=1, batch_size=2, lr=0.01)


def test_runner_trains_and_scores_the_real_loaders_unchanged(tmp_path):
    SUITES.register("tiny-gta5-cityscapes")(RunnableTinyGTA5Cityscapes)
    make_tree(tmp_path / "data")
    config = RunConfig(suite="tiny-gta5-cityscapes", adapters=[AdapterSpec("source"),
                                                              AdapterSpec("adabn")],
                       seeds=[0], results=tmp_path / "R", leaderboards=tmp_path / "L",
                       data_root=tmp_path / "data", progress=False)
    summary = Runner(config).run()
    assert (summary.done, summary.failed) == (4, 0), summary.failures
    cells = pd.read_csv(tmp_path / "L" / "tiny-gta5-cityscapes-cells.csv")
    assert set(cells.metric) == {"miou"}
    assert {f"iou/{name}" for name in CLASS_NAMES} <= set(cells.columns)
    assert (cells.n_examples == cells.domain.map({"gta5": 2, "cityscapes": 4})).all()


def test_label_table_and_colours_equal_the_official_cityscapes_definitions():
    """Against cityscapesScripts (the dataset authors' package, dev extra): every label id's
    trainId and name, the 19 evaluated classes in trainId order, and their colours."""
    labels = pytest.importorskip("cityscapesscripts.helpers.labels").labels
    from suites.segmentation import (
        CITYSCAPES_LABELS,
        CLASS_NAMES,
        TRAIN_ID_COLORS,
        id_to_train_id_lut,
    )

    lut = id_to_train_id_lut()
    official = {label.id: label for label in labels if label.id >= 0}
    assert {i for i, _, _ in CITYSCAPES_LABELS} == set(official)
    for label_id, name, train_id in CITYSCAPES_LABELS:
        expected = official[label_id].trainId
        expected = 255 if expected in (-1, 255) else expected
        assert (name, train_id, int(lut[label_id])) == (official[label_id].name, expected,
                                                        expected)
    evaluated = sorted((label for label in labels if 0 <= label.trainId < 255),
                       key=lambda label: label.trainId)
    assert CLASS_NAMES == tuple(label.name for label in evaluated)
    assert TRAIN_ID_COLORS == tuple(tuple(label.color) for label in evaluated)
