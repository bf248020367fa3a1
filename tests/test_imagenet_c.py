"""The imagenet-c suites on a tiny fixture in the release's layout (ImageNet-C/<corruption>/
<severity>/<wnid>/*.JPEG, imagenet/val/<wnid>/*.JPEG), scored with a pretrained model given
by --source-model (a small random torchvision model in torch hub's cache)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from test_source_models import TV_NAME, torchvision_cache

from benchmark.engine.runner import RunConfig, Runner
from benchmark.errors import DatasetNotFoundError, ShiftbenchError
from benchmark.specs import AdapterSpec
from suites.imagenet_c import ImageNetC5k

WNIDS = [f"n{i:08d}" for i in range(1000)]
USED = (3, 500, 999)  # classes with images


def write_release(root, domains=("imagenet/val", "ImageNet-C/gaussian_noise/5",
                                  "ImageNet-C/contrast/2")) -> None:
    rng = np.random.default_rng(0)
    for domain in domains:
        folder = root / domain
        for wnid in WNIDS:  # every class folder exists, as in the release
            (folder / wnid).mkdir(parents=True)
        for k in USED:
            for j in range(2):
                pixels = rng.integers(0, 256, (40 + 10 * j, 60, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / WNIDS[k] / f"ILSVRC2012_val_{k:05d}{j}.JPEG")


def expected_accuracy(model, folder) -> float:
    """Decode, resize the shorter side to 256, centre-crop 224, standardize, classify."""
    import torchvision
    from torchvision.transforms.v2 import functional as F

    weights = torchvision.models.get_model_weights("mobilenet_v3_small")["IMAGENET1K_V1"]
    mean = torch.tensor(weights.transforms().mean).view(1, 3, 1, 1)
    std = torch.tensor(weights.transforms().std).view(1, 3, 1, 1)
    images, labels = [], []
    for k in USED:
        for path in sorted((folder / WNIDS[k]).iterdir()):
            picture = F.pil_to_tensor(Image.open(path).convert("RGB"))
            picture = F.center_crop(F.resize(picture, [256], antialias=True), [224, 224])
            images.append(picture.float() / 255)
            labels.append(k)
    with torch.no_grad():
        logits = model((torch.stack(images) - mean) / std)
    return 100.0 * (logits.argmax(1) == torch.tensor(labels)).float().mean().item()


def run_config(tmp_path, **kwargs) -> RunConfig:
    defaults = dict(suite="tiny-imagenet-c", adapters=[AdapterSpec("source"),
                                                       AdapterSpec("tent")],
                    seeds=[0], results=tmp_path / "R", leaderboards=tmp_path / "L",
                    data_root=tmp_path / "data", progress=False,
                    source_model=f"torchvision:{TV_NAME}")
    return RunConfig(**{**defaults, **kwargs})


def test_imagenet_c_layout_runs_end_to_end_with_the_wnid_class_index(tmp_path, monkeypatch):
    model, _ = torchvision_cache(tmp_path, monkeypatch)
    write_release(tmp_path / "data")
    summary = Runner(run_config(tmp_path)).run()
    assert (summary.done, summary.failed) == (6, 0), summary.failures
    cells = (tmp_path / "L" / "tiny-imagenet-c-cells.csv").read_text()
    board = summary.board.set_index("adapter")
    expected = expected_accuracy(model, tmp_path / "data" / "ImageNet-C" / "gaussian_noise"
                                 / "5")
    import pandas as pd

    frame = pd.read_csv(tmp_path / "L" / "tiny-imagenet-c-cells.csv")
    source = frame[(frame.adapter == "source") & (frame.domain == "gaussian_noise-5")]
    assert source.score.iloc[0] == pytest.approx(expected, abs=0.01)
    assert "mean_error" in board.columns  # corruption columns: the targets are a grid
    assert "imagenet" in cells and "n_examples" in cells
    # the class index is the wnid's place among the 1000 sorted wnids, and images go through
    # the evaluation transform (checked without a model: the score above may be low)
    from tiny_suite import TinyImageNetC

    data = TinyImageNetC(root=tmp_path / "data").load("gaussian_noise-5", "test")
    assert data.labels.tolist() == [k for k in USED for _ in range(2)]
    first = tmp_path / "data" / "ImageNet-C" / "gaussian_noise" / "5" / WNIDS[3]
    path = sorted(first.iterdir())[0]
    from torchvision.transforms.v2 import functional as F

    picture = F.pil_to_tensor(Image.open(path).convert("RGB"))
    picture = F.center_crop(F.resize(picture, [256], antialias=True), [224, 224])
    assert torch.equal(data.images[torch.tensor([0])][0], picture.float() / 255)


def test_imagenet_c_needs_a_pretrained_source_and_its_files(tmp_path, monkeypatch):
    torchvision_cache(tmp_path, monkeypatch)
    with pytest.raises(ShiftbenchError, match="does not train its source model"):
        Runner(run_config(tmp_path, source_model=None))
    with pytest.raises(DatasetNotFoundError, match="zenodo"):
        Runner(run_config(tmp_path)).run()


def test_the_5k_subset_reads_only_the_listed_files(tmp_path):
    write_release(tmp_path, domains=("ImageNet-C/gaussian_noise/5",))
    listed = [f"{WNIDS[3]}/ILSVRC2012_val_000031.JPEG", f"{WNIDS[999]}/ILSVRC2012_val_009990.JPEG"]
    suite = ImageNetC5k(root=tmp_path)
    try:
        import robustbench  # noqa: F401
        pytest.skip("an installed robustbench's own list takes precedence")
    except ImportError:
        pass
    with pytest.raises(DatasetNotFoundError, match="imagenet_test_image_ids.txt"):
        suite.load("gaussian_noise-5", "test")
    (tmp_path / "imagenet_test_image_ids.txt").write_text("\n".join(listed) + "\n")
    data = ImageNetC5k(root=tmp_path).load("gaussian_noise-5", "test")
    assert data.labels.tolist() == [3, 999]
    assert data.images[torch.arange(2)].shape == (2, 3, 224, 224)
