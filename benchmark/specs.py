"""Parsing adapter specifications from the command line: ``tent``, ``tent(lr=1e-4,steps=2)``,
and adapters in a user's file: ``path/to/my_adapter.py:MyAdapter(k=v)`` (see benchmark.plugins).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Any

from benchmark.adapter import Adapter, hparams_text
from benchmark.plugins import is_file_reference, load_file_adapter
from benchmark.registry import ADAPTERS

_SPEC = re.compile(r"^\s*([A-Za-z_][\w.\-]*)\s*(?:\((.*)\))?\s*$")
_FILE_SPEC = re.compile(r"^\s*(.+\.py:[^()]*?)\s*(?:\((.*)\))?\s*$")


@dataclass(frozen=True)
class AdapterSpec:
    """An adapter name plus hyper-parameter overrides; hashable, so usable as a dict key.

    ``then`` is the test-time part of a composition ``train_part+test_part``
    (benchmark.compose)."""

    name: str
    overrides: tuple[tuple[str, Any], ...] = ()
    then: AdapterSpec | None = None
    file: str | None = None  # ``path.py:Class`` of a file adapter (imported where it runs)

    @classmethod
    def parse(cls, text: str) -> AdapterSpec:
        """A registered name, or a file adapter (loaded and registered now, under its name),
        or two of them joined by ``+`` (a training-time then a test-time adapter)."""
        parts = _split_top_level(text, "+")
        if len(parts) > 2:
            raise ValueError(f"cannot parse adapter {text!r}: compose at most two adapters, "
                             "a training-time one and a test-time one (ibn_a+tent)")
        if len(parts) == 2:
            first, second = (cls._parse_single(part) for part in parts)
            return cls(first.name, first.overrides, second, first.file)
        return cls._parse_single(text)

    @property
    def display(self) -> str:
        return self.name if self.then is None else f"{self.name}+{self.then.display}"

    @property
    def text(self) -> str:
        """The command-line form, parts and hyper-parameters included: ``parse(text)``
        gives this spec back."""
        inner = hparams_text(self.overrides)
        own = (self.file or self.name) + (f"({inner})" if inner else "")
        return own if self.then is None else f"{own}+{self.then.text}"

    @classmethod
    def _parse_single(cls, text: str) -> AdapterSpec:
        file_match = _FILE_SPEC.match(text) if is_file_reference(text) else None
        if file_match:
            # Not imported here: a file adapter's code runs only in adapter processes
            # (benchmark.engine.isolation). Its name until then: the class name, lower-cased.
            reference, inner = file_match.groups()
            name = reference.rsplit(":", 1)[1].strip().lower()
        else:
            match = _SPEC.match(text)
            if not match:
                raise ValueError(f"cannot parse adapter {text!r}; expected name, "
                                 "name(key=value,...) or path/to/file.py:ClassName")
            name, inner = match.groups()
        overrides: dict[str, Any] = {}
        for item in filter(None, (part.strip() for part in (inner or "").split(","))):
            key, sep, value = item.partition("=")
            if not sep or not key.strip().isidentifier():
                raise ValueError(f"in adapter {text!r}: expected key=value, got {item!r}")
            overrides[key.strip()] = _literal(value.strip())
        return cls(name, tuple(sorted(overrides.items())),
                   file=reference if file_match else None)

    def build(self) -> Adapter:
        cls = load_file_adapter(self.file) if self.file else ADAPTERS.get(self.name)
        adapter = cls(**dict(self.overrides))
        if self.then is None:
            return adapter
        from benchmark.compose import Composite

        return Composite(adapter, self.then.build())


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word such as sgd


def split_list(text: str) -> list[str]:
    """Split ``a,b(x=1,y=2),c`` on the commas that are not inside parentheses."""
    return _split_top_level(text, ",")


def _split_top_level(text: str, separator: str) -> list[str]:
    items, depth, current = [], 0, ""
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch == separator and depth == 0:
            items.append(current)
            current = ""
        else:
            current += ch
    items.append(current)
    return [item.strip() for item in items if item.strip()]
