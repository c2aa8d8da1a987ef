"""SCTP: one-to-many endpoints over a userspace stack in UDP or the kernel's SCTP.

The backend names live here, free of imports, so that a command line can offer them
without loading an SCTP stack; ``sockferry.sctp.open_endpoint``, ``send`` and ``serve``
(in ``library.py``) load on first use.
"""

from typing import TYPE_CHECKING, Literal

from sockferry.lazy import lazy_attributes

if TYPE_CHECKING:
    from sockferry.sctp.library import open_endpoint, send, serve, start_sctp_server

_LIBRARY = ("open_endpoint", "send", "serve", "start_sctp_server")
__all__ = ["TRANSPORTS", "Transport", "open_endpoint", "send", "serve", "start_sctp_server"]

# Backends a user can ask for; "auto" is the kernel's where it has SCTP, else udp.
Transport = Literal["auto", "kernel", "udp"]
TRANSPORTS: tuple[Transport, ...] = ("auto", "kernel", "udp")


__getattr__ = lazy_attributes(__name__, dict.fromkeys(_LIBRARY, "sockferry.sctp.library"))
