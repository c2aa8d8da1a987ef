"""TFTP (RFC 1350 with RFC 2347-2349 and 7440 options): pure packet and transfer cores,
an asyncio client and server.  ``sockferry.tftp.get``, ``put`` and ``serve`` (in
``library.py``) load on first use, so the cores import nothing more by importing this
package."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sockferry.lazy import lazy_attributes

__all__ = ["get", "put", "serve"]

if TYPE_CHECKING:
    from sockferry.tftp.library import get, put, serve


__getattr__ = lazy_attributes(__name__, dict.fromkeys(__all__, "sockferry.tftp.library"))
