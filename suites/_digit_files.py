"""Readers, checksums and downloads for the released digit datasets (MNIST, SVHN, USPS).

File layouts follow torchvision's (``<root>/MNIST/raw/...``, ``SVHN(root=<root>/SVHN)``,
``USPS(root=<root>/USPS)``) so a folder torchvision already filled works as is. Checksums are
md5 sums of the bytes a reader parses: for MNIST the *uncompressed* idx files, so ``.gz``
files re-compressed by anyone (or the extracted files torchvision leaves next to them) are
accepted; for SVHN and USPS the files as released.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmark.errors import DatasetNotFoundError
from benchmark.store import atomic_write_bytes, atomic_write_text
from suites._cache import cache_dir


class CorruptFileError(DatasetNotFoundError):
    """A dataset file exists but is not the released one (checksum or format)."""


@dataclass(frozen=True)
class Release:
    """One released dataset: where its files live under the data root, their md5 sums and
    where ``--download`` fetches them.

    ``files`` maps split -> file names in ``folder``; ``md5`` maps file name -> md5 of its
    content (uncompressed, for names that may also be stored ``.gz``); ``mirrors`` are URL
    prefixes tried in turn, each file fetched as ``prefix + name + download_suffix``.
    """

    name: str
    folder: str
    files: dict[str, tuple[str, ...]]
    md5: dict[str, str]
    mirrors: tuple[str, ...]
    homepage: str
    download_suffix: str = ""  # MNIST is served gzip-compressed
    gz_ok: bool = False  # a file may be stored as name.gz (read through gzip)

    def all_files(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(f for split in self.files.values() for f in split))


# md5 sums of the uncompressed idx files (the canonical MNIST files; torchvision's table
# holds the sums of its mirrors' .gz archives, which differ whenever a file is re-compressed).
MNIST = Release(
    name="MNIST",
    folder="MNIST/raw",
    files={
        "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    },
    md5={
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    # torchvision.datasets.MNIST.mirrors, in its order.
    mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
    homepage="http://yann.lecun.com/exdb/mnist/",
    download_suffix=".gz",
    gz_ok=True,
)

# torchvision.datasets.SVHN reads <its root>/{train,test}_32x32.mat; we pass it <root>/SVHN.
SVHN = Release(
    name="SVHN",
    folder="SVHN",
    files={"train": ("train_32x32.mat",), "test": ("test_32x32.mat",)},
    md5={
        "train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
        "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3",
    },
    mirrors=("http://ufldl.stanford.edu/housenumbers/",),
    homepage="http://ufldl.stanford.edu/housenumbers/",
)

# torchvision.datasets.USPS reads <its root>/usps{,.t}.bz2; we pass it <root>/USPS.
USPS = Release(
    name="USPS",
    folder="USPS",
    files={"train": ("usps.bz2",), "test": ("usps.t.bz2",)},
    md5={"usps.bz2": "ec16c51db3855ca6c91edd34d0e9b197",
         "usps.t.bz2": "8ea070ee2aca1ac39742fdd1ef5ed118"},
    mirrors=("https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/multiclass/",),
    homepage="https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/multiclass.html#usps",
)

# The HDF5 release (Kaggle "bistaumanga/usps-dataset"): its distributors publish no
# checksum, so we record the md5 of the release file (2,913,522 bytes; 7,291 + 2,007
# digits) and check it like every other file: a truncated or altered copy is named and
# refused instead of failing inside h5py.
USPS_H5 = Release(
    name="USPS (HDF5)",
    folder="USPS",
    files={"train": ("usps.h5",), "test": ("usps.h5",)},
    md5={"usps.h5": "355df6b942eb766252e0340bc019b0b9"},
    mirrors=(),
    homepage="https://www.kaggle.com/datasets/bistaumanga/usps-dataset",
)


# ---- locating and verifying files --------------------------------------------------------
def stored_path(root: Path, release: Release, name: str) -> Path | None:
    """The file as stored under ``root``: plain, else ``.gz`` when the release allows it."""
    plain = root / release.folder / name
    if plain.is_file():
        return plain
    packed = plain.with_name(name + ".gz")
    if release.gz_ok and packed.is_file():
        return packed
    return None


def read_bytes(path: Path) -> bytes:
    """The content a reader parses: ``.gz`` files are decompressed."""
    if path.suffix == ".gz":
        try:
            with gzip.open(path, "rb") as f:
                return f.read()
        except (OSError, EOFError) as exc:
            raise CorruptFileError(f"{path} is not a readable gzip file ({exc}); delete it and "
                                   f"download it again") from None
    return path.read_bytes()


def _cache_dir() -> Path:
    """``verified/`` in the shared cache (suites/_cache.py); deleting it only costs a re-hash.
    Not :func:`suites._cache.file_digests`: MNIST's sums are of the *uncompressed* content."""
    return cache_dir() / "verified"


def _stamp_path(path: Path, expected: str) -> Path:
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{expected}"
    return _cache_dir() / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"


