"""Adapters from outside the project: a Python file anywhere on disk, or an installed package.

Two ways in, neither edits the project:

- **A file**: ``--adapters path/to/my_adapter.py:MyAdapter``. The file is imported as a
  standalone module named ``shiftbench_file_<hash of its absolute path>`` (so two files both
  called ``my_adapter.py`` never collide) and the class is registered under its own ``name``
  attribute if the class sets one, else under its class name lower-cased (``MyAdapter`` ->
  ``myadapter``). The class records the sha256 of the exact bytes imported, which
  :func:`benchmark.provenance.source_hash` puts in every cell key: editing the file re-runs
  its cells and never mixes old and new results.
- **A package**: an installed distribution declares entry points in the group
  ``shiftbench.adapters`` (like pytest plugins), each ``name = module:Class``; the class is
  registered under the entry-point name. :func:`benchmark.registry.load_builtins` loads them.

Every class is checked against the protocol of :class:`benchmark.adapter.Adapter` when it is
loaded; problems are one-line :class:`~benchmark.errors.ShiftbenchError` messages.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import inspect
import itertools
import re
import sys
import traceback
import warnings
from collections.abc import Mapping
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from types import ModuleType

from benchmark.adapter import HOOKS, SETTINGS, Adapter, uses_source_images
from benchmark.errors import ShiftbenchError
from benchmark.registry import ADAPTERS

ENTRY_POINT_GROUP = "shiftbench.adapters"

NAME_PATTERN = re.compile(r"^[A-Za-z_][\w.\-]*$")  # what AdapterSpec.parse accepts
FILE_REFERENCE = re.compile(r"^(?P<path>.+\.py):(?P<cls>[^:()]*)$")


class AdapterLoadError(ShiftbenchError):
    """The adapter could not be loaded: missing file, import error, no such class."""


class AdapterProtocolError(ShiftbenchError):
    """The class loaded but does not follow the adapter protocol."""


class PluginWarning(UserWarning):
    """An installed plugin could not be loaded; the other adapters still work."""


_origins: dict[type, str] = {}  # class -> where it came from, for `run.py list`
_file_modules: dict[Path, tuple[str, ModuleType]] = {}  # path -> (sha256, module)
_copy_numbers = itertools.count(1)


# ---- file adapters -------------------------------------------------------------------------
def is_file_reference(text: str) -> bool:
    """``--adapters`` items naming a file (``path/x.py:Class``) rather than a registered name."""
    return ".py:" in text


def split_file_reference(reference: str) -> tuple[Path, str]:
    """``path/to/x.py:MyAdapter`` -> (absolute path, class name)."""
    match = FILE_REFERENCE.match(reference.strip())
    if not match or not match["cls"].strip().isidentifier():
        raise AdapterLoadError(
            f"cannot read adapter reference {reference!r}; expected path/to/file.py:ClassName"
        )
    return Path(match["path"]).expanduser().resolve(), match["cls"].strip()


def load_file_class(reference: str) -> tuple[type, Path, str]:
    """Import the file of ``path.py:Class`` and return (class, path, sha256 of the file),
    without checking or registering it. Raises :class:`AdapterLoadError`."""
    path, class_name = split_file_reference(reference)
    module, digest = _import_file(path)
    obj = module.__dict__.get(class_name)
    if obj is None:
        raise AdapterLoadError(_class_not_found(module, class_name, path))
    if not isinstance(obj, type):
        raise AdapterProtocolError(
            f"{path}:{class_name} is a {type(obj).__name__}, not a class; name the adapter class"
        )
    if obj.__module__ != module.__name__:
        raise AdapterProtocolError(
            f"{path}:{class_name} is imported from {obj.__module__}, not defined in that file; "
            "define your adapter class in the file you name (a subclass is fine)"
        )
    return obj, path, digest


def fresh_copy_of_file_class(path: Path, class_name: str) -> type:
    """The class from a new, separate execution of its file: class attributes and module
    globals as if nothing had run yet (``run.py check`` compares runs with and without a
    history). Not registered, not cached."""
    module_name = f"shiftbench_check_copy_{next(_copy_numbers)}"
    module = ModuleType(module_name)
    module.__file__ = str(path)
    sys.modules[module_name] = module  # as during a normal import (dataclasses need it)
    try:
        exec(compile(path.read_bytes(), str(path), "exec", dont_inherit=True), module.__dict__)
    finally:
        sys.modules.pop(module_name, None)
    return module.__dict__[class_name]


def load_file_adapter(reference: str) -> type[Adapter]:
    """Load ``path.py:Class``, check it against the protocol and register it (see module doc).

    Loading the same unchanged file again returns the same class; after an edit the file is
    imported again and the new class replaces the old one under the same name.
    """
    cls, path, digest = load_file_class(reference)
    problems = protocol_problems(cls)
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise AdapterProtocolError(f"{path}:{cls.__name__}: {problems[0]}{more}")
    cls._shiftbench_source_sha256 = digest  # type: ignore[attr-defined]  (see provenance)
    _register(cls, file_adapter_name(cls), origin=str(path))
    return cls


def file_adapter_name(cls: type) -> str:
    """The class's own ``name`` if it sets one, else its class name lower-cased. Only the
    class's own attribute counts: a subclass of a built-in must not take the built-in's name."""
    own = cls.__dict__.get("name")
    return own if isinstance(own, str) and own else cls.__name__.lower()


def _import_file(path: Path) -> tuple[ModuleType, str]:
    if not path.exists():
        raise AdapterLoadError(f"adapter file {path} does not exist; check the path")
    if not path.is_file():
        raise AdapterLoadError(f"adapter file {path} is not a file; name a .py file")
    source = path.read_bytes()
    digest = hashlib.sha256(source).hexdigest()
    cached = _file_modules.get(path)
    if cached is not None and cached[0] == digest:
        return cached[1], digest
    module_name = "shiftbench_file_" + hashlib.sha256(str(path).encode()).hexdigest()[:16]
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    # Registered before running, as a normal import does (dataclasses, pickling and
    # inspect.getsource need sys.modules[cls.__module__]).
    sys.modules[module_name] = module
    # Its folder is importable, as a script's is, so it may import sibling modules
    # (appended: an installed package of the same name still wins). Those modules are
    # part of its code identity (benchmark.provenance.source_hash).
    if str(path.parent) not in sys.path:
        sys.path.append(str(path.parent))
    try:
        # Run exactly the bytes that were hashed, so the hash is the code that ran.
        exec(compile(source, str(path), "exec", dont_inherit=True), module.__dict__)
    except KeyboardInterrupt:
        sys.modules.pop(module_name, None)
        raise
    except BaseException as exc:  # SystemExit too: a user's file must not end the run
        sys.modules.pop(module_name, None)
        raise AdapterLoadError(describe_import_error(exc, path)) from exc
    _file_modules[path] = (digest, module)
    return module, digest


def describe_import_error(exc: BaseException, path: Path) -> str:
    """One line: which line of the user's file failed, its text, and the error."""
    error = _one_line(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, SyntaxError) and exc.filename == str(path):
        text = (exc.text or "").strip()
        return (f"cannot import {path}: line {exc.lineno}: SyntaxError: {exc.msg}"
                + (f" in `{text}`" if text else ""))
    user_frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(path)]
    hint = ""
    if isinstance(exc, ModuleNotFoundError):
        hint = f"; install {exc.name!r} into this Python environment" if exc.name else ""
    if user_frames:
        frame = user_frames[-1]
        return (f"cannot import {path}: line {frame.lineno} (`{(frame.line or '').strip()}`) "
                f"raised {error}{hint}")
    return f"cannot import {path}: {error}{hint}"


