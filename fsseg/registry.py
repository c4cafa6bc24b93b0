"""Named registries: segmenters (methods), benchmarks and backbones are each found by name in one table.

A new entry is one decorated definition in its own file. ``get("package.module:name")`` imports
``package.module`` first, so a plugin outside fsseg (or a test file) registers itself when a config
names it, in any process that reads the config (a DDP rank, ``fsseg export`` of its checkpoint).
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, Iterator, Optional, Sequence


class RegistryError(KeyError):
    """An unknown or doubly registered name (a ``KeyError`` whose message reads as one line)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class Registry:
    """Name -> object, with aliases (case-, space- and ``-``/``_``-insensitive) and plugin imports."""

    def __init__(self, kind: str, flag: str = "") -> None:
        self.kind = kind  # "segmenter", "benchmark", ...: names the table in errors
        self.flag = flag  # the option that takes the name, named in errors
        self._entries: Dict[str, Any] = {}
        self._aliases: Dict[str, str] = {}

    @staticmethod
    def _key(name: str) -> str:
        return str(name).strip().lower().replace(" ", "").replace("-", "_")

    def register(self, name: str, aliases: Sequence[str] = ()) -> Callable[[Any], Any]:
        """Decorator: ``@REGISTRY.register("name", aliases=("other name",))``."""

        def add(obj: Any) -> Any:
            for key in (name, *aliases):
                k = self._key(key)
                owner = self._aliases.get(k)
                if owner is not None and owner != name and self._entries[owner] is not obj:
                    raise RegistryError(f"{self.kind} name {key!r} is already registered for {owner!r}")
                self._aliases[k] = name
            self._entries[name] = obj
            return obj

        return add

    def canonical(self, name: str) -> str:
        """The registered name for ``name`` (an alias, or ``module:name`` after importing ``module``)."""
        k = self._key(name)
        if k not in self._aliases and ":" in str(name):
            module, _, short = str(name).partition(":")
            try:
                importlib.import_module(module.strip())
            except ImportError as e:
                raise RegistryError(f"{self.kind} {name!r}: cannot import {module.strip()!r} ({e})") from None
            k = self._key(short)
        if k not in self._aliases:
            where = f" ({self.flag})" if self.flag else ""
            raise RegistryError(f"unknown {self.kind} {name!r}{where}; registered: {', '.join(self.names())}; "
                                f"a {self.kind} defined elsewhere is named 'package.module:name'")
        return self._aliases[k]

    def get(self, name: str) -> Any:
        return self._entries[self.canonical(name)]

    def names(self, where: Optional[Callable[[Any], bool]] = None) -> list:
        """Registered names in registration order (``where`` filters on the registered object)."""
        return [n for n, obj in self._entries.items() if where is None or where(obj)]

    def __contains__(self, name: str) -> bool:
        return self._key(name) in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
