"""What a result was produced with: package versions, code revision, source-file hashes."""

from __future__ import annotations

import functools
import hashlib
import inspect
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def shiftbench_version() -> str:
    try:
        return metadata.version("shiftbench")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


@functools.cache
def code_revision() -> str:
    """The git commit of the project checkout, with ``+dirty`` when it has local changes."""
    try:
        def git(*args: str) -> str:
            return subprocess.run(
                ["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
                check=True, timeout=10,
            ).stdout.strip()

        rev = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _distribution_version(name: str) -> str:
    # Read from package metadata: importing torchvision just for its version costs ~1 s.
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def versions() -> dict[str, str]:
    return {
        "shiftbench": shiftbench_version(),
        "code_revision": code_revision(),
        "torch": torch.__version__,
        "torchvision": _distribution_version("torchvision"),
        "python": platform.python_version(),
    }


@functools.cache
def _file_sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def source_hash(cls: type) -> str:
    """sha256 of the file that defines ``cls``: editing an adapter invalidates its results.

    A class loaded from a user's file (benchmark.plugins) carries the hash of the exact bytes
    that were imported, so an edit is seen even within one process (the cache is by path).
    """
    recorded = cls.__dict__.get("_shiftbench_source_sha256")
    if isinstance(recorded, str):
        return recorded
    try:
        return _file_sha256(inspect.getsourcefile(cls) or "")
    except (OSError, TypeError):
        return "unknown"


def describe_device(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"device": str(device), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    else:
        info["cpu"] = platform.processor() or platform.machine()
    return info
