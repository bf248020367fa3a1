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
import torchvision

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


def versions() -> dict[str, str]:
    return {
        "shiftbench": shiftbench_version(),
        "code_revision": code_revision(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
    }


@functools.cache
def _file_sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def source_hash(cls: type) -> str:
    """sha256 of the file that defines ``cls``: editing an adapter invalidates its results."""
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
