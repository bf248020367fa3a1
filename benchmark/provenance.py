"""What a result was produced with: package versions, code revision, source-file hashes."""

from __future__ import annotations

import functools
import hashlib
import inspect
import os
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
    """sha256 of the code that defines ``cls``: editing an adapter invalidates its results.

    That is its own file, plus the modules it imports from its own folder and from
    ``benchmark.layers`` (the shared building blocks of methods: norm swaps, losses, TTA
    helpers), transitively, and the files it declares in ``code_files`` (paths relative to
    its file). With none of those, the hash is the file's own sha256. A class loaded from a
    user's file (benchmark.plugins) carries the hash of the exact bytes that were imported,
    so an edit is seen even within one process (the cache is by path).
    """
    recorded = cls.__dict__.get("_shiftbench_source_sha256")
    try:
        main = Path(inspect.getsourcefile(cls) or "")
        own = recorded if isinstance(recorded, str) else _file_sha256(str(main))
    except (OSError, TypeError):
        return recorded if isinstance(recorded, str) else "unknown"
    helpers = helper_files(main, getattr(cls, "code_files", ()))
    if not helpers:
        return own
    h = hashlib.sha256(own.encode())
    for path in helpers:
        data = path.read_bytes() if path.is_file() else b"<missing>"
        # named relative to the adapter's folder: the same in a checkout and an install
        h.update(f"\n{os.path.relpath(path, main.parent)}:".encode())
        h.update(hashlib.sha256(data).hexdigest().encode())
    return h.hexdigest()


def helper_files(main: Path, declared: tuple[str, ...] = ()) -> list[Path]:
    """The files besides ``main`` that decide its behaviour: modules of its own folder and of
    ``benchmark.layers`` that it imports (directly or through each other), and ``declared``
    paths relative to it."""
    folder = main.parent.resolve()
    found: dict[Path, None] = {}
    queue = [main.resolve()]
    while queue:
        for path in _local_imports(queue.pop(), folder):
            if path != main.resolve() and path not in found:
                found[path] = None
                queue.append(path)
    for name in declared:
        found.setdefault((folder / name).resolve(), None)
    return sorted(found)


def _local_imports(path: Path, folder: Path) -> list[Path]:
    """Files in ``folder`` (or its sub-packages) that ``path`` imports."""
    import ast

    try:
        tree = ast.parse(path.read_bytes(), str(path))
    except (OSError, SyntaxError, ValueError):
        return []
    package = folder.name if (folder / "__init__.py").is_file() else None
    names: list[list[str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name.split(".") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = (node.module or "").split(".") if node.module else []
            if node.level > 1:
                continue  # above its folder
            names += [[*base, alias.name] for alias in node.names]
            if base:
                names.append(base)
    out = []
    layers = Path(__file__).resolve().parent / "layers"
    for parts in names:
        if parts[:2] == ["benchmark", "layers"] and len(parts) > 2:
            shared = layers / f"{parts[2]}.py"  # the shared method building blocks
            if shared.is_file():
                out.append(shared)
            continue
        if package and len(parts) > 1 and parts[0] == package:
            parts = parts[1:]  # ``from adapters.helper import x`` inside adapters/
        for depth in range(len(parts), 0, -1):
            stem = folder.joinpath(*parts[:depth])
            for candidate in (stem.with_suffix(".py"), stem / "__init__.py"):
                if candidate.is_file():
                    out.append(candidate.resolve())
                    break
            else:
                continue
            break
    return out


def describe_device(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"device": str(device), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    else:
        info["cpu"] = platform.processor() or platform.machine()
    return info
