"""Real-socket helpers: a server in this loop or in a thread (the lossy UDP relay
between them is tests/lossy.py's)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

from sockferry.addresses import HostPort
from sockferry.tftp.server import TftpServer, TftpServerConfig

Addr = tuple[Any, ...]


def client_socket(timeout_s: float = 3.0) -> socket.socket:
    """A blocking UDP socket on 127.0.0.1 for a raw peer, reads bounded by ``timeout_s``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(timeout_s)
    return sock


@contextlib.asynccontextmanager
async def running_server(config: TftpServerConfig, host: str = "127.0.0.1",
                         ) -> AsyncIterator[tuple[TftpServer, int]]:
    server = TftpServer(config)
    await server.start([HostPort(host, 0)])
    try:
        yield server, server.addresses[0][1]
    finally:
        await server.close()


@contextlib.contextmanager
def server_thread(config: TftpServerConfig, host: str = "127.0.0.1",
                  ) -> Iterator[tuple[TftpServer, int]]:
    """Our server on its own event loop, for peers driven by blocking subprocess calls."""
    started = threading.Event()
    state: dict[str, Any] = {}

    async def main() -> None:
        async with running_server(config, host) as (server, port):
            state.update(server=server, port=port, loop=asyncio.get_running_loop(),
                         stop=asyncio.Event())
            started.set()
            await state["stop"].wait()

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # surfaced to the test below
            state["error"] = exc
            started.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(10), "the server thread did not start"
    if "error" in state:
        raise state["error"]
    try:
        yield state["server"], state["port"]
    finally:
        state["loop"].call_soon_threadsafe(state["stop"].set)
        thread.join(10)
