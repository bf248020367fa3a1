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


def script_contrast_jpeg(path, factor: float) -> bytes:
    """make_imagenet_c.py for one image, restated with PIL and NumPy: Resize(256) (PIL
    bilinear, shorter side 256, longer int(256 * long / short)), CenterCrop(224), contrast
    in float64, np.uint8 of clip(x, 0, 1) * 255, JPEG quality 85 (optimized)."""
    import io

    with Image.open(path) as image:
        image = image.convert("RGB")
        w, h = image.size
        size = (256, int(256 * h / w)) if w <= h else (int(256 * w / h), 256)
        image = image.resize(size, Image.BILINEAR)
        left, top = int(round((size[0] - 224) / 2)), int(round((size[1] - 224) / 2))
        x = np.asarray(image.crop((left, top, left + 224, top + 224))) / 255.0
    means = np.mean(x, axis=(0, 1), keepdims=True)
    out = np.uint8(np.clip((x - means) * factor + means, 0, 1) * 255)
    buffer = io.BytesIO()
    Image.fromarray(out).save(buffer, format="JPEG", quality=85, optimize=True)
    return buffer.getvalue()


def test_without_the_release_targets_are_generated_from_validation_images(tmp_path,
                                                                          monkeypatch):
    """ImageNet-C-generated/ in the release's layout, made from imagenet/val with the
    ImageNet-C constants and saved as the script saves; only the targets a run evaluates;
    kept apart from official data; reused on the next run."""
    from tiny_suite import TinyImageNetC

    from benchmark.errors import GeneratedDataWarning
    from suites.corruptions.digital import IMAGENET

    torchvision_cache(tmp_path, monkeypatch)
    write_release(tmp_path / "data", domains=("imagenet/val",))
    with pytest.warns(GeneratedDataWarning, match="not the official release"):
        summary = Runner(run_config(tmp_path, targets=["contrast-2"])).run()
    assert (summary.done, summary.failed) == (4, 0), summary.failures
    generated = tmp_path / "data" / "ImageNet-C-generated"
    assert sorted(p.name for p in generated.iterdir()) == ["contrast", "generator.json"]
    assert len([p for p in (generated / "contrast" / "2").iterdir() if p.is_dir()]) == 1000
    for k in USED:  # contrast is deterministic: the files equal the script's, byte for byte
        for source in sorted((tmp_path / "data" / "imagenet" / "val" / WNIDS[k]).iterdir()):
            made = generated / "contrast" / "2" / WNIDS[k] / source.name
            assert made.read_bytes() == script_contrast_jpeg(source, IMAGENET["contrast"][1])
    stamps = {p: p.stat().st_mtime_ns for p in generated.rglob("*.JPEG")}

    suite = TinyImageNetC(root=tmp_path / "data")
    with pytest.warns(GeneratedDataWarning):
        kind = suite.fingerprint()
    assert kind.startswith("generated:")
    data = suite.load("contrast-2", "test")  # reused: nothing is rewritten
    assert data.images[torch.arange(2)].shape == (2, 3, 224, 224)
    assert {p: p.stat().st_mtime_ns for p in generated.rglob("*.JPEG")} == stamps
    # the official release, once present, is used instead, under another fingerprint
    write_release(tmp_path / "data", domains=("ImageNet-C/gaussian_noise/5",
                                              "ImageNet-C/contrast/2"))
    official = TinyImageNetC(root=tmp_path / "data")
    assert official.fingerprint().startswith("official:")
    assert official.files("contrast-2")[0][0].is_relative_to(tmp_path / "data" / "ImageNet-C")


def test_imagenet_constants_reach_the_engine():
    """constants='imagenet' selects the ImageNet-C script's table: contrast at severity 3
    is (x - mean) * 0.2 + mean there (0.4 for CIFAR), and an unknown table is refused."""
    from suites.corruptions import corrupt

    x = torch.rand(2, 3, 16, 16).mul(255).round().div(255)
    means = x.double().mean((2, 3), keepdim=True)
    outputs = {}
    for constants, factor in (("imagenet", 0.2), ("cifar", 0.4)):
        expected = ((x.double() - means) * factor + means).clamp(0, 1).mul(255).floor()
        outputs[constants] = corrupt(x, "contrast", 3, 0, constants=constants).mul(255).round()
        # in grey levels; a level apart only where a value sits on a level (float rounding)
        assert (outputs[constants] - expected).abs().max() <= 1
        assert (outputs[constants] == expected).double().mean() > 0.99
    assert (outputs["imagenet"] - outputs["cifar"]).abs().mean() > 5
    with pytest.raises(ValueError, match="unknown constants"):
        corrupt(x, "contrast", 3, 0, constants="tiny")
