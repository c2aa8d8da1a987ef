"""Names of a package loaded on first use (PEP 562): importing the package costs next to
nothing, and a command or a core that never touches a name never loads its module."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping


def lazy_attributes(package: str, where: Mapping[str, str]) -> Callable[[str], object]:
    """A module ``__getattr__`` for ``package``: ``where`` maps each name to the module
    that defines it, or to "" for a subpackage of that name."""
    def __getattr__(name: str) -> object:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module '{package}' has no attribute '{name}'")
        value = importlib.import_module(f"{package}.{name}") if not module \
            else getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)  # once loaded, a plain attribute
        return value

    return __getattr__
