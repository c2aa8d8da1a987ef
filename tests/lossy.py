"""One seeded lossy network for every test: what a bad link does to each datagram
(``Impairment``), applied in memory on a virtual clock (``LossyLink``, for the sans-I/O
cores) or between real UDP sockets (``LossyUdpRelay``, for the drivers).

The same seed gives the same fates, so a failure can be replayed.
"""

from __future__ import annotations

import contextlib
import heapq
import random
import selectors
import socket
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

A = TypeVar("A", bound=Hashable)
UdpAddr = tuple[Any, ...]
OnDatagram = Callable[[socket.socket, bytes, UdpAddr], None]  # (arrived on, data, source)
MAX_DATAGRAM = 65536


@dataclass
class Impairment:
    """Loss, duplication, reordering and delay, each datagram drawn from ``rng``."""

    rng: random.Random
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0  # a reordered copy is held back three delays: overtaken
    delay_s: float = 0.001
    jitter_s: float = 0.0

    def fates(self) -> list[tuple[float, bool]]:
        """(delay, reordered) of each copy of one datagram that arrives; [] if lost."""
        copies = 2 if self.rng.random() < self.duplicate else 1
        arriving = []
        for _ in range(copies):
            if self.rng.random() < self.loss:
                continue
            delay = self.delay_s + self.rng.random() * self.jitter_s
            reordered = self.rng.random() < self.reorder
            arriving.append((delay + 3 * self.delay_s if reordered else delay, reordered))
        return arriving


@dataclass
class LossyLink(Generic[A]):
    """Datagrams in flight between simulated addresses, on the caller's clock.

    Jitter alone keeps each path's order, as real links do; only a reordered copy is
    overtaken.  ``keep`` is a test's own say on each datagram: False drops it.
    """

    impairment: Impairment
    keep: Callable[[bytes, A, A], bool] | None = None
    sent: int = 0
    lost: int = 0
    _last_at: dict[tuple[A, A], float] = field(default_factory=dict)
    _queue: list[tuple[float, int, bytes, A, A]] = field(default_factory=list)
    _seq: int = 0

    def send(self, data: bytes, src: A, dst: A, now: float) -> None:
        self.sent += 1
        if self.keep is not None and not self.keep(data, src, dst):
            self.lost += 1
            return
        fates = self.impairment.fates()
        self.lost += not fates
        for delay, reordered in fates:
            at = now + delay
            if not reordered:
                at = max(at, self._last_at.get((src, dst), 0.0))
                self._last_at[(src, dst)] = at
            self._seq += 1
            heapq.heappush(self._queue, (at, self._seq, data, src, dst))

    def next_delivery(self) -> float | None:
        return self._queue[0][0] if self._queue else None

    def pop_due(self, now: float) -> tuple[bytes, A, A] | None:
        """The next datagram due by ``now`` (its data, source, destination), or None."""
        if self._queue and self._queue[0][0] <= now:
            _, _, data, src, dst = heapq.heappop(self._queue)
            return data, src, dst
        return None


def lossy_link(seed: int = 0, **impairment: Any) -> LossyLink[Any]:
    """A ``LossyLink`` drawing from ``random.Random(seed)``."""
    keep = impairment.pop("keep", None)
    return LossyLink(Impairment(random.Random(seed), **impairment), keep=keep)


class LossyUdpRelay:
    """A lossy NAT on 127.0.0.1 in front of the UDP server ``upstream``, on a thread.

    Each client gets its own socket towards the server; answers from the server's own
    address go back through the socket the client wrote to, answers from another server
    port (a TFTP transfer ID) through a socket of their own, so the client sees a fresh
    port answer as it would without the relay.
    """

    def __init__(self, upstream: UdpAddr, impairment: Impairment) -> None:
        self._upstream = upstream
        self._impairment = impairment
        self.forwarded = 0
        self.dropped = 0
        self._selector = selectors.DefaultSelector()
        self._sockets: list[socket.socket] = []
        self._towards_server: dict[UdpAddr, socket.socket] = {}  # client -> its socket
        self._towards_client: dict[tuple[UdpAddr, UdpAddr], socket.socket] = {}
        self._due: list[tuple[float, int, socket.socket, bytes, UdpAddr]] = []
        self._seq = 0
        self._front = self._socket(lambda front, data, client: self._from_client(
            front, data, client, self._upstream))
        self.port = int(self._front.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LossyUdpRelay:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        for sock in self._sockets:
            sock.close()
        self._selector.close()

    def _socket(self, on_datagram: OnDatagram) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        self._sockets.append(sock)
        self._selector.register(sock, selectors.EVENT_READ, on_datagram)
        return sock

    def _run(self) -> None:
        while not self._stop.is_set():
            timeout = 0.1
            if self._due:
                timeout = min(timeout, max(0.0, self._due[0][0] - time.monotonic()))
            for key, _ in self._selector.select(timeout):
                self._drain(key.fileobj, key.data)  # type: ignore[arg-type]
            now = time.monotonic()
            while self._due and self._due[0][0] <= now:
                _, _, sock, data, destination = heapq.heappop(self._due)
                self.forwarded += 1  # before the send: a reader woken by it sees the count
                with contextlib.suppress(OSError):  # a peer gone: as the network would
                    sock.sendto(data, destination)

    def _drain(self, sock: socket.socket, on_datagram: OnDatagram) -> None:
        for _ in range(64):  # bounded: the other sockets get their turn
            try:
                data, source = sock.recvfrom(MAX_DATAGRAM)
            except BlockingIOError:
                return
            except OSError:  # ICMP from a closed port, reported on this call
                continue
            on_datagram(sock, data, source)

    def _from_client(self, front: socket.socket, data: bytes, client: UdpAddr,
                     server: UdpAddr) -> None:
        back = self._towards_server.get(client)
        if back is None:
            back = self._socket(lambda _, data, source: self._from_server(data, source,
                                                                           client))
            self._towards_server[client] = back
        self._towards_client.setdefault((client, server), front)
        self._forward(back, data, server)

    def _from_server(self, data: bytes, server: UdpAddr, client: UdpAddr) -> None:
        front = self._towards_client.get((client, server))
        if front is None:
            front = self._socket(lambda front, data, source: self._from_client(
                front, data, source, server))
            self._towards_client[(client, server)] = front
        self._forward(front, data, client)

    def _forward(self, sock: socket.socket, data: bytes, destination: UdpAddr) -> None:
        fates = self._impairment.fates()
        self.dropped += not fates
        now = time.monotonic()
        for delay, _reordered in fates:
            self._seq += 1
            heapq.heappush(self._due, (now + delay, self._seq, sock, data, destination))
