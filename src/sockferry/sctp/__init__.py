"""SCTP: one-to-many endpoints over a userspace stack in UDP or the kernel's SCTP.

The backend names live here, free of imports, so that a command line can offer them
without loading an SCTP stack; ``sockferry.sctp.open_endpoint``, ``send`` and ``serve``
(in ``library.py``) load on first use.
"""

import importlib
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from sockferry.sctp.library import open_endpoint, send, serve, start_sctp_server

_LIBRARY = ("open_endpoint", "send", "serve", "start_sctp_server")
__all__ = ["TRANSPORTS", "Transport", "open_endpoint", "send", "serve", "start_sctp_server"]

# Backends a user can ask for; "auto" is the kernel's where it has SCTP, else udp.
Transport = Literal["auto", "kernel", "udp"]
TRANSPORTS: tuple[Transport, ...] = ("auto", "kernel", "udp")


def __getattr__(name: str) -> object:
    if name not in _LIBRARY:
        raise AttributeError(f"module 'sockferry.sctp' has no attribute '{name}'")
    value = getattr(importlib.import_module("sockferry.sctp.library"), name)
    globals()[name] = value
    return value
