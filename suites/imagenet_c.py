"""ImageNet-C (Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common
Corruptions and Perturbations", ICLR 2019, arXiv:1903.12261) on the released files: the
field's main test-time adaptation benchmark.

Layout under ``--data-root`` (the release's folders, ImageFolder-style)::

    ImageNet-C/<corruption>/<severity>/<wnid>/*.JPEG    15 corruptions x 5 severities
    imagenet/val/<wnid>/*.JPEG                           clean validation (source column)

Classes are the 1000 wnids in sorted order, which is torchvision's ImageNet class index, so
``--source-model torchvision:resnet50.IMAGENET1K_V1`` predicts in the same index. Images
are decoded lazily, batch by batch, with the evaluation transform of Hendrycks & Dietterich
and of Tent (Wang et al., ICLR 2021): resize the shorter side to 256 (bilinear, antialiased),
centre-crop 224, [0, 1] floats; the model standardizes them itself.

The suite does not train a source model: give ``--source-model`` or ``--source-checkpoint``.
A target's train split is its test images (transductive, as the TTA literature evaluates).
The full suite is GPU work: 50,000 images per target, 3.75 M decoded images per adapter and
seed (``--device cuda``; batch 64 as in Tent). ``imagenet-c-5k`` evaluates the field's fixed
5,000-image subset instead.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, ClassVar

import torch

from benchmark.errors import DatasetNotFoundError
from benchmark.registry import SUITES
from benchmark.suite import DomainData, Recipe, Split, Suite
from suites.corruptions import CORRUPTIONS, SEVERITIES

RELEASE_URL = "https://zenodo.org/record/2235448"
SUBSET_FILE = "imagenet_test_image_ids.txt"  # "<wnid>/<file>.JPEG" per line
RESIZE, CROP = 256, 224


class JpegImages:
    """JPEG files served as float (N, 3, 224, 224) batches in [0, 1], decoded on indexing
    (the suite never holds a target in memory), indexed like a tensor."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.paths), 3, CROP, CROP)

    def __getitem__(self, index: Any) -> torch.Tensor:
        from PIL import Image
        from torchvision.transforms.v2 import functional as F

        positions = torch.arange(len(self.paths))[index].reshape(-1).tolist()
        batch = torch.empty((len(positions), 3, CROP, CROP))
        for i, position in enumerate(positions):
            with Image.open(self.paths[position]) as image:
                picture = F.pil_to_tensor(image.convert("RGB"))
            picture = F.center_crop(F.resize(picture, [RESIZE], antialias=True), [CROP, CROP])
            batch[i] = picture.float().div_(255)
        return batch


