"""MNIST -> SVHN on the real datasets, and the shared machinery of the real digit suites.

Each domain is read from one of these sources, the first one present winning:

1. the released files in torchvision's layout under ``--data-root`` (md5-verified);
2. a Hugging Face copy under the data root, ``<root>/<name>-hf``: a ``save_to_disk``
   directory, or a folder of parquet files (``train*.parquet``/``test*.parquet``, as a hub
   repo lays them out);
3. the Hugging Face hub cache (offline, no download), e.g. after
   ``huggingface-cli download ylecun/mnist --repo-type dataset``.

With ``--download`` and none of them present, the released files are fetched from the
mirrors torchvision uses. The source chosen for each domain is part of the data fingerprint
(``mnist=files;svhn=hf-hub;sha256=...``), which every cell and the cells CSV record.

A target's train split may be absent as a whole: test-time adapters read only the targets'
test files; a domain-adaptation adapter that needs the unlabeled target train split gets a
failed cell naming the missing file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from benchmark.errors import DatasetNotFoundError
from benchmark.registry import SUITES
from benchmark.suite import DomainData, Recipe, Split, Suite
from suites._digit_files import (
    MNIST,
    SVHN,
    CorruptFileError,
    HubCopy,
    Release,
    download_release,
    find_hf_copy,
    manual_steps,
    parse_idx,
    read_bytes,
    read_hf_split,
    read_svhn_mat,
    stored_path,
    verify,
)

# The source training of SHOT's digit experiments (Liang, Hu & Feng, ICML 2020,
# arXiv:2002.08546, and its official code): SGD with Nesterov momentum 0.9, lr 0.01 annealed
# as lr (1 + 10 p)^-0.75 over training progress p, weight decay 1e-3, batch 64, 30 epochs,
# cross-entropy with label smoothing 0.1, no augmentation of MNIST. SHOT keeps the best of
# ten checkpoints by source test accuracy; we keep the last (no selection on test labels).
SHOT_RECIPE = Recipe(arch="lenet", epochs=30, batch_size=64, lr=0.01, momentum=0.9,
                     weight_decay=1e-3, schedule="inv", label_smoothing=0.1)

# (images (N, C, H, W) uint8 or float in [0, 1], labels 0-9) of one split from its files.
Reader = Callable[[dict[str, Path], Split], tuple[np.ndarray, np.ndarray]]


def read_mnist(paths: dict[str, Path], split: Split) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    image_path = paths[f"{prefix}-images-idx3-ubyte"]
    label_path = paths[f"{prefix}-labels-idx1-ubyte"]
    images = parse_idx(read_bytes(image_path), image_path, 3)
    labels = parse_idx(read_bytes(label_path), label_path, 1).astype(np.int64)
    if len(images) != len(labels):
        raise CorruptFileError(f"{image_path} holds {len(images)} images but {label_path} "
                               f"{len(labels)} labels; download both again")
    return images[:, None], labels


def read_svhn(paths: dict[str, Path], split: Split) -> tuple[np.ndarray, np.ndarray]:
    return read_svhn_mat(paths[f"{split}_32x32.mat"])


@dataclass(frozen=True)
class DigitDomain:
    """How one domain is read: its release (files, checksums, mirrors), its reader, the
    Hugging Face copy that may stand in for it, and the PIL mode of the HF images."""

    release: Release
    read: Reader
    hub: HubCopy | None = None
    hf_mode: str = "L"


MNIST_DOMAIN = DigitDomain(MNIST, read_mnist, HubCopy("mnist-hf", "ylecun/mnist", "mnist"), "L")
# HF's SVHN copy is the "cropped_digits" configuration (32x32, same digits as the .mat files).
SVHN_DOMAIN = DigitDomain(SVHN, read_svhn,
                          HubCopy("svhn-hf", "ufldl-stanford/svhn", "cropped_digits"), "RGB")


class Uint8Images:
    """Images held as uint8 (N, C, H, W) and served as float32 in [0, 1] with 3 channels,
    indexed like a tensor: 60,000 MNIST digits take 61 MB instead of 737 MB as floats."""

    def __init__(self, data: torch.Tensor) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.data), 3, *self.data.shape[2:])

    def __getitem__(self, index) -> torch.Tensor:
        batch = self.data[index].float().div_(255)
        return batch.repeat(1, 3, 1, 1) if batch.shape[1] == 1 else batch


def to_uint8_size(images: np.ndarray, size: int) -> torch.Tensor:
    """(N, C, H, W) uint8 or [0, 1] floats -> (N, C, size, size) uint8: bilinear resize
    (align_corners=False) when the size differs, rounded to 8 bits, in chunks to bound memory."""
    out = torch.empty((len(images), images.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, len(images), 8192):
        chunk = torch.from_numpy(np.array(images[start : start + 8192]))  # a writable copy
        x = chunk.float() / 255 if chunk.dtype == torch.uint8 else chunk.float()
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        out[start : start + len(x)] = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    return out


@dataclass
class Resolved:
    """Where one domain's data comes from: kind (``files``, ``hf-disk``, ``hf-parquet``,
    ``hf-hub``), the path, and for files their verified md5 sums."""

    kind: str
    path: Path
    files: dict[str, Path] = dataclasses.field(default_factory=dict)
    md5: dict[str, str] = dataclasses.field(default_factory=dict)


class RealDigits(Suite):
    """Shared behaviour of the real digit suites (not registered itself)."""

    num_classes = 10
    size = 32
    eval_batch_size = 128
    domain_specs: ClassVar[dict[str, DigitDomain]] = {}
    hub_cache: ClassVar[Path | None] = None  # None: huggingface_hub's default cache

    def __init__(self, root: str | Path | None = None, download: bool = False) -> None:
        super().__init__(root, download)
        self._resolved: dict[str, Resolved] = {}
        self._splits: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}
        self._hf_digests: dict[tuple[str, str], str] = {}

    # ---- finding the data --------------------------------------------------------------
    def resolve(self, domain: str) -> Resolved:
        """Pick the domain's source (see the module docstring for the order), verifying
        released files; raise one DatasetNotFoundError naming what is missing and the fixes."""
        if domain not in self.domain_specs or domain not in self.domains:
            raise KeyError(f"suite {self.name!r} has no domain {domain!r}; has {self.domains}")
        if domain not in self._resolved:
            self._resolved[domain] = self._find(domain)
        return self._resolved[domain]

    def _find(self, domain: str) -> Resolved:
        spec = self.domain_specs[domain]
        release, root = spec.release, self.root
        names = release.all_files()
        hf_copy = None
        if root is not None:
            present = {n: stored_path(root, release, n) for n in names}
            missing = [n for n, p in present.items() if p is None]
            # A split may be absent as a whole (a test-time run needs no target train
            # files; loading it then names them), but not in part.
            partial = [n for split in release.files.values()
                       if any(present[f] is not None for f in split)
                       for n in split if present[n] is None]
            if partial and not self.download:
                raise DatasetNotFoundError(
                    f"{release.name} is incomplete in {root / release.folder}: missing "
                    f"{', '.join(dict.fromkeys(partial))}.\n" + self._how_to_get(domain)
                )
            if len(missing) == len(names) and spec.hub is not None:
                # No released file at all: a Hugging Face copy comes before --download.
                hf_copy = find_hf_copy(root, spec.hub, self.hub_cache, ("train", "test"))
            if hf_copy is None and (len(missing) < len(names) or self.download):
                if missing and self.download:
                    download_release(root, release, missing)  # raises if a file stays missing
                    present = {n: stored_path(root, release, n) for n in names}
                files = {n: p for n, p in present.items() if p is not None}
                md5 = {n: verify(p, release.md5.get(n)) for n, p in files.items()}
                return Resolved("files", root / release.folder, files, md5)
        elif spec.hub is not None:
            hf_copy = find_hf_copy(None, spec.hub, self.hub_cache, ("train", "test"))
        if hf_copy is not None:
            return Resolved(*hf_copy)
        if root is None and self.download:
            raise DatasetNotFoundError(f"--download needs --data-root DIR: the folder to put "
                                       f"{release.name} in (as {Path('DIR') / release.folder})")
        raise DatasetNotFoundError(f"{release.name} not found (suite {self.name!r}, domain "
                                   f"{domain!r}).\n" + self._how_to_get(domain))

    def _how_to_get(self, domain: str) -> str:
        spec = self.domain_specs[domain]
        release = spec.release
        root = self.root if self.root is not None else Path("DIR")
        folder = root / release.folder
        expected = "\n".join(
            f"  {folder / n}" + ("[.gz]" if release.gz_ok else "") for n in release.all_files()
        )
        lines = [f"Expected files:\n{expected}", "Get them with one of:"]
        if self.root is None:
            lines.append("  - pass --data-root DIR (the folder holding them)")
        if release.mirrors:
            lines.append(f"  - add --download to fetch them into {folder} (from "
                         f"{', '.join(release.mirrors)})")
        lines.append("  - " + manual_steps(root, release).replace("\n", "\n    "))
        if spec.hub is not None:
            lines.append(
                f"  - a Hugging Face copy: {root / spec.hub.folder} (datasets' save_to_disk, or "
                f"its train/test parquet files), or the hub cache of {spec.hub.repo} "
                f"(huggingface-cli download {spec.hub.repo} --repo-type dataset)"
            )
        return "\n".join(lines)

    # ---- reading -------------------------------------------------------------------------
    def _arrays(self, domain: str, split: Split) -> tuple[torch.Tensor, torch.Tensor]:
        if split not in ("train", "test"):
            raise KeyError(f"unknown split {split!r}; use 'train' or 'test'")
        if (domain, split) not in self._splits:
            spec = self.domain_specs[domain]
            found = self.resolve(domain)
            absent = [n for n in spec.release.files[split] if n not in found.files]
            if found.kind == "files" and absent:
                raise DatasetNotFoundError(
                    f"{domain} {split} split of suite {self.name!r}: {', '.join(absent)} not "
                    f"in {found.path}.\n" + self._how_to_get(domain))
            if found.kind == "files":
                images, labels = spec.read(found.files, split)
            else:
                assert spec.hub is not None
                hwc, labels, digest = read_hf_split(found.kind, found.path, split, spec.hub,
                                                    spec.hf_mode)
                self._hf_digests[(domain, split)] = digest
                images = hwc.transpose(0, 3, 1, 2)
                labels = labels % 10 if domain == "svhn" else labels  # SVHN's "10" is 0
            if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise CorruptFileError(f"labels of {domain}/{split} from {found.path} are "
                                       f"outside 0-9 ({labels.min()}..{labels.max()})")
            self._splits[(domain, split)] = (to_uint8_size(images, self.size),
                                             torch.from_numpy(labels.astype(np.int64)))
        return self._splits[(domain, split)]

    def load(self, domain: str, split: Split) -> DomainData:
        self.resolve(domain)
        images, labels = self._arrays(domain, split)
        return DomainData(Uint8Images(images), labels)  # type: ignore[arg-type]

    # ---- identity ---------------------------------------------------------------------------
    def preprocessing(self) -> dict[str, object]:
        return {"size": self.size, "resize": "bilinear, align_corners=False",
                "storage": "uint8 (round)", "gray": "replicated to 3 channels",
                "svhn_label_10": 0}

    def _content_ids(self, domain: str, splits: tuple[str, ...]) -> dict[str, str]:
        """Identity of a domain's data without hashing decoded images: the verified md5 of
        each file (files), or the sha256 of the image bytes and labels (Hugging Face)."""
        found = self.resolve(domain)
        if found.kind == "files":
            wanted = {n for s in splits for n in self.domain_specs[domain].release.files[s]}
            return {n: m for n, m in found.md5.items() if n in wanted}
        for split in splits:
            self._arrays(domain, split)  # type: ignore[arg-type]
        return {s: self._hf_digests[(domain, s)] for s in splits}

    def split_fingerprint(self, domain: str, split: Split) -> str:
        ids = {"content": self._content_ids(domain, (split,)),
               "preprocessing": self.preprocessing()}
        return hashlib.sha256(json.dumps(ids, sort_keys=True).encode()).hexdigest()

    def source_fingerprint(self) -> str:
        """The source training split's identity (its files' md5 sums, or its HF content hash)
        and the preprocessing: mnist-svhn and mnist-usps share MNIST source checkpoints."""
        if self._source_fingerprint is None:
            found = self.resolve(self.source)
            ids = {"kind": found.kind, "content": self._content_ids(self.source, ("train",)),
                   "preprocessing": self.preprocessing()}
            digest = hashlib.sha256(json.dumps(ids, sort_keys=True).encode()).hexdigest()
            self._source_fingerprint = f"{self.source}:{found.kind}:{digest}"
        return self._source_fingerprint

    def fingerprint(self) -> str:
        """``<domain>=<source>;...;sha256=<hash>``: which source each domain came from, then
        a hash of the *test* splits' verified md5 sums (or, for Hugging Face copies, of the
        image bytes and labels) and the preprocessing. Hashing the decoded splits, as the base
        class does, would take seconds for 60,000 + 100,000 images on every run.

        Train splits are not part of it: the source's enters every checkpoint's identity
        (``source_fingerprint``), a target's enters the identity of the ``da`` models trained
        with it (``split_fingerprint``). So a test-time run needs only the targets' test files,
        and adding a target's train file later does not invalidate its cells."""
        if self._fingerprint is None:
            h = hashlib.sha256(self.name.encode())
            h.update(json.dumps(self.preprocessing(), sort_keys=True).encode())
            kinds = []
            for domain in self.domains:
                kinds.append(f"{domain}={self.resolve(domain).kind}")
                ids = self._content_ids(domain, ("test",))
                h.update(json.dumps({domain: ids}, sort_keys=True).encode())
            self._fingerprint = ";".join(kinds) + ";sha256=" + h.hexdigest()
        return self._fingerprint


