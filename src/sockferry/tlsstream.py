"""A ferry ``Stream`` over TLS 1.3: a non-blocking ``ssl.SSLSocket`` on the event loop.

The same contract as ``streams.SocketStream`` (receive into a buffer shared by the
thread's streams, every wait bounded by ``idle_timeout_s``), with two differences that
TLS imposes: file bytes are encrypted in user space, so ``sendfile`` reads the file and
writes it through OpenSSL and ``splice_into`` takes nothing (the bodies then go through
the receive buffer); and a receive drains every record already there (OpenSSL hands out
one 16 KiB record per read) so the protocol core sees large pieces as it does over TCP.

End of input: the client half-closes TCP under TLS (``shutdown(SHUT_WR)`` of the socket,
no close_notify, which OpenSSL could only follow by reading — and discarding — the
server's answers); the server sends close_notify when it closes.  Either EOF ends the
input; the ferry framing tells a complete exchange from a truncated one (docs/protocol.md
§3.1).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import ssl
import threading
from collections.abc import Callable, Sequence

from sockferry.errors import NetworkError, StorageError
from sockferry.sockets import network_error, peer_and_local
from sockferry.streams import RECEIVE_BUFFER, stalled

# What one send hands OpenSSL at most: small frames are joined up to this, and file
# bytes are read in pieces of this size.
SEND_PIECE = 1024 * 1024
_shared = threading.local()


def _receive_buffer() -> memoryview:
    view: memoryview | None = getattr(_shared, "view", None)
    if view is None:
        view = _shared.view = memoryview(bytearray(RECEIVE_BUFFER))
    return view


class _Waiter:
    """Readiness of one socket on the running loop, bounded by a timeout."""

    def __init__(self, fd: int, peer: str, timeout_s: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._fd = fd
        self._peer = peer
        self.timeout_s = timeout_s

    async def readable(self) -> None:
        await self._ready(self._loop.add_reader, self._loop.remove_reader)

    async def writable(self) -> None:
        await self._ready(self._loop.add_writer, self._loop.remove_writer)

    async def _ready(self, watch: Callable[..., object],
                     unwatch: Callable[[int], object]) -> None:
        waiter = self._loop.create_future()
        watch(self._fd, _set_done, waiter)
        try:
            async with asyncio.timeout(self.timeout_s):
                await waiter
        except TimeoutError:
            raise stalled(self._peer, self.timeout_s) from None
        finally:
            unwatch(self._fd)


async def handshake(sock: ssl.SSLSocket, peer: str, timeout_s: float) -> None:
    """Run the TLS handshake of a non-blocking SSLSocket (``ssl.SSLError`` on failure)."""
    wait = _Waiter(sock.fileno(), peer, timeout_s)
    async with asyncio.timeout(timeout_s):
        while True:
            try:
                sock.do_handshake()
                return
            except ssl.SSLWantReadError:
                await wait.readable()
            except ssl.SSLWantWriteError:
                await wait.writable()


class TLSStream:
    """A connected, handshaken TLS socket; ``binding`` is its channel binding (the
    server certificate's tls-server-end-point value) and ``peer_der`` the certificate
    the server presented (clients only)."""

    def __init__(self, sock: ssl.SSLSocket, binding: bytes, idle_timeout_s: float = 120.0,
                 ) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            # As for SocketStream: frames are gathered already; Nagle only delays verdicts.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.binding = binding
        self.peer, self.local = peer_and_local(sock)
        self.bytes_in = 0
        self.bytes_out = 0
        self._wait = _Waiter(sock.fileno(), self.peer, idle_timeout_s)
        self._ended = False
        self._closed = False
        self._half_closed = False

    @property
    def peer_der(self) -> bytes:
        return self.sock.getpeercert(binary_form=True) or b""

    @property
    def cipher(self) -> str:
        cipher = self.sock.cipher()
        return f"{self.sock.version()} {cipher[0]}" if cipher else "TLS"

    def _error(self, exc: OSError, action: str) -> NetworkError:
        if isinstance(exc, ssl.SSLError):
            return NetworkError(f"TLS error with {self.peer}: {exc.reason or exc} — the "
                                "connection was damaged or ended abruptly",
                                address=self.peer)
        return network_error(exc, self.peer, action)

    async def receive(self) -> memoryview:
        buffer = _receive_buffer()
        filled = 0
        while not self._ended and filled < len(buffer):
            try:
                n = self.sock.recv_into(buffer[filled:])
            except ssl.SSLWantReadError:
                if filled:
                    break
                await self._wait.readable()
                continue
            except ssl.SSLWantWriteError:  # a TLS 1.3 key update wants its answer out
                if filled:
                    break
                await self._wait.writable()
                continue
            except ssl.SSLZeroReturnError:
                n = 0
            except OSError as exc:
                raise self._error(exc, "recv") from exc
            if n == 0:
                self._ended = True
                break
            filled += n
        self.bytes_in += filled
        return buffer[:filled]

    async def send(self, buffers: Sequence[bytes | bytearray | memoryview]) -> None:
        """Send every buffer in order: small ones joined (one TLS write, not one per
        frame), large ones as they are."""
        batch: list[bytes | bytearray | memoryview] = []
        size = 0
        for buffer in buffers:
            if len(buffer) >= SEND_PIECE // 4:
                if batch:
                    await self._write(b"".join(batch))
                    batch, size = [], 0
                await self._write(buffer)
                continue
            batch.append(buffer)
            size += len(buffer)
            if size >= SEND_PIECE:
                await self._write(b"".join(batch))
                batch, size = [], 0
        if batch:
            await self._write(batch[0] if len(batch) == 1 else b"".join(batch))

    async def _write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        while view:
            try:
                sent = self.sock.send(view)
            except ssl.SSLWantWriteError:
                await self._wait.writable()
                continue
            except ssl.SSLWantReadError:
                await self._wait.readable()
                continue
            except OSError as exc:
                raise self._error(exc, "send") from exc
            self.bytes_out += sent
            view = view[sent:]

    async def sendfile(self, fd: int, offset: int, count: int) -> None:
        """``count`` bytes of file ``fd`` from ``offset``, read here and encrypted."""
        piece = bytearray(min(SEND_PIECE, count))
        view = memoryview(piece)
        end = offset + count
        while offset < end:
            want = min(len(piece), end - offset)
            try:
                got = os.preadv(fd, [view[:want]], offset)
            except OSError as exc:
                raise StorageError(f"reading the file failed: {exc.strerror}",
                                   errno=exc.errno) from exc
            if got == 0:
                raise StorageError("the file shrank while it was being sent",
                                   errno=errno.ENODATA)
            await self._write(view[:got])
            offset += got

    async def splice_into(self, fd: int, count: int) -> tuple[int, OSError | None]:
        return 0, None  # the bytes must be decrypted first: the caller copies them

    def shutdown_write(self) -> None:
        """Half-close TCP below TLS (see the module docstring); the server's answers can
        still be read."""
        self._half_closed = True
        with contextlib.suppress(OSError):
            socket.socket.shutdown(self.sock, socket.SHUT_WR)

    def close(self) -> None:
        """Send close_notify if the socket takes it at once, then close."""
        if self._closed:
            return
        self._closed = True
        if not self._half_closed:
            with contextlib.suppress(OSError, ValueError):
                self.sock.unwrap()
        self.sock.close()


def _set_done(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
