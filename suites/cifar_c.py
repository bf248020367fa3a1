"""CIFAR-10-C / CIFAR-100-C (Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to
Common Corruptions and Perturbations", ICLR 2019) on the real files.

Four suites, two recipes per dataset:

- ``cifar10-c`` / ``cifar100-c``: a CPU-trainable ResNet (``small_resnet``, 2 blocks per
  stage, 175k parameters), 30 epochs; about 75 s per epoch of the 50,000 training images on
  2 CPU cores (measured: 188 ms per step of 128), i.e. about 40 minutes per seed.
- ``cifar10-c-wrn`` / ``cifar100-c-wrn``: WRN-28-10 (36.5M parameters) as used by Tent and
  RobustBench; module names match RobustBench's checkpoints, so the ``Standard`` CIFAR-10
  model loads directly (see ``benchmark.weights``). Training it from scratch needs a GPU.

The data (source domain, targets, file checks, the generated fallback) is the same for both
recipes; the suite name and recipe are part of every result key, so the two never mix.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
import sys
import warnings
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from benchmark.errors import DatasetNotFoundError, GeneratedDataWarning, ShiftbenchError
from benchmark.registry import SUITES
from benchmark.store import atomic_path
from benchmark.suite import DomainData, Recipe, Split, Suite
from suites._cache import engine_identity, file_digests, generated_entries, record_generated
from suites.corruptions import CORRUPTIONS, SEVERITIES, corrupt

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"


@dataclasses.dataclass(frozen=True)
class Release:
    """One downloadable archive: where it comes from and its published md5."""

    url: str
    filename: str
    md5: str
    size: str


@SUITES.register("cifar10-c")
class CifarC(Suite):
    """Real: CIFAR-10 (clean) -> CIFAR-10-C, 15 corruptions x 5 severities (needs --data-root).

    Layout under ``--data-root`` (torchvision's for clean CIFAR, the Zenodo release's for -C)::

        cifar-10-batches-py/data_batch_1 .. data_batch_5, test_batch   pickled dicts
        CIFAR-10-C/<corruption>.npy                       (50000, 32, 32, 3) uint8
        CIFAR-10-C/labels.npy                             (50000,) labels
        CIFAR-10-C-generated/                             written here when CIFAR-10-C is absent

    Domains: source ``cifar10`` (train: the 50,000 training images; test: the 10,000 test
    images) and 75 targets ``<corruption>-<severity>`` (e.g. ``gaussian_noise-5``), each the
    10,000 test images under that corruption. Severity ``s`` is rows ``(s-1)*R .. s*R`` of
    ``<corruption>.npy`` with ``R = len(labels.npy) / 5``, which must equal the number of
    clean test images (10,000 in the release; derived from the files, so fixtures can be
    small). Images are read memory-mapped, one domain at a
    time, as float32 in [0, 1] (uint8 / 255), no standardization.

    Unlabelled target data for domain-adaptation methods: the release has no corrupted
    *training* images, so a target's ``train`` split is its ``test`` images (the transductive
    setting of test-time adaptation; labels are never handed to an adapter).

    Checks: the clean CIFAR files against torchvision's published md5s; the -C files'
    shapes, dtypes and row counts; ``labels.npy`` against the clean test labels (the release
    repeats them 5 times); ``CIFAR-10-C.tar``, when kept next to the folder, against Zenodo's
    md5. No per-file checksums of the extracted .npy files are published (``npy_md5`` is
    empty). Digests are cached with each file's size and mtime (``suites._cache``).

    Fallback: when the -C folder is absent (and ``--download`` is not given), the 75 targets
    are generated from the clean test set with ``suites.corruptions`` (fixed seeds) and cached
    in ``CIFAR-10-C-generated/`` in the release's layout. Such data is *not* the release:
    the fingerprint starts with ``generated:`` instead of ``official:``, so its results land
    on another leaderboard signature and never mix with official ones.
    """

    source = "cifar10"
    targets = tuple(f"{c}-{s}" for c in CORRUPTIONS for s in SEVERITIES)
    num_classes = 10
    recipe = Recipe(arch="small_resnet", epochs=30, batch_size=128, lr=0.1, augment="shift",
                    arch_kwargs=(("blocks", 2),))
    eval_batch_size = 200  # Tent's CIFAR batch size

    clean_folder: ClassVar[str] = "cifar-10-batches-py"
    label_key: ClassVar[str] = "labels"
    # torchvision's md5s (torchvision.datasets.CIFAR10.train_list / test_list).
    clean_train_md5: ClassVar[dict[str, str]] = {
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    }
    clean_test_md5: ClassVar[dict[str, str]] = {"test_batch": "40351d587109b95175f43aff81a1287e"}
    clean_release: ClassVar[Release] = Release(
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a", "163 MB")
    corrupted_folder: ClassVar[str] = "CIFAR-10-C"
    corrupted_release: ClassVar[Release] = Release(
        "https://zenodo.org/records/2535967/files/CIFAR-10-C.tar", "CIFAR-10-C.tar",
        "56bf5dcef84df0e2308c6dcbcbbd8499", "2.9 GB")
    npy_md5: ClassVar[dict[str, str]] = {}  # none published; a subclass may pin them
    generation_chunk: ClassVar[int] = 1000  # images per engine call (part of the data key)

    def __init__(self, root: str | Path | None = None, download: bool = False) -> None:
        super().__init__(root, download)
        self._clean: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._kind: str | None = None  # "official" or "generated", decided on first use
        self._checked: set[str] = set()
        self._generator_key: dict[str, Any] | None = None

    # ---- paths ------------------------------------------------------------------------
    @property
    def generated_folder(self) -> str:
        return f"{self.corrupted_folder}-generated"

    def _require_root(self) -> Path:
        if self.root is None:
            raise DatasetNotFoundError(
                f"suite {self.name!r} reads CIFAR from disk: pass --data-root DIR with "
                f"DIR/{self.clean_folder}/ ({self.clean_release.url}, extracted) and "
                f"DIR/{self.corrupted_folder}/*.npy ({self.corrupted_release.url}, extracted), "
                "or add --download"
            )
        return self.root

    def _clean_dir(self) -> Path:
        return self._require_root() / self.clean_folder

    def _corrupted_dir(self) -> Path:
        root = self._require_root()
        return root / (self.corrupted_folder if self.data_kind == "official"
                       else self.generated_folder)

    # ---- clean CIFAR ------------------------------------------------------------------
    def _clean_manual_steps(self) -> str:
        r = self.clean_release
        return (f"download {r.url} ({r.size}, md5 {r.md5}) and extract it into {self.root} "
                f"(tar -xzf {r.filename} -C {self.root}) so that {self._clean_dir()}/ holds "
                f"{', '.join([*self.clean_train_md5, *self.clean_test_md5])}; see {CIFAR_URL}")

    def _ensure_clean(self) -> None:
        folder = self._clean_dir()
        missing = [n for n in (*self.clean_train_md5, *self.clean_test_md5)
                   if not (folder / n).is_file()]
        if missing and self.download:
            self._download(self.clean_release)
            missing = [n for n in missing if not (folder / n).is_file()]
        if missing:
            raise DatasetNotFoundError(
                f"clean CIFAR files missing in {folder}: {', '.join(missing)}; "
                f"{self._clean_manual_steps()}, or pass --download"
            )
        for name, md5 in {**self.clean_train_md5, **self.clean_test_md5}.items():
            self._verify(folder / name, md5, self._clean_manual_steps())

    def _verify(self, path: Path, md5: str, fix: str) -> None:
        if str(path) in self._checked:
            return
        got = file_digests(path)["md5"]
        if got != md5:
            raise ShiftbenchError(f"checksum mismatch for {path}: md5 {got}, expected {md5} "
                                  f"(a damaged or different file); {fix}")
        self._checked.add(str(path))

    def _clean_split(self, split: Split) -> tuple[np.ndarray, np.ndarray]:
        """(N, 32, 32, 3) uint8 images and (N,) int64 labels of a clean split."""
        if split not in self._clean:
            self._ensure_clean()
            names = self.clean_train_md5 if split == "train" else self.clean_test_md5
            images, labels = [], []
            for name in names:
                entry = _read_pickle(self._clean_dir() / name)
                images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                labels.append(np.asarray(entry[self.label_key], dtype=np.int64))
            self._clean[split] = (np.concatenate(images).transpose(0, 2, 3, 1),
                                  np.concatenate(labels))
        return self._clean[split]

    # ---- the -C release or its generated stand-in -------------------------------------
    @property
    def data_kind(self) -> str:
        """``official`` (the release's files) or ``generated`` (our engine, cached)."""
        if self._kind is None:
            official = self._require_root() / self.corrupted_folder
            if not official.is_dir() and self.download:
                self._download(self.corrupted_release)
            if official.is_dir():
                self._kind = "official"
            else:
                self._ensure_clean()  # generation needs the clean test set
                warnings.warn(
                    f"{official} not found: generating the corruptions of the clean test set "
                    f"with suites.corruptions into {self._require_root() / self.generated_folder}"
                    f" (not the official release; results are kept apart). For the release: "
                    f"{self._corrupted_manual_steps()}", GeneratedDataWarning, stacklevel=2)
                self._kind = "generated"
        return self._kind

    def _corrupted_manual_steps(self) -> str:
        r = self.corrupted_release
        return (f"download {r.url} ({r.size}, md5 {r.md5}) and extract it into {self.root} "
                f"(tar -xf {r.filename} -C {self.root}) so that "
                f"{self._require_root() / self.corrupted_folder}/<corruption>.npy and labels.npy "
                "exist, or pass --download")

    def _corrupted_array(self, name: str) -> np.ndarray:
        """``<name>.npy`` memory-mapped, checked once per process."""
        folder = self._corrupted_dir()
        if self.data_kind == "generated":
            self._ensure_generated(name)
        path = folder / f"{name}.npy"
        if not path.is_file():
            raise DatasetNotFoundError(
                f"{path} not found ({folder} lacks {name}.npy); "
                f"{self._corrupted_manual_steps()}")
        try:
            array = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise ShiftbenchError(f"cannot read {path} as a .npy array ({exc}); "
                                  f"{self._corrupted_manual_steps()}") from None
        if str(path) not in self._checked:
            shape = (len(self._corrupted_labels()), 32, 32, 3)
            if array.shape != shape or array.dtype != np.uint8:
                raise ShiftbenchError(
                    f"{path} holds {array.shape} {array.dtype}; expected {shape} uint8 (one "
                    f"row per label of labels.npy) as in {self.corrupted_release.filename}; "
                    f"{self._corrupted_manual_steps()}")
            if name in self.npy_md5:
                self._verify(path, self.npy_md5[name], self._corrupted_manual_steps())
            self._checked.add(str(path))
        return array

    def _corrupted_labels(self) -> np.ndarray:
        folder = self._corrupted_dir()
        path = folder / "labels.npy"
        if str(path) in self._checked:
            return np.load(path, mmap_mode="r")
        if self.data_kind == "generated":
            self._ensure_generated(None)
        if not path.is_file():
            raise DatasetNotFoundError(f"{path} not found; {self._corrupted_manual_steps()}")
        labels = np.load(path, mmap_mode="r")
        _, clean_labels = self._clean_split("test")
        shape = (len(SEVERITIES) * len(clean_labels),)  # the test set once per severity
        if labels.shape != shape or labels.dtype.kind not in "iu":
            raise ShiftbenchError(f"{path} holds {labels.shape} {labels.dtype}; expected "
                                  f"{shape} integer labels (the {len(clean_labels)} test labels "
                                  f"of {self._clean_dir()} once per severity); "
                                  f"{self._corrupted_manual_steps()}")
        if not np.array_equal(labels, np.tile(clean_labels, len(SEVERITIES))):
            raise ShiftbenchError(f"{path} does not repeat the clean test labels of "
                                  f"{self._clean_dir()} five times, as the release does: "
                                  f"CIFAR-10 vs CIFAR-100 mixed up, or a damaged file")
        if "labels" in self.npy_md5:
            self._verify(path, self.npy_md5["labels"], self._corrupted_manual_steps())
        tar = self._require_root() / self.corrupted_release.filename
        if self.data_kind == "official" and tar.is_file():
            self._verify(tar, self.corrupted_release.md5, self._corrupted_manual_steps())
        self._checked.add(str(path))
        return labels

    def rows_per_severity(self) -> int:
        return len(self._corrupted_labels()) // len(SEVERITIES)

    # ---- generated fallback -----------------------------------------------------------
    def generator_key(self) -> dict[str, Any]:
        """Everything generated data depends on; stored beside it, compared on every start."""
        if self._generator_key is not None:
            return self._generator_key
        clean = {n: file_digests(self._clean_dir() / n)["sha256"] for n in self.clean_test_md5}
        self._generator_key = {"engine": engine_identity(), "clean_test": clean,
                               "chunk": self.generation_chunk,
                               "seeds": "(50000+100*corruption+10*severity)*1000+chunk"}
        return self._generator_key

    def _ensure_generated(self, name: str | None) -> None:
        """Write ``<name>.npy`` (or ``labels.npy`` for None) into the generated folder unless
        it is there for the current generator key; a changed key regenerates every file."""
        folder = self._require_root() / self.generated_folder
        manifest_path = folder / "generator.json"
        key = self.generator_key()
        files = generated_entries(manifest_path, key, "files")
        wanted = "labels" if name is None else name
        if wanted in files and (folder / f"{wanted}.npy").is_file():
            return
        images, labels = self._clean_split("test")
        if name is None:
            array = np.tile(labels, len(SEVERITIES))
        else:
            print(f"generating {self.generated_folder}/{name}.npy ({len(images)} images x 5 "
                  "severities)", file=sys.stderr, flush=True)
            array = self._generate(images, name)
        _atomic_save_npy(folder / f"{wanted}.npy", array)
        record_generated(manifest_path, key, "files", files, wanted)

    def _generate(self, images: np.ndarray, name: str) -> np.ndarray:
        out = np.empty((len(SEVERITIES) * len(images), *images.shape[1:]), np.uint8)
        index = CORRUPTIONS.index(name)
        for s in SEVERITIES:
            for start in range(0, len(images), self.generation_chunk):
                chunk = torch.from_numpy(images[start : start + self.generation_chunk])
                x = chunk.permute(0, 3, 1, 2).float() / 255
                seed = (50_000 + 100 * index + 10 * s) * 1000 + start // self.generation_chunk
                y = corrupt(x, name, s, seed)
                row = (s - 1) * len(images) + start
                out[row : row + len(chunk)] = (
                    torch.round(y * 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())
        return out

    # ---- suite protocol ---------------------------------------------------------------
    def target_factors(self) -> dict[str, dict[str, Any]]:
        return {f"{c}-{s}": {"corruption": c, "severity": s}
                for c in CORRUPTIONS for s in SEVERITIES}

    def load(self, domain: str, split: Split) -> DomainData:
        if domain not in self.domains:
            raise KeyError(f"suite {self.name!r} has no domain {domain!r}; has {self.domains}")
        if split not in ("train", "test"):
            raise KeyError(f"unknown split {split!r}; use 'train' or 'test'")
        if domain == self.source:
            images, labels = self._clean_split(split)
            return DomainData(_to_float(images), torch.from_numpy(labels))
        # A target's train split is its test images (transductive; see the class docstring).
        name, severity = domain.rsplit("-", 1)
        rows = self.rows_per_severity()
        block = slice((int(severity) - 1) * rows, int(severity) * rows)
        images = np.array(self._corrupted_array(name)[block])  # reads just this block
        labels = np.array(self._corrupted_labels()[block], dtype=np.int64)
        return DomainData(_to_float(images), torch.from_numpy(labels))

    def fingerprint(self) -> str:
        """``official:<sha256>`` or ``generated:<sha256>`` over the sha256 of every file read
        (cached per file stamp: hashing ~2.5 GB happens once) and the preprocessing choices,
        not over decoded arrays."""
        if self._fingerprint is None:
            kind = self.data_kind
            self._ensure_clean()
            self._corrupted_labels()
            h = hashlib.sha256(f"{self.name}\n{kind}\n".encode())
            h.update(b"uint8/255, NCHW float32; severity s = rows (s-1)*R..s*R, R=len/5; "
                     b"target train split = target test images\n")
            for n in (*self.clean_train_md5, *self.clean_test_md5):
                h.update(f"clean/{n}:{file_digests(self._clean_dir() / n)['sha256']}\n".encode())
            for n in (*CORRUPTIONS, "labels"):
                path = self._corrupted_dir() / f"{n}.npy"
                if n != "labels":
                    self._corrupted_array(n)  # checks it, generates it if need be
                h.update(f"{kind}/{n}:{file_digests(path)['sha256']}\n".encode())
            self._fingerprint = f"{kind}:{h.hexdigest()}"
        return self._fingerprint

    def source_fingerprint(self) -> str:
        """The clean training files' sha256 (cached per file stamp) and their decoding, rather
        than a hash of 600 MB of decoded floats on every start."""
        if self._source_fingerprint is None:
            self._ensure_clean()
            h = hashlib.sha256(b"CIFAR python batches, uint8/255, NCHW float32\n")
            for n in self.clean_train_md5:
                h.update(f"{n}:{file_digests(self._clean_dir() / n)['sha256']}\n".encode())
            self._source_fingerprint = f"{self.source}:{h.hexdigest()}"
        return self._source_fingerprint

    def split_fingerprint(self, domain: str, split: Split) -> str:
        """The digests of the files a split is read from (cached per file stamp) and the rows
        taken, instead of a hash of its pixels. A target's train and test splits are the same
        images, hence the same fingerprint."""
        if domain not in self.domains:
            raise KeyError(f"suite {self.name!r} has no domain {domain!r}; has {self.domains}")
        if split not in ("train", "test"):
            raise KeyError(f"unknown split {split!r}; use 'train' or 'test'")
        if domain == self.source:
            self._ensure_clean()
            names = self.clean_train_md5 if split == "train" else self.clean_test_md5
            files, what = [self._clean_dir() / n for n in names], f"clean/{split}"
        else:
            name, severity = domain.rsplit("-", 1)
            self._corrupted_array(name)  # checks the file (and generates it if need be)
            files = [self._corrupted_dir() / f"{name}.npy", self._corrupted_dir() / "labels.npy"]
            what = f"{self.data_kind}/{name} severity {severity} of R={self.rows_per_severity()}"
        h = hashlib.sha256(f"{what}; uint8/255 NCHW float32\n".encode())
        for path in files:
            h.update(f"{path.name}:{file_digests(path)['sha256']}\n".encode())
        return h.hexdigest()

    # ---- downloads --------------------------------------------------------------------
    def _download(self, release: Release) -> None:
        from torchvision.datasets.utils import download_and_extract_archive

        root = self._require_root()
        print(f"downloading {release.url} ({release.size}) into {root}", file=sys.stderr,
              flush=True)
        try:
            download_and_extract_archive(release.url, str(root), filename=release.filename,
                                         md5=release.md5)
        except Exception as exc:  # network, md5 or extraction failure: say how to do it by hand
            fix = (self._clean_manual_steps() if release is self.clean_release
                   else self._corrupted_manual_steps())
            raise DatasetNotFoundError(
                f"downloading {release.url} failed ({type(exc).__name__}: {exc}); {fix}"
            ) from None


WRN_RECIPE = Recipe(arch="wrn28_10", epochs=200, batch_size=128, lr=0.1, momentum=0.9,
                    weight_decay=5e-4, augment="shift")


@SUITES.register("cifar10-c-wrn")
class CifarCWideResNet(CifarC):
    """Real: CIFAR-10 -> CIFAR-10-C with WRN-28-10 (Tent / RobustBench's model; GPU).

    Data as ``cifar10-c``. Recipe: WRN-28-10, SGD (Nesterov momentum 0.9), lr 0.1 cosine, weight
    decay 5e-4, batch 128, 200 epochs, 2-pixel random shifts (the usual CIFAR recipe uses
    4-pixel crops and horizontal flips, which the recipe options do not offer). Meant above
    all for a given source model: RobustBench's ``Standard`` checkpoint (or any WRN-28-10
    state dict with its names) loads into ``build_model()`` unchanged.
    """

    recipe = WRN_RECIPE


@SUITES.register("cifar100-c")
class Cifar100C(CifarC):
    """Real: CIFAR-100 (clean) -> CIFAR-100-C, 15 corruptions x 5 severities (needs --data-root).

    As ``cifar10-c`` with CIFAR-100 (fine labels, 100 classes): ``cifar-100-python/{train,test}``
    (torchvision's layout) and ``CIFAR-100-C/<corruption>.npy`` + ``labels.npy`` (Zenodo record
    3555552); the generated fallback goes to ``CIFAR-100-C-generated/``.
    """

    source = "cifar100"
    num_classes = 100
    clean_folder = "cifar-100-python"
    label_key = "fine_labels"
    # torchvision's md5s (torchvision.datasets.CIFAR100.train_list / test_list).
    clean_train_md5 = {"train": "16019d7e3df5f24257cddd939b257f8d"}
    clean_test_md5 = {"test": "f0ef6b0ae62326f3e7ffdfab6717acfc"}
    clean_release = Release(
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85", "161 MB")
    corrupted_folder = "CIFAR-100-C"
    corrupted_release = Release(
        "https://zenodo.org/records/3555552/files/CIFAR-100-C.tar", "CIFAR-100-C.tar",
        "11f0ed0f1191edbf9fa23466ae6021d3", "2.9 GB")


@SUITES.register("cifar100-c-wrn")
class Cifar100CWideResNet(Cifar100C):
    """Real: CIFAR-100 -> CIFAR-100-C with WRN-28-10 (GPU).

    Data as ``cifar100-c``, recipe as ``cifar10-c-wrn``."""

    recipe = WRN_RECIPE


def _to_float(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255)


def _read_pickle(path: Path) -> dict[str, Any]:
    """A CIFAR python-version batch: Python 2 pickles, read as torchvision does (latin1);
    keys normalized to str (files pickled by Python 3 have bytes keys)."""
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
    except Exception as exc:
        raise ShiftbenchError(f"cannot read CIFAR batch {path} ({type(exc).__name__}: {exc})"
                              ) from None
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)
