"""Real-socket helpers: a server in this loop or in a thread, and a lossy UDP proxy.

The proxy stands between a TFTP client and server the way a NAT would: every address
on one side gets its own socket on the other, so the client still sees a fresh port
(the server's TID) answer its request.  Datagrams crossing it are dropped, duplicated,
delayed and reordered by a seeded random generator.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
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


@dataclass
class LossyProxy:
    """A seeded lossy NAT between clients and one server address."""

    server: Addr
    rng: random.Random
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    delay_s: float = 0.0005
    forwarded: int = 0
    dropped: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _front: socket.socket | None = None
    _back: dict[Addr, socket.socket] = field(default_factory=dict)        # client -> back
    _fronts: dict[tuple[Addr, Addr], socket.socket] = field(default_factory=dict)
    _sockets: list[socket.socket] = field(default_factory=list)

    @property
    def port(self) -> int:
        assert self._front is not None
        return int(self._front.getsockname()[1])

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._front = self._socket()
        self._watch(self._front, lambda data, src: self._from_client(data, src, self.server))

    def close(self) -> None:
        assert self._loop is not None
        for sock in self._sockets:
            self._loop.remove_reader(sock.fileno())
            sock.close()

    def _socket(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        self._sockets.append(sock)
        return sock

    def _watch(self, sock: socket.socket, handler: Any) -> None:
        def readable() -> None:
            while True:
                try:
                    data, src = sock.recvfrom(70000)
                except BlockingIOError:
                    return
                except OSError:
                    continue  # an ICMP error from a vanished peer
                handler(data, src)
        assert self._loop is not None
        self._loop.add_reader(sock.fileno(), readable)

    def _from_client(self, data: bytes, client: Addr, target: Addr) -> None:
        back = self._back.get(client)
        if back is None:
            back = self._back[client] = self._socket()
            self._watch(back, lambda data, src: self._from_server(data, src, client))
        self._forward(back, data, target)

    def _from_server(self, data: bytes, server_tid: Addr, client: Addr) -> None:
        key = (client, server_tid)
        front = self._fronts.get(key)
        if front is None:
            front = self._fronts[key] = self._socket()
            self._watch(front, lambda data, src: self._from_client(data, src, server_tid))
        self._forward(front, data, client)

    def _forward(self, sock: socket.socket, data: bytes, dst: Addr) -> None:
        assert self._loop is not None
        copies = 2 if self.rng.random() < self.duplicate else 1
        for _ in range(copies):
            if self.rng.random() < self.loss:
                self.dropped += 1
                continue
            delay = self.delay_s * (4 if self.rng.random() < self.reorder else 1)
            self._loop.call_later(delay, self._send, sock, data, dst)

    def _send(self, sock: socket.socket, data: bytes, dst: Addr) -> None:
        with contextlib.suppress(OSError):
            sock.sendto(data, dst)
            self.forwarded += 1

