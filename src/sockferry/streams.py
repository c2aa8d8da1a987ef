"""A connected stream socket on the running event loop.

``receive`` reads into one buffer shared by every stream of the thread (an idle
connection holds no buffer at all), ``send`` hands a list of buffers to one
``sendmsg`` (scatter/gather: many small frames leave together), ``send_file`` reads a
file in pieces and hashes and sends each while it is in the CPU's cache,
``receive_into_file`` copies a large body from the socket into its file in a worker
thread, hashing it on the way, ``shutdown_write`` ends our side while the peer's verdict
can still be read.  Every call is bounded by ``idle_timeout_s``: a peer that stops
reading or writing for that long is given up as gone.  Socket errors become
``NetworkError`` sentences through ``sockets.network_error``.

Why copies rather than sendfile and splice: every byte is hashed at both ends, so it
passes through the CPU anyway, and hashing it on its way through user space, while it
is in the cache, costs less than moving it kernel to kernel and reading it a second
time to hash it (`bench/body_paths.py`, 1 GiB over loopback on tmpfs, medians of 9
rounds: receiving 1,480 MB/s at 0.72 s CPU against 1,346 MB/s at 0.92 s for splice plus
a thread reading the file back; sending 0.51 s CPU against 0.61 s for sendfile plus a
hashing thread, at 1,292 against 1,514 MB/s on its own — on two shared cores the CPU is
what counts, and whole transfers got faster: bench/results/latest.md).  Files are read,
not mapped: a mapping read past a truncation kills the process with SIGBUS.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import select
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

from sockferry.errors import StorageError, TransferTimeout
from sockferry.pools import shared_pool
from sockferry.sockets import network_error, peer_and_local

# Linux's IOV_MAX: sendmsg takes at most this many buffers at once.
IOV_MAX = 1024
# One receive buffer per thread, shared by all its streams: bytes are read into it only
# when they are there and are consumed before the reading task awaits again, so 10,000
# idle connections cost no buffer memory (a 1 MiB buffer each cost ~1 GiB).
RECEIVE_BUFFER = 1024 * 1024
_shared = threading.local()


def _shared_buffer() -> memoryview:
    view: memoryview | None = getattr(_shared, "view", None)
    if view is None:
        view = _shared.view = memoryview(bytearray(RECEIVE_BUFFER))
    return view


class Hasher(Protocol):
    """What a stream feeds file bytes to on their way (``ferry.digests.Hasher``)."""

    def update(self, data: memoryview, /) -> object: ...


class Stream(Protocol):
    """What the ferry drivers need of a connection: a ``SocketStream``, or an SCTP
    association carrying the same bytes (``ferry/over_sctp.py``)."""

    peer: str
    local: str
    bytes_in: int
    bytes_out: int

    async def receive(self) -> memoryview:
        """The next bytes in order; empty once the peer ended its side.  The view is
        valid only until the caller next awaits: consume it (or copy it) before."""
        ...

    async def send(self, buffers: Sequence[bytes | bytearray | memoryview]) -> None: ...

    async def send_file(self, fd: int, offset: int, count: int, hasher: Hasher) -> None:
        """Send ``count`` bytes of file ``fd`` from ``offset``, each fed to ``hasher``
        on its way (``StorageError`` if the file is shorter)."""
        ...

    async def receive_into_file(self, fd: int, count: int, hasher: Hasher | None,
                                ) -> tuple[int, OSError | None]:
        """Copy the next ``count`` received bytes into file ``fd`` at its offset, off
        the event loop, each fed to ``hasher`` (if any) on its way: how many were taken
        off the connection (fewer at its end), and the error writing the file met, if
        any (the bytes taken are lost then).  A stream whose bytes must pass through its
        own hands first (TLS, SCTP) takes 0 bytes at once."""
        ...

    def shutdown_write(self) -> None: ...

    def close(self) -> None: ...


def stalled(peer: str, idle_timeout_s: float) -> TransferTimeout:
    """The error for a peer that made no progress for ``idle_timeout_s``."""
    return TransferTimeout(f"{peer} made no progress for {idle_timeout_s:g} s — the peer is "
                           "stalled or gone")


async def socket_ready(loop: asyncio.AbstractEventLoop, fd: int,
                       watch: Callable[..., object], unwatch: Callable[[int], object],
                       idle_timeout_s: float, peer: str) -> None:
    """Wait until ``fd`` is ready (``watch`` is the loop's add_reader or add_writer),
    for at most ``idle_timeout_s``: then the peer is taken as stalled."""
    waiter = loop.create_future()
    watch(fd, _set_done, waiter)
    try:
        async with asyncio.timeout(idle_timeout_s):
            await waiter
    except TimeoutError:
        raise stalled(peer, idle_timeout_s) from None
    finally:
        unwatch(fd)


def prepare_socket(sock: socket.socket) -> None:
    """Non-blocking, and without Nagle on TCP: frames are already gathered into few
    sendmsg calls, and Nagle would only hold a small verdict back until the peer's
    delayed ACK (up to 40 ms on Linux)."""
    sock.setblocking(False)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class SocketStream:
    def __init__(self, sock: socket.socket, idle_timeout_s: float = 120.0) -> None:
        prepare_socket(sock)
        self.sock = sock
        self.idle_timeout_s = idle_timeout_s
        self.peer, self.local = peer_and_local(sock)
        self._loop = asyncio.get_running_loop()
        self._fd = sock.fileno()
        self.bytes_in = 0
        self.bytes_out = 0
        self._copying: asyncio.Future[tuple[int, OSError | None]] | None = None

    def _timeout(self) -> TransferTimeout:
        return stalled(self.peer, self.idle_timeout_s)

    async def receive(self) -> memoryview:
        buffer = _shared_buffer()
        while True:
            try:
                n = self.sock.recv_into(buffer)
            except (BlockingIOError, InterruptedError):
                await self._readable()
                continue
            except OSError as exc:
                raise network_error(exc, self.peer, "recv") from exc
            self.bytes_in += n
            return buffer[:n]

    async def _readable(self) -> None:
        await self._ready(self._loop.add_reader, self._loop.remove_reader)

    async def _writable(self) -> None:
        await self._ready(self._loop.add_writer, self._loop.remove_writer)

    async def _ready(self, watch: Callable[..., object], unwatch: Callable[[int], object],
                     ) -> None:
        await socket_ready(self._loop, self._fd, watch, unwatch, self.idle_timeout_s,
                           self.peer)

    async def send(self, buffers: Sequence[bytes | bytearray | memoryview]) -> None:
        """Send every buffer, in order, with as few sendmsg calls as the kernel allows."""
        # Byte buffers as they are (the many frames of small files need no view each);
        # a view only for what is left of a buffer sent in part.
        views = [b if isinstance(b, bytes) else memoryview(b).cast("B") for b in buffers]
        first, count = 0, len(views)
        while first < count:
            try:
                sent = self.sock.sendmsg(views[first : first + IOV_MAX])
            except (BlockingIOError, InterruptedError):
                await self._writable()
                continue
            except OSError as exc:
                raise network_error(exc, self.peer, "send") from exc
            self.bytes_out += sent
            while first < count and sent >= len(views[first]):
                sent -= len(views[first])
                first += 1
            if sent:
                views[first] = memoryview(views[first]).cast("B")[sent:]

    async def send_file(self, fd: int, offset: int, count: int, hasher: Hasher) -> None:
        for piece in file_pieces(fd, offset, count):
            hasher.update(piece)
            await self.send((piece,))

    async def receive_into_file(self, fd: int, count: int, hasher: Hasher | None,
                                ) -> tuple[int, OSError | None]:
        # The worker thread polls a pipe beside the socket: a cancelled caller wakes it
        # (and a flag stops it between two chunks), and the socket is closed only once
        # the thread is done with its descriptor (a number closed under it could be
        # reused by the next connection).  It writes through a duplicate of the file's
        # descriptor for the same reason: a cancelled upload's file is aborted at once.
        try:
            own = os.dup(fd)
        except OSError as exc:
            return 0, exc
        stop_read, stop_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        stop = threading.Event()
        work = self._loop.run_in_executor(shared_pool("body", MAX_COPIERS),
                                          _copy_to_file, self._fd, own, count, hasher,
                                          self.idle_timeout_s, stop_read, stop)
        self._copying = work
        work.add_done_callback(lambda _: _close_all(stop_read, stop_write, own))
        try:
            taken, error = await asyncio.shield(work)
        except asyncio.CancelledError:
            stop.set()
            os.write(stop_write, b"!")
            raise
        except TimeoutError:
            raise self._timeout() from None
        except OSError as exc:
            raise network_error(exc, self.peer, "recv") from exc
        self.bytes_in += taken
        return taken, error

    def shutdown_write(self) -> None:
        """Half-close: the peer reads end of input; we can still read its replies."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        if self._copying is not None and not self._copying.done():
            self._copying.add_done_callback(lambda _: self.sock.close())
            return
        self.sock.close()


# What one system call sends of a file: large enough for few calls, small enough that the
# piece just read and hashed is still in the CPU's cache when it is copied out.
SEND_PIECE = 256 * 1024
MAX_COPIERS = 16  # threads copying bodies into files at once; more wait their turn


def file_pieces(fd: int, offset: int, count: int,
                piece: int = SEND_PIECE) -> Iterator[memoryview]:
    """``count`` bytes of file ``fd`` from ``offset``, ``piece`` bytes at a time, read
    into a buffer of this call's own (each view is valid until the next one is asked
    for).  Read, not mapped: a file truncated meanwhile is a ``StorageError`` here,
    where reading a mapping past the new end would kill the process with SIGBUS."""
    buffer = memoryview(bytearray(min(piece, count)))
    end = offset + count
    while offset < end:
        try:
            n = os.preadv(fd, [buffer[: min(piece, end - offset)]], offset)
        except OSError as exc:
            raise StorageError(f"reading the file failed: {exc.strerror}",
                               errno=exc.errno) from exc
        if n == 0:
            raise StorageError("the file shrank while it was being sent",
                               errno=errno.ENODATA)
        yield buffer[:n]
        offset += n


def _copy_to_file(sock_fd: int, file_fd: int, count: int, hasher: Hasher | None,
                  timeout_s: float, stop_fd: int, stop: threading.Event,
                  ) -> tuple[int, OSError | None]:
    """Socket -> buffer -> file, ``count`` bytes, hashed on the way, in a worker thread
    (recv, write and the hashers release the GIL); ``stop`` set (and ``stop_fd``
    readable) means stop now.  Returns the bytes taken off the socket and the file's
    error."""
    buffer = _shared_buffer()  # the worker thread's own
    poller = select.poll()
    poller.register(sock_fd, select.POLLIN)
    poller.register(stop_fd, select.POLLIN)
    taken = 0
    while taken < count and not stop.is_set():
        try:
            n = os.readv(sock_fd, [buffer[: min(len(buffer), count - taken)]])
        except BlockingIOError:
            ready = poller.poll(timeout_s * 1000)
            if not ready:
                raise TimeoutError from None
            if any(fd == stop_fd for fd, _ in ready):
                break
            continue
        if n == 0:
            break  # the peer closed: the caller sees the end of the stream next
        taken += n
        got = buffer[:n]
        try:
            written = 0
            while written < n:
                written += os.write(file_fd, got[written:])
        except OSError as exc:
            return taken, exc
        if hasher is not None:
            hasher.update(got)
    return taken, None


def _close_all(*fds: int) -> None:
    for fd in fds:
        os.close(fd)


def _set_done(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
