"""What the library's servers and transfers share, whatever the protocol: a running
server's lifecycle (``asyncio.Server``'s), a copied file's result, progress callbacks."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Self

from sockferry.errors import UsageError
from sockferry.records import record

# Told the bytes of a file that moved (or were skipped as a hole) since the last call.
ProgressCallback = Callable[[int], None]


@record
class Transfer:
    """One file copied: where from, where to, and its size in bytes."""

    source: str
    target: str
    size: int


class Server:
    """A running server (made by ``sockferry.serve``, ``sockferry.tftp.serve`` or
    ``sockferry.sctp.serve``), with the lifecycle of ``asyncio.Server``: ``close()``
    stops accepting, ``wait_closed()`` waits until it has stopped (a ferry server lets
    the connections in flight finish for ``grace`` seconds), ``serve_forever()`` serves
    until cancelled; ``async with`` closes it."""

    def __init__(self, stop: Callable[[], Awaitable[None]], addresses: list[str],
                 fingerprint: str | None = None) -> None:
        self._stop = stop
        self._stopping: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self._failure: BaseException | None = None
        self.addresses = addresses
        """Where it listens, as bound (a port 0 is the port the system chose)."""
        self.fingerprint = fingerprint
        """With TLS: the certificate's SHA-256 fingerprint, for clients to pin."""

    @property
    def port(self) -> int:
        """The port of the first IP address (convenient after asking for port 0)."""
        for address in self.addresses:
            if not address.startswith("unix:"):
                # "HOST:PORT", or "HOST:PORT (SCTP)" for an SCTP endpoint
                return int(address.partition(" ")[0].rpartition(":")[2])
        raise UsageError("this server listens on unix sockets only")

    def is_serving(self) -> bool:
        """Whether it still accepts work (``close()`` not called yet)."""
        return self._stopping is None

    def close(self) -> None:
        """Stop accepting (a ferry server's connections in flight go on for a while)."""
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(self._stop_once())

    async def _stop_once(self) -> None:
        try:
            await self._stop()
        finally:
            self._stopped.set()

    def fail(self, exc: BaseException) -> None:
        """What the server's own work died of: it closes, and ``wait_closed()`` (so
        ``serve_forever()`` too) raises ``exc`` once it has stopped."""
        self._failure = exc
        self.close()

    async def wait_closed(self) -> None:
        """Wait until the server stopped (call ``close()`` first, or another task will);
        raises what made it fail, if anything did."""
        await self._stopped.wait()
        if self._stopping is not None:
            await self._stopping
        if self._failure is not None:
            raise self._failure

    async def serve_forever(self) -> None:
        """Serve until this coroutine is cancelled, or the server is closed."""
        try:
            await self._stopped.wait()
        finally:
            self.close()
            await asyncio.shield(self.wait_closed())

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.close()
        await self.wait_closed()
