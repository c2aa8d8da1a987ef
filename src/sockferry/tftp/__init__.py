"""TFTP (RFC 1350 with RFC 2347-2349 and 7440 options): pure packet and transfer cores,
an asyncio client and server.  ``sockferry.tftp.get``, ``put`` and ``serve`` (in
``library.py``) load on first use, so the cores import nothing more by importing this
package."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__all__ = ["get", "put", "serve"]

if TYPE_CHECKING:
    from sockferry.tftp.library import get, put, serve


def __getattr__(name: str) -> object:
    if name not in __all__:
        raise AttributeError(f"module 'sockferry.tftp' has no attribute '{name}'")
    value = getattr(importlib.import_module("sockferry.tftp.library"), name)
    globals()[name] = value
    return value
