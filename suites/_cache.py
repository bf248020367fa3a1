"""On-disk caches shared by suites: file digests keyed by a (size, mtime) stamp, and the
identity of the corruption engine's code.

Location: ``$SHIFTBENCH_CACHE`` if set, else ``~/.cache/shiftbench``. Everything in it can be
deleted at any time; it is rebuilt on the next start. Writes are atomic (temporary file +
rename), so a killed process never leaves a half-written entry.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from benchmark.store import atomic_write_text

DIGESTS_FILE = "file-digests.json"
_CORRUPTIONS_DIR = Path(__file__).resolve().parent / "corruptions"


def cache_dir() -> Path:
    """``$SHIFTBENCH_CACHE``, else ``~/.cache/shiftbench``."""
    env = os.environ.get("SHIFTBENCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "shiftbench"


def _stamp(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def file_digests(path: str | Path) -> dict[str, str]:
    """``{"md5": ..., "sha256": ...}`` of a file, computed in one pass. Cached per absolute
    path with the file's size and mtime, so an unchanged multi-GB file is hashed once; any
    rewrite of the file (new mtime) invalidates its entry."""
    path = Path(path).resolve()
    index_path = cache_dir() / DIGESTS_FILE
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    stamp = _stamp(path)
    entry = index.get(str(path))
    if entry and entry.get("stamp") == stamp:
        return {"md5": entry["md5"], "sha256": entry["sha256"]}
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            md5.update(chunk)
            sha.update(chunk)
    digests = {"md5": md5.hexdigest(), "sha256": sha.hexdigest()}
    try:  # re-read: another process may have added entries meanwhile
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    index[str(path)] = {"stamp": stamp, **digests}
    try:
        atomic_write_text(index_path, json.dumps(index, indent=0, sort_keys=True))
    except OSError:
        pass  # a read-only cache only costs re-hashing next time
    return digests


def engine_identity() -> str:
    """sha256 of the corruption engine's source files, of the torch and numpy versions and
    of the frost images used (the release's photos, or procedural textures): data generated
    by ``suites.corruptions`` may differ whenever one of them changes."""
    from suites.corruptions.weather import frost_images

    h = hashlib.sha256(f"torch {torch.__version__} numpy {np.__version__}\n".encode())
    for source in sorted(_CORRUPTIONS_DIR.glob("*.py")):
        h.update(source.name.encode() + b"\0" + source.read_bytes() + b"\0")
    h.update(f"frost {frost_images()[1]}".encode())
    return h.hexdigest()
