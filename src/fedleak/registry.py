"""Name → factory lookup tables filled by a decorator (timm's ``@register_model`` style).

Every pluggable family (datasets, models, attacks, …) owns one :class:`Registry`. Adding a new member
is one decorated definition; no ``if/elif`` chain elsewhere needs to know about it.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from fedleak.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of factories with a helpful error for unknown names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator adding ``obj`` under ``name``; a duplicate name is a programming error."""

        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        """Return the entry for ``name`` or raise a one-line :class:`ConfigError`."""
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(self._unknown(name)) from None

    def check(self, name: str) -> str:
        """Validator form of :meth:`get` for pydantic fields: ``ValueError`` for unknown names."""
        if name not in self._entries:
            raise ValueError(self._unknown(name))
        return name

    def _unknown(self, name: str) -> str:
        close = difflib.get_close_matches(str(name), self._entries, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown {self.kind} {name!r}{hint}; choose one of: {', '.join(sorted(self._entries))}"

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))
