"""The result store: one JSON file per cell, one safetensors file per source checkpoint.

Layout under the results root::

    cells/<suite>/<cell key>.json                  # a finished cell (status done or failed),
                                                   # with a digest of its content
    failures/<suite>/<cell key>.txt                # which cell failed, and its traceback
    checkpoints/<checkpoint key>.safetensors       # shared by suites with one source domain
    checkpoints/<checkpoint key>.sha256            # its sha256, checked before every use
    locks/...                                      # file locks of concurrent runs/workers

A key is a hash of what decides the result (never paths or devices). Every file is
written to a temporary name in the same directory and renamed into place, so a file
either exists whole or not at all: a run killed at any moment leaves no half cell.
Processes that share a results directory (workers, Ray tasks, concurrent runs) coordinate
with file locks (``filelock``): one trains a checkpoint while the others wait for it, and
a job is computed once. A lock dies with its process, so kill -9 leaves none held.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from safetensors.torch import load_file, save_file


def stable_hash(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj`` (sorted keys, no whitespace)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _file_mode() -> int:
    """The mode ``open()`` gives a new file: 0o666 minus the process umask (read once)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary file next to ``path`` for the block to write; renamed onto ``path`` when
    the block ends, deleted if it raises, so ``path`` is always whole or absent. The file
    is synced to disk first and gets the mode a plain ``open()`` would give, not
    ``mkstemp``'s owner-only 0600 (leaderboards and data are for others to read too)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class CorruptCellWarning(UserWarning):
    """A stored cell or checkpoint failed its check; it is ignored and recomputed."""


def cell_digest(cell: dict[str, Any]) -> str:
    """sha256 of a cell's canonical JSON without its own ``digest`` field."""
    body = {k: v for k, v in cell.items() if k != "digest"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


class ResultStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # ---- cells ---------------------------------------------------------------------
    def cell_path(self, suite: str, key: str) -> Path:
        return self.root / "cells" / suite / f"{key}.json"

    def load_cell(self, suite: str, key: str) -> dict[str, Any] | None:
        """The stored cell, or None if absent or unreadable (reported, then recomputed)."""
        path = self.cell_path(suite, key)
        if not path.exists():
            return None
        return self._read_cell(path, key)

    def save_cell(self, cell: dict[str, Any]) -> Path:
        """Store a cell with a digest of its content (checked whenever it is read)."""
        path = self.cell_path(cell["suite"], cell["key"])
        cell = {**cell, "digest": cell_digest(cell)}
        atomic_write_text(path, json.dumps(cell, indent=1, sort_keys=True, allow_nan=True) + "\n")
        return path

    def cells(self, suite: str) -> list[dict[str, Any]]:
        """Every readable cell of a suite, in a stable order."""
        folder = self.root / "cells" / suite
        found = []
        for path in sorted(folder.glob("*.json")) if folder.exists() else []:
            cell = self._read_cell(path, path.stem)
            if cell is not None:
                found.append(cell)
        return found

    @staticmethod
    def _read_cell(path: Path, key: str) -> dict[str, Any] | None:
        try:
            cell = json.loads(path.read_text())
            if not isinstance(cell, dict) or cell.get("key") != key or "status" not in cell:
                raise ValueError("not a cell record for this key")
            if cell.get("digest") != cell_digest(cell):
                raise ValueError("its content does not match its digest: edited or damaged"
                                 if "digest" in cell else "it has no content digest")
            return cell
        except (OSError, ValueError) as exc:
            warnings.warn(f"ignoring cell file {path}: {exc}; it is not ranked and will be "
                          "recomputed", CorruptCellWarning, stacklevel=3)
            return None

    def save_traceback(self, suite: str, key: str, text: str) -> Path:
        path = self.root / "failures" / suite / f"{key}.txt"
        atomic_write_text(path, text)
        return path

    # ---- locks -----------------------------------------------------------------------
    def lock(self, path: Path) -> FileLock:
        """An inter-process lock for the file or job at ``path`` (kept beside it in
        ``locks/``, relative to the results root when ``path`` is inside it)."""
        path = Path(path)
        try:
            relative = path.resolve().relative_to(self.root.resolve())
            lock_path = self.root / "locks" / f"{relative}.lock"
        except ValueError:  # e.g. the leaderboards directory
            lock_path = path.parent / f"{path.name}.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(lock_path)

    # ---- checkpoints -----------------------------------------------------------------
    def checkpoint_path(self, key: str) -> Path:
        return self.root / "checkpoints" / f"{key}.safetensors"

    def digest_path(self, key: str) -> Path:
        return self.root / "checkpoints" / f"{key}.sha256"

    def checkpoint_digest(self, key: str) -> str:
        """The sha256 recorded when the checkpoint was written."""
        return self.digest_path(key).read_text().strip()

    def load_checkpoint(self, key: str) -> dict[str, torch.Tensor] | None:
        """The checkpoint's tensors, after checking the file against the sha256 recorded when
        it was written; None (with a one-line warning naming the file) if it is missing,
        damaged or does not match, and the caller retrains."""
        path = self.checkpoint_path(key)
        if not path.exists():
            return None
        try:
            recorded = self.checkpoint_digest(key)
        except OSError:
            recorded = None
        try:
            if recorded is None:
                raise ValueError(f"no recorded sha256 ({self.digest_path(key).name})")
            if file_sha256(path) != recorded:
                raise ValueError("its sha256 does not match the one recorded when it was written")
            return load_file(path)
        except Exception as exc:  # safetensors raises its own error types
            warnings.warn(f"ignoring checkpoint {path}: {exc}; retraining", CorruptCellWarning,
                          stacklevel=2)
            return None

    def save_checkpoint(
        self, key: str, state: dict[str, torch.Tensor], metadata: dict[str, str]
    ) -> Path:
        """Write the checkpoint byte-reproducibly (one metadata entry holding sorted JSON:
        safetensors does not keep the order of several entries), then its sha256."""
        path = self.checkpoint_path(key)
        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
        with atomic_path(path) as tmp:
            save_file(tensors, tmp, metadata={"shiftbench": json.dumps(metadata, sort_keys=True)})
            digest = file_sha256(tmp)
        atomic_write_text(self.digest_path(key), digest + "\n")
        return path