@SUITES.register("mnist-svhn")
class MnistSvhn(RealDigits):
    """Real: MNIST -> SVHN test (26,032), 32x32 RGB (needs --data-root, --download or HF copy).

    MNIST has 60,000 train / 10,000 test digits, SVHN 73,257 train / 26,032 test.

    Layout under ``--data-root`` (torchvision's: ``MNIST(root)``, ``SVHN(root + "/SVHN")``)::

        MNIST/raw/{train,t10k}-images-idx3-ubyte[.gz]   idx files, .gz or extracted
        MNIST/raw/{train,t10k}-labels-idx1-ubyte[.gz]
        SVHN/train_32x32.mat  SVHN/test_32x32.mat       cropped digits, X (32,32,3,N), y (N,1)

    or Hugging Face copies ``mnist-hf``/``svhn-hf`` (``save_to_disk`` or parquet) under the
    root, or the hub cache of ``ylecun/mnist`` and ``ufldl-stanford/svhn`` (cropped_digits);
    see the module docstring for the order. The data fingerprint names the source used.

    MNIST: grayscale replicated to 3 channels, resized 28 -> 32 (bilinear), kept as 8-bit.
    SVHN: label 10 is the digit 0. SVHN train (73,257) is the unlabeled target data of
    domain-adaptation methods; SVHN test is scored. md5 sums are checked (MNIST on the
    uncompressed idx files) and cached per file size and mtime.

    Source model: the DTN digit network with SHOT's head, inputs standardized with mean and
    std 0.5 (benchmark.layers.digit_nets), trained with SHOT's digit recipe (``SHOT_RECIPE``;
    Liang et al., ICML 2020, arXiv:2002.08546), which SHOT uses for SVHN -> MNIST with this
    network; here it runs in the other direction. 30 epochs of 938 steps: GPU work
    (``--device cuda``); on 2 CPU cores, hours.
    """

    source = "mnist"
    targets = ("svhn",)
    domain_specs = {"mnist": MNIST_DOMAIN, "svhn": SVHN_DOMAIN}
    recipe = dataclasses.replace(SHOT_RECIPE, arch="dtn")
