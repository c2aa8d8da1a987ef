"""The ferry protocol over SCTP: one association is one connection.

``AssociationStream`` is the ``Stream`` the ferry server and client use over TCP, built
on one association of an SCTP endpoint (kernel or userspace stack): ``sctp_framing``
cuts the bytes into one message per frame on the association's streams, and puts what
arrives back into an order the protocol allows.  The same ``FerryServer`` and
``FerryClient`` run on top, so authentication, digests and the server's sandbox are
exactly those of TCP.  ``serve_sctp`` feeds an endpoint's associations to a server;
``sctp_client`` opens a client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from typing import Any

from sockferry.addresses import Address, format_sockaddr
from sockferry.admission import source_key
from sockferry.errors import (
    NetworkError,
    RemoteProtocolError,
    SockferryError,
    StorageError,
    TransferTimeout,
)
from sockferry.ferry.client import FerryClient
from sockferry.ferry.sctp_framing import STREAMS, FrameReceiver, FrameSender, Piece
from sockferry.ferry.server import FerryServer
from sockferry.sctp.endpoint import (
    AssociationChange,
    AssocId,
    AssocState,
    Endpoint,
    StreamCounts,
    UserMessage,
)
from sockferry.sctp.transport import open_endpoint
from sockferry.streams import Hasher, stalled

log = logging.getLogger("sockferry.ferry")

# Bytes received for one connection and not yet read by it: past this the endpoint's
# reader waits (SCTP's receive window then holds the peers back).
MAX_INCOMING = 8 * 1024 * 1024
READ_CHUNK = 1024 * 1024  # file bytes read per pread for send_file()
SHUTDOWN_TIMEOUT_S = 10.0


class AssociationStream:
    """A ferry ``Stream`` over one association of ``endpoint``."""

    transport = "sctp"  # the metrics' label (ferry/connection.py)

    def __init__(self, endpoint: Endpoint, assoc_id: AssocId, peer: str, *, client: bool,
                 idle_timeout_s: float) -> None:
        outbound, inbound = endpoint.streams(assoc_id)
        self._endpoint = endpoint
        self._assoc_id = assoc_id
        self._sender = FrameSender(client=client, streams=outbound)
        self._receiver = FrameReceiver(server=not client, streams=inbound)
        self.idle_timeout_s = idle_timeout_s
        self.peer = f"{peer} (SCTP association {assoc_id})"
        self.local = ", ".join(format_sockaddr(a) for a in endpoint.local_addresses)
        self.bytes_in = 0
        self.bytes_out = 0
        self._incoming: deque[memoryview] = deque()  # frames not yet read, in order
        self._incoming_bytes = 0
        self._changed = asyncio.Event()  # data arrived, was read, or the end came
        self._ended = False  # the association went away (gracefully or not)
        self._failure: SockferryError | None = None
        self._closed = False
        self._tasks: set[asyncio.Task[None]] = set()

    # -- fed by the endpoint's reader ---------------------------------------------------

    async def deliver(self, message: UserMessage) -> None:
        if self._failure is None:
            try:
                self._receiver.receive(message.stream, message.ppid, message.data)
            except RemoteProtocolError as exc:
                self._failure = exc
            for frame in self._receiver.take():
                self._incoming.append(memoryview(frame))
                self._incoming_bytes += len(frame)
        self._changed.set()
        try:
            async with asyncio.timeout(self.idle_timeout_s):
                while self._incoming_bytes > MAX_INCOMING and not self._closed:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:  # its reader is stuck: it must not hold the others up
            self._failure = self._timeout()
            self._incoming.clear()
            self._incoming_bytes = 0
            self._endpoint.abort(self._assoc_id, "the connection stopped reading")

    def association_ended(self, change: AssociationChange) -> None:
        self._ended = True
        if change.state != AssocState.SHUTDOWN_COMP and self._failure is None:
            self._failure = NetworkError(f"the SCTP association with {self.peer} ended: "
                                         f"{change.reason or change.state.value}",
                                         address=self.peer)
        self._changed.set()

    # -- the Stream protocol ------------------------------------------------------------

    def _timeout(self) -> TransferTimeout:
        return stalled(self.peer, self.idle_timeout_s)

    async def receive(self) -> memoryview:
        """The next frame's bytes as they arrived (no copy); empty at the end."""
        try:
            async with asyncio.timeout(self.idle_timeout_s):
                while not self._incoming and self._failure is None and not (
                        self._ended or self._receiver.ended):
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise self._timeout() from None
        if self._incoming:
            frame = self._incoming.popleft()
            self._incoming_bytes -= len(frame)
            self.bytes_in += len(frame)
            self._changed.set()  # room for the endpoint's reader
            return frame
        if self._failure is not None:
            raise self._failure
        return memoryview(b"")

    async def _send_pieces(self, pieces: Sequence[Piece]) -> None:
        try:
            async with asyncio.timeout(self.idle_timeout_s):
                for piece in pieces:
                    await self._endpoint.send(piece.data, to=self._assoc_id,
                                              stream=piece.stream, ppid=piece.ppid)
                    self.bytes_out += len(piece.data)
        except TimeoutError:
            raise self._timeout() from None

    async def send(self, buffers: Sequence[bytes | bytearray | memoryview]) -> None:
        for buffer in buffers:
            await self._send_pieces(self._sender.feed(buffer))

    async def send_file(self, fd: int, offset: int, count: int, hasher: Hasher) -> None:
        """File bytes, read and hashed in a worker thread, and sent as DATA."""
        end = offset + count
        while offset < end:
            try:
                chunk = await asyncio.to_thread(_read_hashed, fd,
                                                min(READ_CHUNK, end - offset), offset, hasher)
            except OSError as exc:
                raise StorageError(f"reading the file failed: {exc.strerror}",
                                   errno=exc.errno) from exc
            if not chunk:
                raise StorageError("the file shrank while it was being sent")
            await self._send_pieces(self._sender.feed(chunk))
            offset += len(chunk)

    async def receive_into_file(self, fd: int, count: int, hasher: Hasher | None,
                                ) -> tuple[int, OSError | None]:
        return 0, None  # SCTP messages arrive whole in user space: the caller copies them

    def shutdown_write(self) -> None:
        """END on every stream; the peer's replies can still be read."""
        self._spawn(self._send_pieces(self._sender.end()))

    def close(self) -> None:
        """Shut the association down once what was sent is delivered (bounded)."""
        if self._closed:
            return
        self._closed = True
        self._changed.set()
        if not self._ended:
            self._spawn(self._shutdown())

    async def _shutdown(self) -> None:
        try:
            async with asyncio.timeout(SHUTDOWN_TIMEOUT_S):
                await self._endpoint.shutdown(self._assoc_id)
        except (TimeoutError, SockferryError):
            self._endpoint.abort(self._assoc_id, "the connection is closed")

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(self._logged(work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _logged(self, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except SockferryError as exc:
            log.debug("%s: %s", self.peer, exc)


async def route(endpoint: Endpoint, streams: dict[AssocId, AssociationStream],
                on_up: Callable[[AssociationChange], None] | None = None) -> None:
    """Read ``endpoint`` and hand each message and end to its association's stream;
    ``on_up`` hears of new associations."""
    while True:
        item = await endpoint.receive()
        if isinstance(item, UserMessage):
            stream = streams.get(item.assoc_id)
            if stream is not None:
                await stream.deliver(item)
            continue
        if item.state == AssocState.COMM_UP and item.assoc_id in streams:
            continue  # a client's own association, announced
        old = streams.pop(item.assoc_id, None)
        if old is not None:  # ended, or restarted: what it carried is lost either way
            old.association_ended(item)
        if item.state in (AssocState.COMM_UP, AssocState.RESTART) and on_up is not None:
            on_up(item)


async def serve_sctp(server: FerryServer, endpoint: Endpoint) -> None:
    """Serve every association of ``endpoint`` as one ferry connection, until cancelled."""
    streams: dict[AssocId, AssociationStream] = {}

    def on_up(change: AssociationChange) -> None:
        peer = format_sockaddr(change.peer) if change.peer is not None else "?"
        if not server.admits(change.peer, "sctp"):  # --allow/--deny, on the primary address
            endpoint.abort(change.assoc_id, "not allowed by the server's --allow/--deny")
            return
        source = source_key(str(change.peer[0])) if change.peer is not None else "?"
        reason = server.refusal(source, "sctp")
        if reason is not None:
            server.log_refusal(f"an association from {peer}", reason)
            endpoint.abort(change.assoc_id, reason)
            return
        try:
            stream = AssociationStream(endpoint, change.assoc_id, peer, client=False,
                                       idle_timeout_s=server.config.idle_timeout_s)
        except SockferryError as exc:  # it ended already
            server.gate.release(source)
            log.info("association from %s: %s", peer, exc)
            return
        streams[change.assoc_id] = stream
        server.serve(stream, source)

    await route(endpoint, streams, on_up)


async def open_sctp_server_endpoint(listen: Sequence[Address], stack: str,
                                    udp_port: int | None) -> Endpoint:
    """The server's endpoint: as many streams as the server lets a client have requests."""
    return await open_endpoint(stack, listen=listen, udp_port=udp_port,
                               streams=StreamCounts(STREAMS, STREAMS))


@asynccontextmanager
async def sctp_client(address: Address, token: bytes, *, stack: str = "auto",
                      udp_port: int | None = None, timeout_s: float = 10.0,
                      idle_timeout_s: float = 120.0) -> AsyncIterator[FerryClient]:
    """A ``FerryClient`` over a new association with ``address``; closed on exit."""
    endpoint = await open_endpoint(stack, udp_port=udp_port,
                                   streams=StreamCounts(STREAMS, STREAMS))
    reader: asyncio.Task[None] | None = None
    try:
        assoc_id = await endpoint.connect(address, timeout_s=timeout_s)
        try:
            stream = AssociationStream(endpoint, assoc_id, str(address), client=True,
                                       idle_timeout_s=idle_timeout_s)
        except SockferryError:  # refused at once (a busy server aborts): say why
            raise await _why_it_ended(endpoint, assoc_id, address) from None
        reader = asyncio.get_running_loop().create_task(
            route(endpoint, {assoc_id: stream}))
        client = await FerryClient.start(stream, token, timeout_s=timeout_s)
        try:
            yield client
        finally:
            client.close()
    finally:
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, SockferryError):
                await reader
        await endpoint.close()


async def _why_it_ended(endpoint: Endpoint, assoc_id: AssocId, address: Address
                        ) -> NetworkError:
    """The reason of the event that ended ``assoc_id``, from the endpoint's queue."""
    reason = "it ended at once"
    with contextlib.suppress(TimeoutError, SockferryError):
        async with asyncio.timeout(SHUTDOWN_TIMEOUT_S):
            while True:
                item = await endpoint.receive()
                if (isinstance(item, AssociationChange) and item.assoc_id == assoc_id
                        and item.state not in (AssocState.COMM_UP, AssocState.RESTART)):
                    reason = item.reason or item.state.value
                    break
    return NetworkError(f"the SCTP association with {address} ended: {reason}",
                        address=str(address))


def _read_hashed(fd: int, count: int, offset: int, hasher: Hasher) -> bytes:
    chunk = os.pread(fd, count, offset)
    hasher.update(memoryview(chunk))
    return chunk
