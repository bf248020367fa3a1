"""Name -> class registries for adapters and suites, filled when their modules are imported.

Importing ``adapters`` or ``suites`` registers everything in them (as in timm): there is no
hand-kept list. Duplicate names are errors; unknown names suggest close matches.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T", bound=type)


class UnknownNameError(KeyError):
    """Raised for a name that is not registered; the message suggests close matches."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0])


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator: ``@ADAPTERS.register("adabn")``. Sets ``cls.name``."""

        def add(cls: T) -> T:
            if name in self._items and self._items[name] is not cls:
                other = self._items[name]
                raise ValueError(
                    f"{self.kind} name {name!r} is already registered by "
                    f"{other.__module__}.{other.__qualname__}"
                )
            cls.name = name  # type: ignore[attr-defined]
            self._items[name] = cls
            return cls

        return add

    def unregister(self, name: str) -> None:
        """Forget a name (a reloaded file adapter replaces its old class; tests clean up)."""
        self._items.pop(name, None)

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._items), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            known = ", ".join(sorted(self._items))
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}{hint} (known: {known})"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._items.items())


ADAPTERS: Registry = Registry("adapter")
SUITES: Registry = Registry("suite")


def load_builtins() -> None:
    """Import the built-in adapter and suite packages (importing is registering), then the
    adapters installed packages declare in the ``shiftbench.adapters`` entry-point group."""
    import adapters  # noqa: F401
    import suites  # noqa: F401
    from benchmark.plugins import load_entry_point_adapters

    load_entry_point_adapters()