def _class_not_found(module: ModuleType, class_name: str, path: Path) -> str:
    defined = [n for n, v in vars(module).items()
               if isinstance(v, type) and v.__module__ == module.__name__]
    adapters = [n for n in defined if issubclass(vars(module)[n], Adapter)]
    close = difflib.get_close_matches(class_name, defined, n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    listing = (f"adapter classes there: {', '.join(adapters)}" if adapters else
               f"classes there: {', '.join(defined)}" if defined else "it defines no class")
    return f"{path} has no class {class_name!r}{hint} ({listing})"


def _one_line(text: str) -> str:
    return " ".join(text.split())


# ---- the protocol --------------------------------------------------------------------------
def protocol_problems(cls: type) -> list[str]:
    """Everything that keeps ``cls`` from being used as an adapter, one line each (empty: ok)."""
    if not (isinstance(cls, type) and issubclass(cls, Adapter)):
        missing = [h for h in HOOKS if not callable(getattr(cls, h, None))]
        lacking = f" (it lacks {', '.join(missing)})" if missing else ""
        return [f"{getattr(cls, '__name__', cls)!s} does not subclass "
                f"benchmark.adapter.Adapter{lacking}: write `class {cls.__name__}(Adapter):` "
                "after `from benchmark.adapter import Adapter`"]
    problems = []
    for hook in HOOKS:
        problem = _hook_problem(cls, hook)
        if problem:
            problems.append(problem)
    init = _init_problem(cls)
    if init:
        problems.append(init)
    if not isinstance(cls.defaults, Mapping) or not all(isinstance(k, str) for k in cls.defaults):
        problems.append(f"{cls.__name__}.defaults must be a dict of hyper-parameter name -> "
                        f"default value, got {cls.defaults!r}")
    if cls.setting not in SETTINGS:
        problems.append(f"{cls.__name__}.setting must be one of {', '.join(SETTINGS)}, "
                        f"got {cls.setting!r}")
    elif uses_source_images(cls.setting) and not _positive_int(
            cls.defaults.get("source_images") if isinstance(cls.defaults, Mapping) else None):
        problems.append(f"{cls.__name__}.setting is {cls.setting!r}: give it an integer "
                        "hyper-parameter source_images >= 1 (how many unlabeled source images "
                        "use_source gets), e.g. defaults = {..., 'source_images': 2000}")
    for attr in ("tasks", "requires"):
        if not isinstance(getattr(cls, attr), (set, frozenset)):
            problems.append(f"{cls.__name__}.{attr} must be a frozenset of strings, "
                            f"got {getattr(cls, attr)!r}")
    own_name = cls.__dict__.get("name")
    if own_name and not (isinstance(own_name, str) and NAME_PATTERN.match(own_name)):
        problems.append(f"{cls.__name__}.name {own_name!r} is not a valid adapter name; use "
                        "letters, digits, '_', '-' and '.', starting with a letter")
    return problems


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _hook_problem(cls: type, hook: str) -> str | None:
    implementation = getattr(cls, hook)
    reference = getattr(Adapter, hook)
    if implementation is reference:
        return None
    static = inspect.getattr_static(cls, hook)
    if isinstance(static, (staticmethod, classmethod)) or not callable(implementation):
        return f"{cls.__name__}.{hook} must be a plain method: def {hook}{_signature(reference)}"
    try:
        signature = inspect.signature(implementation)
    except (TypeError, ValueError):
        return None  # builtins without signatures: cannot tell, let the run decide
    positional = len(inspect.signature(reference).parameters)  # self included
    try:
        signature.bind(*range(positional))
    except TypeError:
        return (f"{cls.__name__}.{hook}{signature} does not match the protocol: write "
                f"def {hook}{_signature(reference)} (extra parameters need defaults)")
    return None


def _init_problem(cls: type) -> str | None:
    if cls.__init__ is Adapter.__init__:
        return None
    try:
        signature = inspect.signature(cls.__init__)
    except (TypeError, ValueError):
        return None
    try:
        signature.bind(None, **dict(cls.defaults))
    except TypeError:
        return (f"{cls.__name__}.__init__{signature} must accept every hyper-parameter in "
                "`defaults` as a keyword: def __init__(self, **hparams) and call "
                "super().__init__(**hparams)")
    return None


def _signature(function: object) -> str:
    return str(inspect.signature(function)).replace("'", "")  # type: ignore[arg-type]


# ---- entry-point plugins -------------------------------------------------------------------
def load_entry_point_adapters() -> list[str]:
    """Register the adapters of the ``shiftbench.adapters`` entry points of installed packages;
    returns their names. A plugin that fails to load is a :class:`PluginWarning` and skipped,
    so one broken package does not take the benchmark down."""
    loaded = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        origin = _distribution(ep)
        where = f"plugin adapter {ep.name!r} ({ep.value}, from {origin})"
        try:
            cls = ep.load()
        except Exception as exc:
            warnings.warn(f"{where} failed to import ({_one_line(f'{type(exc).__name__}: {exc}')})"
                          "; fix or uninstall that package", PluginWarning, stacklevel=2)
            continue
        problems = protocol_problems(cls) if isinstance(cls, type) else [
            f"it is a {type(cls).__name__}, not a class"]
        if not NAME_PATTERN.match(ep.name):
            problems.append(f"entry-point name {ep.name!r} is not a valid adapter name")
        try:
            if problems:
                raise AdapterProtocolError(problems[0])
            _register(cls, ep.name, origin=origin)
        except ShiftbenchError as exc:
            warnings.warn(f"{where} skipped: {exc}", PluginWarning, stacklevel=2)
            continue
        loaded.append(ep.name)
    return loaded


def _distribution(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "package"
    return f"package {dist.metadata['Name']} {dist.version}"


# ---- registry --------------------------------------------------------------------------------
def _register(cls: type, name: str, origin: str) -> None:
    if name in ADAPTERS:
        existing = ADAPTERS.get(name)
        if existing is not cls:
            if _origins.get(existing) == origin:  # an older version of the same file
                ADAPTERS.unregister(name)
            else:
                raise AdapterProtocolError(
                    f"adapter name {name!r} of {origin} is already taken by "
                    f"{adapter_origin(existing)} ({existing.__module__}.{existing.__qualname__});"
                    " give your class another `name = \"...\"`"
                )
    ADAPTERS.register(name)(cls)
    _origins[cls] = origin


def adapter_origin(cls: type) -> str:
    """Where a registered adapter came from: ``built-in``, its file path, or its package."""
    if cls in _origins:
        return _origins[cls]
    if cls.__module__.split(".")[0] == "adapters":
        return "built-in"
    return f"module {cls.__module__}"