def verify(path: Path, expected: str | None) -> str:
    """md5 of the content of ``path``, checked against ``expected`` (when given).

    A verified file leaves a stamp keyed by its path, size, modification time and expected
    sum (in ``_cache_dir()``), so later runs skip the hashing; a file replaced or touched
    since is hashed again.
    """
    if expected is not None:
        stamp = _stamp_path(path, expected)
        if stamp.is_file():
            return expected
    digest = hashlib.md5(read_bytes(path)).hexdigest()
    if expected is not None:
        if digest != expected:
            raise CorruptFileError(
                f"checksum mismatch for {path}: md5 {digest}, expected {expected} (content"
                f"{' after gunzip' if path.suffix == '.gz' else ''}); the file is damaged or "
                f"not the released one: delete it and download it again"
            )
        try:  # a cache: a read-only home only costs a re-hash next time
            atomic_write_text(stamp, json.dumps({"path": str(path), "md5": digest}))
        except OSError:
            pass
    return digest


# ---- downloads -----------------------------------------------------------------------------
def _fetch(url: str, timeout: float = 60.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (http/file)
        return response.read()


def download_release(root: Path, release: Release, names: Iterable[str]) -> None:
    """Fetch each missing file from the mirrors in turn; verify, then write atomically.

    Raises one DatasetNotFoundError listing every file no mirror delivered, with the manual
    steps (URLs and target paths); files that did arrive are kept (they are whole and
    verified).
    """
    failures: list[str] = []
    for name in names:
        if stored_path(root, release, name) is not None:
            continue
        target = root / release.folder / (name + release.download_suffix)
        errors = []
        for mirror in release.mirrors:
            url = mirror + name + release.download_suffix
            try:
                data = _fetch(url)
            except Exception as exc:  # network, HTTP or file:// errors: try the next mirror
                errors.append(f"{url}: {exc}")
                continue
            try:
                content = gzip.decompress(data) if release.download_suffix == ".gz" else data
            except (OSError, EOFError) as exc:
                errors.append(f"{url}: not a gzip file ({exc})")
                continue
            digest = hashlib.md5(content).hexdigest()
            expected = release.md5.get(name)
            if expected is not None and digest != expected:
                errors.append(f"{url}: md5 {digest}, expected {expected}")
                continue
            atomic_write_bytes(target, data)
            break
        else:
            failures.append(f"  {target}\n    tried: " + "\n           ".join(errors or ["(no "
                            "mirror known)"]))
    if failures:
        raise DatasetNotFoundError(
            f"--download could not fetch {release.name}:\n" + "\n".join(failures) + "\n"
            + manual_steps(root, release)
        )


def manual_steps(root: Path, release: Release) -> str:
    lines = [f"by hand, from {release.homepage}: put these files in {root / release.folder}"
             + (" (as downloaded, or extracted)" if release.gz_ok else "")]
    for name in release.all_files():
        urls = [m + name + release.download_suffix for m in release.mirrors]
        lines.append(f"  {name + release.download_suffix}" + (f"  <- {urls[0]}" if urls else ""))
    return "\n".join(lines)


# ---- readers -----------------------------------------------------------------------------
def parse_idx(data: bytes, path: Path, dims: int) -> np.ndarray:
    """An idx file (LeCun's format: magic 0x0000 08 <ndim>, big-endian int32 sizes, uint8
    data) as a uint8 array."""
    if len(data) < 4 + 4 * dims or data[:3] != b"\x00\x00\x08" or data[3] != dims:
        raise CorruptFileError(f"{path} is not an idx file of {dims} dimension(s) of uint8 "
                               f"(bad header); delete it and download it again")
    shape = tuple(int(v) for v in np.frombuffer(data, ">i4", count=dims, offset=4))
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * dims)
    if body.size != int(np.prod(shape)):
        raise CorruptFileError(f"{path} holds {body.size} bytes of data, its header says "
                               f"{shape}; the file is truncated: download it again")
    return body.reshape(shape)


