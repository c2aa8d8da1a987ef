"""sockferry: files and messages over plain sockets (TCP, UDP/TFTP, SCTP).

The library (``sockferry.api``)::

    async with sockferry.connect("files.example", token=TOKEN) as client:
        await client.put("report.pdf", "inbox/report.pdf")
        for entry in await client.list("inbox"):
            print(entry.path, entry.size)

    server = await sockferry.serve("/srv/files", port=2345, token=TOKEN)
    await server.serve_forever()

Every error is a ``sockferry.SockferryError``.  The names below are loaded on first use,
so that ``import sockferry`` (and ``sockferry --version``) costs next to nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sockferry.lazy import lazy_attributes

__version__ = "0.1.0"

_EXPORTS = {
    "connect": "sockferry.api", "serve": "sockferry.api", "Client": "sockferry.api",
    "Server": "sockferry.library", "Transfer": "sockferry.library",
    "DEFAULT_PORT": "sockferry.api",
    "Entry": "sockferry.entries", "Kind": "sockferry.entries",
    "SockferryError": "sockferry.errors", "UsageError": "sockferry.errors",
    "ProtocolError": "sockferry.errors", "RemoteProtocolError": "sockferry.errors",
    "AuthenticationFailed": "sockferry.errors", "IdentityRefused": "sockferry.errors",
    "PeerRefused": "sockferry.errors", "TransferTimeout": "sockferry.errors",
    "NetworkError": "sockferry.errors", "StorageError": "sockferry.errors",
    "PathRefused": "sockferry.errors", "NotAvailable": "sockferry.errors",
}

_SUBPACKAGES = ("tftp", "sctp")

__all__ = [  # the names of _EXPORTS (tests/test_api.py keeps them in step)
    "DEFAULT_PORT",
    "AuthenticationFailed",
    "Client",
    "Entry",
    "IdentityRefused",
    "Kind",
    "NetworkError",
    "NotAvailable",
    "PathRefused",
    "PeerRefused",
    "ProtocolError",
    "RemoteProtocolError",
    "Server",
    "SockferryError",
    "StorageError",
    "Transfer",
    "TransferTimeout",
    "UsageError",
    "__version__",
    "connect",
    "sctp",
    "serve",
    "tftp",
]

if TYPE_CHECKING:
    from sockferry import sctp, tftp
    from sockferry.api import DEFAULT_PORT, Client, connect, serve
    from sockferry.entries import Entry, Kind
    from sockferry.errors import (
        AuthenticationFailed,
        IdentityRefused,
        NetworkError,
        NotAvailable,
        PathRefused,
        PeerRefused,
        ProtocolError,
        RemoteProtocolError,
        SockferryError,
        StorageError,
        TransferTimeout,
        UsageError,
    )
    from sockferry.library import Server, Transfer


__getattr__ = lazy_attributes(__name__, {**_EXPORTS, **dict.fromkeys(_SUBPACKAGES, "")})


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
