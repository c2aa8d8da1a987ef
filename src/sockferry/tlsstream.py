"""A ferry ``Stream`` over TLS 1.3: OpenSSL on memory buffers, the socket driven here.

The same contract as ``streams.SocketStream`` (receive into a buffer shared by the
thread's streams, every wait bounded by ``idle_timeout_s``), with the differences TLS
imposes: file bytes are encrypted in user space, and ``receive_into_file`` takes nothing
(the bodies are decrypted into the receive buffer and copied into their files from
there).

Why memory BIOs rather than ``ssl.SSLSocket``: an SSLSocket makes one system call per
16 KiB record written and two per record read (header, then body).  Here OpenSSL
encrypts up to ``SEND_PIECE`` into memory and that leaves in one ``sendmsg``; a receive
reads what the socket holds in one ``recv_into`` and OpenSSL decrypts it record by
record.  Outgoing bytes go through one queue, flushed by one task at a time, so records
leave in the order OpenSSL made them even when the reading task has something to send
(a TLS 1.3 key update).

End of input: the client half-closes TCP under TLS (``shutdown(SHUT_WR)``, no
close_notify: OpenSSL can only follow a close_notify of ours by reading, and dropping,
what the server still sends); the server sends close_notify when it closes.  Either ends
the input (contexts carry ``OP_IGNORE_UNEXPECTED_EOF``); the ferry framing tells a
complete exchange from a truncated one (docs/protocol.md §3.1).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from collections.abc import Callable, Sequence
from typing import cast

from sockferry.errors import NetworkError
from sockferry.sockets import network_error, peer_and_local
from sockferry.streams import (
    IOV_MAX,
    RECEIVE_BUFFER,
    Hasher,
    file_pieces,
    prepare_socket,
    socket_ready,
)

# How much plaintext is encrypted before it is sent: big enough that a system call
# carries many records, small enough to stay in the CPU's cache.
SEND_PIECE = 256 * 1024
# The most ciphertext one recv takes off the socket (it then waits in OpenSSL's buffer
# until the caller has consumed the plaintext before it).
RECEIVE_PIECE = 256 * 1024
# What a stream keeps of the peer's first bytes: a plaintext peer's ERROR frame fits.
FIRST_BYTES = 2048
_shared = threading.local()


def _buffers() -> tuple[memoryview, memoryview]:
    """(plaintext, ciphertext) receive buffers shared by the thread's TLS streams."""
    views: tuple[memoryview, memoryview] | None = getattr(_shared, "views", None)
    if views is None:
        views = _shared.views = (memoryview(bytearray(RECEIVE_BUFFER)),
                                 memoryview(bytearray(RECEIVE_PIECE)))
    return views