def read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """SVHN cropped digits: ``X`` (32, 32, 3, N) uint8 and ``y`` (N, 1) with 10 meaning 0.
    Returns images (N, 3, 32, 32) uint8 and labels 0-9."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(path, variable_names=("X", "y"))
        images, labels = mat["X"], mat["y"]
    except Exception as exc:
        raise CorruptFileError(f"{path} is not an SVHN .mat file with X and y ({exc}); "
                               f"download it again") from None
    labels = labels.astype(np.int64).reshape(-1) % 10  # "10" is the digit 0
    return np.ascontiguousarray(images.transpose(3, 2, 0, 1)), labels


def read_usps_libsvm(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """LIBSVM text ``label index:value ...``, labels 1-10 = digit + 1, 256 values in [-1, 1].
    Returns (N, 16, 16) float32 in [0, 1] and labels 0-9."""
    try:
        with bz2.open(path, "rt") as f:
            lines = f.read().split("\n")
    except (OSError, EOFError, ValueError) as exc:
        raise CorruptFileError(f"{path} is not a readable bz2 file ({exc}); download it "
                               f"again") from None
    rows, labels = [], []
    for line in lines:
        if not line.strip():
            continue
        label, *pairs = line.split()
        values = np.zeros(256, dtype=np.float32)  # LIBSVM may omit zero entries
        for pair in pairs:
            index, value = pair.split(":")
            values[int(index) - 1] = float(value)
        rows.append(values)
        labels.append(int(float(label)) - 1)
    images = (np.stack(rows).reshape(-1, 16, 16) + 1) / 2
    return np.clip(images, 0, 1), np.asarray(labels, dtype=np.int64)


def read_usps_h5(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """HDF5 release: groups ``train``/``test`` with ``data`` (N, 256) in [0, 1] and ``target``
    (digits 0-9). Returns (N, 16, 16) float32 and labels."""
    try:
        import h5py
    except ImportError:
        raise DatasetNotFoundError(f"reading {path} needs h5py: pip install 'shiftbench[h5]' "
                                   f"(or use the LIBSVM files, suite mnist-usps)") from None
    with h5py.File(path, "r") as f:
        images = np.asarray(f[split]["data"], dtype=np.float32).reshape(-1, 16, 16)
        labels = np.asarray(f[split]["target"], dtype=np.int64).reshape(-1)
    return images, labels


# ---- Hugging Face copies -------------------------------------------------------------------
@dataclass(frozen=True)
class HubCopy:
    """Where a Hugging Face copy of a dataset may be: ``<root>/<folder>`` (a ``save_to_disk``
    directory or parquet files) or the hub cache of ``repo`` (parquet files under ``subdir``).
    """

    folder: str
    repo: str
    subdir: str = ""
    image_column: str = "image"
    label_column: str = "label"


def _parquet_files(folder: Path, split: str, subdir: str = "") -> list[Path]:
    base = folder / subdir if subdir and (folder / subdir).is_dir() else folder
    patterns = (f"{split}.parquet", f"{split}-*.parquet", f"{split}/*.parquet",
                f"data/{split}-*.parquet", f"*/{split}-*.parquet")
    for pattern in patterns:
        found = sorted(base.glob(pattern))
        if found:
            return found
    return []


def find_hf_copy(root: Path | None, copy: HubCopy, hub_cache: Path | None,
                 splits: Sequence[str]) -> tuple[str, Path] | None:
    """The first Hugging Face copy present, in this order: ``<root>/<folder>`` saved with
    ``save_to_disk``; ``<root>/<folder>`` holding parquet files; the hub cache (offline).
    Returns (kind, path) with kind ``hf-disk``, ``hf-parquet`` or ``hf-hub``."""
    if root is not None:
        folder = root / copy.folder
        if (folder / "dataset_dict.json").is_file():
            return "hf-disk", folder
        if folder.is_dir() and all(_parquet_files(folder, s) for s in splits):
            return "hf-parquet", folder
    snapshot = _hub_snapshot(copy.repo, hub_cache)
    if snapshot is not None and all(_parquet_files(snapshot, s, copy.subdir) for s in splits):
        return "hf-hub", snapshot
    return None


def _hub_snapshot(repo: str, hub_cache: Path | None) -> Path | None:
    """The cached snapshot of a hub dataset repo, without network (None if absent)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return None
    try:
        return Path(snapshot_download(repo, repo_type="dataset", local_files_only=True,
                                      cache_dir=hub_cache))
    except Exception:  # not cached (or an unreadable cache): not a usable copy
        return None


def read_hf_split(kind: str, path: Path, split: str, copy: HubCopy,
                  mode: str) -> tuple[np.ndarray, np.ndarray, str]:
    """(images (N, H, W, C) uint8 in PIL ``mode``, labels, content sha256) of one split."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DatasetNotFoundError(f"reading the Hugging Face copy at {path} needs the hf "
                                   f"extra: pip install 'shiftbench[hf]'") from None
    if kind == "hf-disk":
        from datasets import load_from_disk

        table = load_from_disk(str(path))[split].data.table
    else:
        files = _parquet_files(path, split, copy.subdir if kind == "hf-hub" else "")
        table = pa.concat_tables([pq.read_table(f) for f in files])
    for column in (copy.image_column, copy.label_column):
        if column not in table.column_names:
            raise CorruptFileError(f"the Hugging Face copy at {path} has no column {column!r} "
                                   f"in split {split!r} (has {table.column_names})")
    from PIL import Image

    digest = hashlib.sha256()
    images = []
    for cell in table.column(copy.image_column).to_pylist():
        raw = cell["bytes"] if cell.get("bytes") is not None else Path(cell["path"]).read_bytes()
        digest.update(hashlib.sha256(raw).digest())
        with Image.open(io.BytesIO(raw)) as img:
            images.append(np.asarray(img.convert(mode)))
    labels = np.asarray(table.column(copy.label_column).to_pylist(), dtype=np.int64)
    digest.update(labels.tobytes())
    array = np.stack(images)
    return (array[..., None] if array.ndim == 3 else array), labels, digest.hexdigest()
