"""ImageNet-C (Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common
Corruptions and Perturbations", ICLR 2019, arXiv:1903.12261) on the released files: the
field's main test-time adaptation benchmark.

Layout under ``--data-root`` (the release's folders, ImageFolder-style)::

    ImageNet-C/<corruption>/<severity>/<wnid>/*.JPEG    15 corruptions x 5 severities
    imagenet/val/<wnid>/*.JPEG                           clean validation (source column)

Classes are the 1000 wnids in sorted order, which is torchvision's ImageNet class index, so
``--source-model torchvision:resnet50.IMAGENET1K_V1`` predicts in the same index. Images
are decoded lazily, batch by batch, with one transform for every domain: resize the shorter
side to 256 (bilinear, antialiased), centre-crop 224, [0, 1] floats; the model standardizes
them itself. That is RobustBench's ``load_imagenetc`` (``prepr="Res256Crop224"``, Croce et
al., arXiv:2010.09670); the release's files are already 224x224, so they are enlarged to
256 and cropped back, as RobustBench does (loaders that read the files as they are exist
too, and give somewhat different numbers).

Without ``ImageNet-C/`` the targets are generated from ``imagenet/val/`` (``--targets``
limits which): each validation image is resized (shorter side 256, PIL bilinear) and
centre-cropped to 224 as in ``make_imagenet_c.py``, corrupted by ``suites.corruptions`` with
the ImageNet-C constants (``constants="imagenet"``; the deterministic corruptions equal the
script's arithmetic, the random ones match it in distribution), cast to 8 bits and saved as
JPEG with quality 85, as the script saves them, into ``ImageNet-C-generated/`` (or
``ImageNet-C-5k-generated/``) in the release's layout. Such data is not the release: the
fingerprint starts with ``generated:`` instead of ``official:``, so its results never mix
with official ones. The engine's cost on one CPU core, measured with
``benchmarks/corruptions.py --imagenet`` while other jobs ran: 174 ms per 224x224 image for
the 15 corruptions at one severity (zoom blur 58% of it), so a few hundred validation images
give all 75 targets in minutes, the 5,000-image subset in about 1.2 h (plus JPEG decoding
and encoding), the full 50,000 in about half a day. Generation always runs on the CPU
(the suite does not know the run's device), once: later runs read the files.

The suite does not train a source model: give ``--source-model`` or ``--source-checkpoint``.
A target's train split is its test images (transductive, as the TTA literature evaluates).
The full suite is GPU work: 50,000 images per target, 3.75 M decoded images per adapter and
seed (``--device cuda``; batch 64 as in Tent). ``imagenet-c-5k`` evaluates the field's fixed
5,000-image subset instead.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any, ClassVar

import torch

from benchmark.errors import DatasetNotFoundError, GeneratedDataWarning
from benchmark.registry import SUITES
from benchmark.store import atomic_write_bytes
from benchmark.suite import DomainData, Recipe, Split, Suite
from suites._cache import engine_identity, generated_entries, record_generated
from suites.corruptions import CORRUPTIONS, SEVERITIES, corrupt

RELEASE_URL = "https://zenodo.org/record/2235448"
SUBSET_FILE = "imagenet_test_image_ids.txt"  # "<wnid>/<file>.JPEG" per line
RESIZE, CROP = 256, 224
SAVED_QUALITY = 85  # make_imagenet_c.py saves every corrupted image as JPEG, quality 85


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
    generated_folder: ClassVar[str] = "ImageNet-C-generated"
    generation_chunk: ClassVar[int] = 32  # images per engine call (part of the data key)

    def __init__(self, root: str | Path | None = None, download: bool = False) -> None:
        super().__init__(root, download)
        self._files: dict[str, list[tuple[Path, int]]] = {}
        self._classes: list[str] | None = None
        self._kind: str | None = None  # "official" or "generated", decided on first use
        self._generator_key: dict[str, Any] | None = None

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
        top = "ImageNet-C" if self.data_kind == "official" else self.generated_folder
        return self._root() / top / corruption / severity

    @property
    def data_kind(self) -> str:
        """``official`` (the release's files) or ``generated`` (from the validation images)."""
        if self._kind is None:
            official = self._root() / "ImageNet-C"
            val = self._root() / "imagenet" / "val"
            if official.is_dir():
                self._kind = "official"
            elif not val.is_dir():
                raise DatasetNotFoundError(
                    f"{official} not found, nor {val} to generate it from. "
                    + self._missing(official / "<corruption>" / "<severity>"))
            else:
                warnings.warn(
                    f"{official} not found: generating the corruptions of {val} with "
                    f"suites.corruptions (ImageNet-C constants) into "
                    f"{self._root() / self.generated_folder} (not the official release; "
                    f"results are kept apart). For the release: download it from "
                    f"{RELEASE_URL}", GeneratedDataWarning, stacklevel=2)
                self._kind = "generated"
        return self._kind

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
            if domain != self.source and self.data_kind == "generated":
                self._ensure_generated(domain)
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

    # ---- generated targets -------------------------------------------------------------
    def generator_key(self) -> dict[str, Any]:
        """Everything generated data depends on; stored beside it, compared on every use.
        Computed once per suite object (it reads the size of every validation file)."""
        if self._generator_key is None:
            self._generator_key = self._make_generator_key()
        return self._generator_key

    def _make_generator_key(self) -> dict[str, Any]:
        import PIL

        return {"engine": engine_identity(), "constants": "imagenet",
                "saved_quality": SAVED_QUALITY, "pillow": PIL.__version__,
                "chunk": self.generation_chunk,
                "validation": self.split_fingerprint(self.source, "test"),
                "seeds": "(70000 + 100 * corruption + 10 * severity) * 1000 + chunk"}

    def _ensure_generated(self, domain: str) -> None:
        """Write one target's images unless the manifest lists it under the current key (a
        changed key regenerates every target; an interrupted target is redone)."""
        top = self._root() / self.generated_folder
        manifest_path = top / "generator.json"
        key = self.generator_key()
        done = generated_entries(manifest_path, key, "done")
        if domain in done:
            return
        corruption, severity = domain.rsplit("-", 1)
        folder = top / corruption / severity
        sources = self.files(self.source)
        print(f"generating {self.generated_folder}/{corruption}/{severity} "
              f"({len(sources)} images)", file=sys.stderr, flush=True)
        for wnid in self.classes(self._folder(self.source)):
            (folder / wnid).mkdir(parents=True, exist_ok=True)
        base = 70_000 + 100 * CORRUPTIONS.index(corruption) + 10 * int(severity)
        for start in range(0, len(sources), self.generation_chunk):
            chunk = sources[start:start + self.generation_chunk]
            batch = torch.stack([script_crop(path) for path, _ in chunk])
            seed = base * 1000 + start // self.generation_chunk
            out = corrupt(batch.float().div(255), corruption, int(severity), seed,
                          constants="imagenet")
            pixels = out.mul(255).round_().to(torch.uint8).permute(0, 2, 3, 1).numpy()
            for (path, _), image in zip(chunk, pixels, strict=True):
                atomic_write_bytes(folder / path.parent.name / path.name, jpeg_bytes(image))
        record_generated(manifest_path, key, "done", done, domain)

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
        """``official:<sha256>`` over every domain's file list, or ``generated:<sha256>`` over
        the generator key (which covers the validation files): computing it never
        generates data."""
        if self._fingerprint is None:
            h = hashlib.sha256(self.name.encode())
            if self.data_kind == "generated":
                h.update(json.dumps(self.generator_key(), sort_keys=True).encode())
            else:
                for domain in self.domains:
                    h.update(f"{domain}:{self.split_fingerprint(domain, 'test')}\n".encode())
            self._fingerprint = f"{self.data_kind}:{h.hexdigest()}"
        return self._fingerprint


def script_crop(path: Path) -> torch.Tensor:
    """make_imagenet_c.py's input: the image as RGB, shorter side resized to 256 by PIL's
    bilinear filter (torchvision's Resize on a PIL image), centre-cropped to 224; uint8
    (3, 224, 224)."""
    from PIL import Image
    from torchvision.transforms.v2 import functional as F

    with Image.open(path) as image:
        picture = F.center_crop(F.resize(image.convert("RGB"), [RESIZE]), [CROP, CROP])
        return F.pil_to_tensor(picture)


def jpeg_bytes(image: Any) -> bytes:
    """An (H, W, 3) uint8 array saved as the script saves it (quality 85, optimized)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=SAVED_QUALITY, optimize=True)
    return buffer.getvalue()


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
    generated_folder = "ImageNet-C-5k-generated"

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