class TLSStream:
    """A TLS connection over a connected non-blocking socket.  ``binding`` is its channel
    binding (the server certificate's tls-server-end-point value, §3.1)."""

    def __init__(self, sock: socket.socket, tls: ssl.SSLObject, incoming: ssl.MemoryBIO,
                 outgoing: ssl.MemoryBIO, idle_timeout_s: float = 120.0) -> None:
        prepare_socket(sock)  # as for SocketStream
        self.sock = sock
        self.tls = tls
        self._in = incoming
        self._out = outgoing
        self.binding = b""
        self.peer, self.local = peer_and_local(sock)
        self.idle_timeout_s = idle_timeout_s
        self.bytes_in = 0
        self.bytes_out = 0
        self._loop = asyncio.get_running_loop()
        self._fd = sock.fileno()
        self._queue: list[bytes] = []  # ciphertext to send, in order
        self.first_bytes = b""  # the start of what the peer sent
        self._sending = asyncio.Lock()
        self._ended = False
        self._half_closed = False
        self._closed = False

    @classmethod
    def wrap(cls, sock: socket.socket, context: ssl.SSLContext, *, server_side: bool,
             server_hostname: str | None = None, idle_timeout_s: float = 120.0,
             ) -> TLSStream:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = context.wrap_bio(incoming, outgoing, server_side=server_side,
                               server_hostname=server_hostname)
        return cls(sock, tls, incoming, outgoing, idle_timeout_s)

    @property
    def peer_der(self) -> bytes:
        return self.tls.getpeercert(binary_form=True) or b""

    @property
    def cipher(self) -> str:
        cipher = self.tls.cipher()
        return f"{self.tls.version()} {cipher[0]}" if cipher else "TLS"

    # -- the socket ---------------------------------------------------------------------

    async def _ready(self, watch: Callable[..., object],
                     unwatch: Callable[[int], object]) -> None:
        await socket_ready(self._loop, self._fd, watch, unwatch, self.idle_timeout_s,
                           self.peer)

    def _take_in(self) -> bool:
        """Move what the socket holds into OpenSSL; False if it held nothing yet."""
        raw = _buffers()[1]
        try:
            n = self.sock.recv_into(raw)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            raise network_error(exc, self.peer, "recv") from exc
        if n == 0:
            self._in.write_eof()
        else:
            if len(self.first_bytes) < FIRST_BYTES:  # kept to explain a failed handshake
                self.first_bytes += raw[: FIRST_BYTES - len(self.first_bytes)]
            self._in.write(raw[:n])
            self.bytes_in += n
        return True

    async def _fill(self) -> None:
        """Wait for ciphertext and hand it to OpenSSL."""
        while not self._take_in():
            await self._ready(self._loop.add_reader, self._loop.remove_reader)

    async def _flush(self) -> None:
        """Send what OpenSSL has encrypted, and everything queued before it, in order."""
        if self._out.pending:
            self._queue.append(self._out.read())
        if not self._queue:
            return
        async with self._sending:
            while self._queue:
                views = [memoryview(b) for b in self._queue[:IOV_MAX]]
                try:
                    sent = self.sock.sendmsg(views)
                except (BlockingIOError, InterruptedError):
                    await self._ready(self._loop.add_writer, self._loop.remove_writer)
                    continue
                except OSError as exc:
                    raise network_error(exc, self.peer, "send") from exc
                self.bytes_out += sent
                while sent:
                    first = self._queue[0]
                    if sent >= len(first):
                        sent -= len(first)
                        self._queue.pop(0)
                    else:
                        self._queue[0] = first[sent:]
                        sent = 0

    async def handshake(self, timeout_s: float) -> None:
        """Run the TLS handshake (``ssl.SSLError`` on failure, TimeoutError)."""
        async with asyncio.timeout(timeout_s):
            while True:
                try:
                    self.tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    await self._flush()
                    await self._fill()
            await self._flush()

    # -- the Stream interface -------------------------------------------------------------

    def _tls_error(self, exc: ssl.SSLError) -> NetworkError:
        return NetworkError(f"TLS error with {self.peer}: {exc.reason or exc} — the "
                            "connection was damaged or tampered with", address=self.peer)

    async def receive(self) -> memoryview:
        buffer = _buffers()[0]
        return buffer[: await self.decrypt_into(buffer)]

    async def decrypt_into(self, buffer: memoryview) -> int:
        """Decrypt into ``buffer`` what has arrived (waiting for the first bytes): how
        much, 0 once the peer ended its side."""
        filled = 0
        while not self._ended and filled < len(buffer):
            try:
                # With a buffer, read returns a count (typeshed says bytes).
                n: int = cast(int, self.tls.read(len(buffer) - filled, buffer[filled:]))
            except ssl.SSLWantReadError:
                if self._out.pending:  # a post-handshake message wants its answer out
                    await self._flush()
                if self._take_in():
                    continue
                if filled:
                    break
                await self._fill()
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                n = 0
            except ssl.SSLError as exc:
                raise self._tls_error(exc) from exc
            if n == 0:
                self._ended = True
                break
            filled += n
        return filled

    async def send(self, buffers: Sequence[bytes | bytearray | memoryview]) -> None:
        """Encrypt every buffer in order, sending each ``SEND_PIECE`` of plaintext."""
        waiting = 0
        for buffer in buffers:
            view = memoryview(buffer).cast("B")
            while view:
                piece = view[: SEND_PIECE - waiting]
                self._encrypt(piece)
                waiting += len(piece)
                view = view[len(piece):]
                if waiting >= SEND_PIECE:
                    await self._flush()
                    waiting = 0
        await self._flush()

    def _encrypt(self, data: memoryview) -> None:
        try:
            self.tls.write(data)
        except ssl.SSLError as exc:
            raise self._tls_error(exc) from exc

    async def send_file(self, fd: int, offset: int, count: int, hasher: Hasher) -> None:
        """File bytes read a piece at a time, each hashed and encrypted while it is in
        the CPU's cache."""
        for piece in file_pieces(fd, offset, count, SEND_PIECE):
            hasher.update(piece)
            self._encrypt(piece)
            await self._flush()

    async def receive_into_file(self, fd: int, count: int, hasher: Hasher | None,
                                ) -> tuple[int, OSError | None]:
        return 0, None  # the bytes must be decrypted first: the caller copies them

    def shutdown_write(self) -> None:
        """Half-close TCP below TLS (see the module docstring); the server's answers can
        still be read."""
        self._half_closed = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        """Send close_notify if the socket takes it at once, then close."""
        if self._closed:
            return
        self._closed = True
        if not self._half_closed and not self._queue:
            with contextlib.suppress(ssl.SSLError, ValueError):
                self.tls.unwrap()
            if self._out.pending:
                with contextlib.suppress(OSError):
                    self.sock.send(self._out.read())
        self.sock.close()