class ImageNetCBase(Suite):
    """The ImageNet-C suites' shared behaviour (not registered itself)."""

    source = "imagenet"
    targets = tuple(f"{c}-{s}" for c in CORRUPTIONS for s in SEVERITIES)
    num_classes = 1000
    # Not trained here (trains_source = False): the record names the model the suite expects.
    recipe = Recipe(arch="torchvision resnet50.IMAGENET1K_V1 (pretrained, not trained here)",
                    epochs=0, batch_size=64, lr=0.0)
    trains_source = False
    eval_batch_size = 64
    subset: ClassVar[bool] = False

    def __init__(self, root: str | Path | None = None, download: bool = False) -> None:
        super().__init__(root, download)
        self._files: dict[str, list[tuple[Path, int]]] = {}
        self._classes: list[str] | None = None

    def target_factors(self) -> dict[str, dict[str, Any]]:
        return {f"{c}-{s}": {"corruption": c, "severity": s}
                for c in CORRUPTIONS for s in SEVERITIES}

    # ---- finding the files -----------------------------------------------------------
    def _root(self) -> Path:
        if self.root is None:
            raise DatasetNotFoundError(
                f"suite {self.name!r} needs --data-root DIR holding ImageNet-C/ (from "
                f"{RELEASE_URL}) and imagenet/val/")
        return self.root

    def _folder(self, domain: str) -> Path:
        if domain == self.source:
            return self._root() / "imagenet" / "val"
        corruption, severity = domain.rsplit("-", 1)
        return self._root() / "ImageNet-C" / corruption / severity

    def classes(self, folder: Path) -> list[str]:
        """The wnids in sorted order (the class index); every domain's folder holds all."""
        wnids = sorted(p.name for p in folder.iterdir() if p.is_dir())
        if len(wnids) != self.num_classes:
            raise DatasetNotFoundError(
                f"{folder} has {len(wnids)} class folders; ImageNet-C has {self.num_classes} "
                "(one per wnid). " + self._missing(folder))
        if self._classes is None:
            self._classes = wnids
        elif wnids != self._classes:
            raise DatasetNotFoundError(f"{folder} holds other class folders than "
                                       f"{self._folder(self.targets[0])}")
        return wnids

    def _missing(self, folder: Path) -> str:
        return (f"expected {folder}/<wnid>/*.JPEG. ImageNet-C: download the release's tar "
                f"files from {RELEASE_URL} and extract them under {self._root() / 'ImageNet-C'}; "
                f"the clean validation images go under {self._root() / 'imagenet' / 'val'}, one "
                "folder per wnid (torchvision's ImageFolder layout)")

    def files(self, domain: str) -> list[tuple[Path, int]]:
        """(path, class) of every image of a domain, sorted by class then file name."""
        if domain not in self.domains:
            raise KeyError(f"suite {self.name!r} has no domain {domain!r}; has {self.domains}")
        if domain not in self._files:
            folder = self._folder(domain)
            if not folder.is_dir():
                raise DatasetNotFoundError(f"{domain}: {folder} not found. "
                                           + self._missing(folder))
            wanted = self._subset() if self.subset else None
            found = []
            for label, wnid in enumerate(self.classes(folder)):
                names = sorted(os.listdir(folder / wnid)) if (folder / wnid).is_dir() else []
                if wanted is not None:
                    names = [n for n in names if f"{wnid}/{n}" in wanted]
                found += [(folder / wnid / n, label) for n in names]
            if wanted is not None and len(found) != len(wanted):
                raise DatasetNotFoundError(
                    f"{domain}: {len(found)} of the subset's {len(wanted)} images are in "
                    f"{folder}. " + self._missing(folder))
            if not found:
                raise DatasetNotFoundError(f"{domain}: no images in {folder}. "
                                           + self._missing(folder))
            self._files[domain] = found
        return self._files[domain]

    def _subset(self) -> set[str]:
        raise NotImplementedError

    # ---- suite protocol ----------------------------------------------------------------
    def load(self, domain: str, split: Split) -> DomainData:
        if split not in ("train", "test"):
            raise KeyError(f"unknown split {split!r}; use 'train' or 'test'")
        files = self.files(domain)
        return DomainData(JpegImages([p for p, _ in files]),  # type: ignore[arg-type]
                          torch.tensor([label for _, label in files]))

    def split_fingerprint(self, domain: str, split: Split) -> str:
        """The file names and sizes of a domain (hashing 3.75 M JPEGs' bytes on every run
        would take longer than many evaluations) and the transform."""
        h = hashlib.sha256(f"resize {RESIZE} antialias, crop {CROP}, RGB /255\n".encode())
        for path, label in self.files(domain):
            h.update(f"{path.parent.name}/{path.name}:{path.stat().st_size}:{label}\n".encode())
        return h.hexdigest()

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            h = hashlib.sha256(self.name.encode())
            for domain in self.domains:
                h.update(f"{domain}:{self.split_fingerprint(domain, 'test')}\n".encode())
            self._fingerprint = h.hexdigest()
        return self._fingerprint


@SUITES.register("imagenet-c")
class ImageNetC(ImageNetCBase):
    """Real: ImageNet val -> ImageNet-C, 15 corruptions x 5 severities, 1000 classes (GPU).

    Needs --data-root and a pretrained source (--source-model); see the module docstring.
    """


@SUITES.register("imagenet-c-5k")
class ImageNetC5k(ImageNetCBase):
    """Real: ImageNet-C on the field's fixed 5,000-image subset (RobustBench's list).

    The subset is RobustBench's ``imagenet_test_image_ids.txt`` (Croce et al., NeurIPS 2021
    Datasets and Benchmarks, arXiv:2010.09670), read from an installed ``robustbench``
    package or from ``<data-root>/imagenet_test_image_ids.txt``; the same 5,000 validation
    files in every corruption and severity.
    """

    subset = True

    def _subset(self) -> set[str]:
        candidates = [self._root() / SUBSET_FILE]
        try:
            from importlib import metadata

            candidates.insert(0, Path(str(metadata.distribution("robustbench").locate_file(
                f"robustbench/helper_files/{SUBSET_FILE}"))))
        except Exception:  # robustbench not installed
            pass
        for path in candidates:
            if path.is_file():
                return {line.strip() for line in path.read_text().splitlines() if line.strip()}
        raise DatasetNotFoundError(
            f"the 5,000-image subset list {SUBSET_FILE} was not found: install robustbench "
            f"(it ships the list) or put the file at {candidates[-1]}")
