"""The asyncio driver: one transfer core on one UDP socket (its TID).

The socket is read straight from a reader callback (``loop.add_reader`` and
``recvfrom`` until EAGAIN), with no transport or protocol objects in between: a TFTP
transfer in lock-step is one small datagram each way per block, so per-packet overhead
decides its speed.  One timer serves every deadline; it is moved only when the core's
deadline comes earlier, and a timer that fires early simply re-arms.

Once the peer is known, its datagrams arrive on a connected twin of the socket.  A
lock-step transfer in steady state leaves the loop altogether: the driver hands the core
to a ``LockStepLane`` (lane.py), which answers each datagram from a thread blocked in
recv, and does the file I/O between steps, until something needs the general path.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, assert_never

from sockferry.addresses import format_sockaddr
from sockferry.errors import NetworkError, SockferryError, StorageError
from sockferry.sockets import grow_buffers, network_error
from sockferry.storage.atomic import AtomicFile
from sockferry.tftp.lane import MIN_WAIT_S, LaneReturn, LockStepLane
from sockferry.tftp.options import TransferOptions
from sockferry.tftp.packets import MAX_DATAGRAM_BYTES, ErrorCode
from sockferry.tftp.receiving import ReceivingTransfer
from sockferry.tftp.sending import SendingTransfer
from sockferry.tftp.transfer import (
    BlockReceived,
    Event,
    LastBlockReceived,
    OptionsAgreed,
    PeerAddress,
    Transfer,
    TransferCompleted,
    TransferFailed,
)
from sockferry.timers import LazyTimer

logger = logging.getLogger("sockferry.tftp")

# File bytes move in chunks this large: one read() feeds hundreds of blocks and one
# write() stores hundreds, so the disk costs no syscall per packet.
CHUNK_BYTES = 256 * 1024
# Datagrams handled per readiness callback, so that one fast peer cannot starve others.
MAX_BATCH = 64
# Room in the kernel for a whole window of the largest blocks (capped by rmem_max).
SOCKET_BUFFER_BYTES = 4 * 1024 * 1024


class FileSource:
    """Reads a file by descriptor for a sending transfer; owns and closes the fd."""

    def __init__(self, fd: int, shown: str) -> None:
        self.fd = fd
        self.shown = shown

    def read(self) -> bytes:
        try:
            return os.read(self.fd, CHUNK_BYTES)
        except OSError as exc:
            raise StorageError(f"cannot read {self.shown}: {exc.strerror}", errno=exc.errno,
                               path=self.shown) from exc

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class FileSink:
    """Collects a receiving transfer's bytes into an ``AtomicFile``, in large writes.

    ``store`` runs on a worker thread, and a cancel may ``discard`` on the loop's thread
    meanwhile.  Only one of them finishes the file (AtomicFile's rule): a store that has
    begun goes to its end (the file in place, or removed if the commit fails), and the
    discard leaves it to it."""

    def __init__(self, target: AtomicFile, mode: int, *, clobber: bool = True) -> None:
        self.target = target
        self.mode = mode
        self.clobber = clobber  # False: the commit fails (EEXIST) rather than replace
        self._buffer = bytearray()
        self._lock = threading.Lock()
        self._ending: str | None = None  # "store" or "discard", once one has begun

    def write(self, data: bytes) -> None:
        if not self._buffer and len(data) >= CHUNK_BYTES:
            self.target.write(data)  # a whole chunk already: no copy into the buffer
            return
        self._buffer += data
        if len(self._buffer) >= CHUNK_BYTES:
            self._drain()

    def _drain(self) -> None:
        self.target.write(self._buffer)
        self._buffer.clear()

    def store(self) -> None:
        """Write the rest, fsync and rename into place (blocking: run it in a thread)."""
        if not self._begin("store"):
            raise StorageError(f"{self.target.shown} was discarded", path=self.target.shown)
        self._drain()
        self.target.commit(self.mode, clobber=self.clobber)

    def discard(self) -> None:
        """Remove the file, unless a store has begun: that one finishes it."""
        if self._begin("discard"):
            self.target.abort()

    def _begin(self, ending: str) -> bool:
        with self._lock:
            if self._ending is not None:
                return False
            self._ending = ending
            return True


def storage_error_code(error: SockferryError) -> ErrorCode:
    """The TFTP error code that tells a peer why a file could not be used."""
    code = getattr(error, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return ErrorCode.DISK_FULL
    if code == errno.ENOENT:
        return ErrorCode.FILE_NOT_FOUND
    if code == errno.EEXIST:
        return ErrorCode.FILE_EXISTS
    if isinstance(error, StorageError):
        return ErrorCode.ACCESS_VIOLATION
    return ErrorCode.NOT_DEFINED


@dataclass(slots=True)
class TransferResult:
    """What a finished transfer reports (for log lines and the command line)."""

    size: int
    seconds: float
    options: TransferOptions
    retransmissions: int
    error: SockferryError | None

    @property
    def rate_mb_s(self) -> float:
        return self.size / self.seconds / 1e6 if self.seconds > 0 else 0.0


def _udp_socket(family: socket.AddressFamily, address: tuple[Any, ...], *,
                shared: bool) -> socket.socket:
    """A non-blocking UDP socket bound to ``address`` (dual-stack for IPv6); ``shared``
    sets SO_REUSEPORT before the bind, to join a port that allows it."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if shared:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def tid_socket(family: socket.AddressFamily, host: str) -> socket.socket:
    """A fresh socket on an ephemeral port of ``host``: a transfer's TID.

    Bound without SO_REUSEPORT: with it, Linux may pick for port 0 a port that another
    SO_REUSEPORT socket of the same user holds (another transfer's TID, another
    server's), and the two would then share each other's datagrams.  The option is set
    after the bind, only so that the connected twin can join (``_connected_twin``)."""
    try:
        sock = _udp_socket(family, (host, 0), shared=False)
    except OSError as exc:
        raise network_error(exc, host, "bind") from exc
    with contextlib.suppress(OSError):  # without it there is just no twin
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return sock


def _connected_twin(sock: socket.socket, peer: PeerAddress) -> socket.socket:
    """A socket on ``sock``'s own port, connected to the peer.

    The kernel hands a connected socket the datagrams of its peer and routes the rest
    of the port's traffic to the unconnected one, where strangers get ERROR 5.  Sending
    on a connected socket skips a route lookup and an address conversion per packet: on
    a lock-step transfer that is a good part of the cost of a block.  Once the twin is
    in, SO_REUSEPORT is cleared on both, which seals the port: no other socket can bind
    it, and the kernel still routes by the best match (the connected twin for the peer).
    """
    try:
        twin = _udp_socket(sock.family, sock.getsockname(), shared=True)
    finally:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 0)
    try:
        twin.connect(peer)
        twin.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 0)
    except OSError:
        twin.close()
        raise
    return twin


class TransferDriver:
    """Runs one core over its UDP socket (and that socket's connected twin) until the
    core is finished."""

    def __init__(self, sock: socket.socket, core: Transfer, *,
                 source: FileSource | None = None, sink: FileSink | None = None,
                 on_progress: Callable[[int], None] | None = None,
                 on_outcome: Callable[[TransferResult], None] | None = None) -> None:
        self.sock = sock
        self.core = core
        self.source = source
        self.sink = sink
        self.on_progress = on_progress
        self.on_outcome = on_outcome
        self.loop = asyncio.get_running_loop()
        self.options = core.options
        self.error: SockferryError | None = None
        self._twin: socket.socket | None = None
        self._peer: PeerAddress | None = None
        self._started = self.loop.time()
        self._ended: float | None = None
        self._finished = self.loop.create_future()
        self._timer = LazyTimer(self.loop, self._on_timer)
        self._storing: asyncio.Task[None] | None = None
        self._reported = -1
        # Runs lock-step steady state on its own thread, once the peer's twin exists.
        self._lane: LockStepLane | None = None
        # The core to hand file bytes to, when this driver reads a file.
        self._sender = core if source is not None and isinstance(core, SendingTransfer) \
            else None

    async def run(self) -> TransferResult:
        """Drive the transfer; the sockets, the source and an unstored sink are closed."""
        grow_buffers(self.sock, SOCKET_BUFFER_BYTES)
        self.loop.add_reader(self.sock.fileno(), self._on_readable)
        try:
            self._pump()
            await self._finished
        except asyncio.CancelledError:
            # Shutdown or Ctrl-C: tell the peer, and keep nothing half-written.
            self.cancel(SockferryError("the transfer was interrupted"))
            raise
        finally:
            sink = self._close()
            if sink is not None:
                # A remote store's abort waits for the parts going up, then asks the
                # store to drop them: in a worker thread, not on the loop.
                await asyncio.to_thread(sink.discard)
        return self.result()

    def _close(self) -> FileSink | None:
        """Close the sockets and the source, discard an unstored sink; a remote store's
        sink is returned, for the caller to discard off the loop."""
        if self._lane is not None:
            self._lane.stop()
        for sock in (self.sock, self._twin):
            if sock is not None:
                self.loop.remove_reader(sock.fileno())
                sock.close()
        self._timer.cancel()
        if self._storing is not None and not self._storing.done():
            self._storing.cancel()
        if self.source is not None:
            self.source.close()
        if self.sink is not None and self.error is not None:
            if self.sink.target.remote:
                return self.sink
            self.sink.discard()
        return None

    def result(self) -> TransferResult:
        """The outcome so far; final once the core reported completion or failure."""
        ended = self._ended if self._ended is not None else self.loop.time()
        return TransferResult(self.core.size, ended - self._started, self.options,
                              self.core.retransmissions, self.error)

    def request_repeated(self, nbytes: int) -> None:
        """The peer repeated its request (see ``Transfer.request_repeated``).  Only
        before the peer answered: until then no lane holds the core."""
        if not self.core.confirmed and not self.core.finished:
            self.core.request_repeated(nbytes, self.loop.time())
            self._pump()

    def cancel(self, error: SockferryError) -> None:
        """Stop from outside (shutdown, Ctrl-C): the peer gets an ERROR."""
        if self._lane is not None:
            self._lane.stop()
        self.core.abort(error, ErrorCode.NOT_DEFINED, self.loop.time())
        self._pump()

    # -- socket and timer callbacks -----------------------------------------------------

    def _on_readable(self) -> None:
        """The unconnected socket: the first answer to a client, and strangers."""
        core, sock = self.core, self.sock
        now = self.loop.time()
        lane_running = self._lane is not None and self._lane.running
        for _ in range(MAX_BATCH):
            try:
                data, addr = sock.recvfrom(MAX_DATAGRAM_BYTES + 1)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break  # an ICMP error about a stranger: nothing to do with this transfer
            if lane_running and addr == self._peer:
                continue  # sent before the twin existed: the lane has the peer's flow
            core.receive_datagram(data, addr, now)
        if lane_running:
            # Only strangers were answered: their ERROR 5 is all there is to send, and
            # the lane's one-step path never touches the queue it comes from.
            self._send_queued(core.datagrams_to_send())
        else:
            self._pump()

    def _on_peer_readable(self) -> None:
        """The connected twin: only the peer's datagrams arrive here."""
        assert self._twin is not None and self._peer is not None
        core, recv, peer = self.core, self._twin.recv, self._peer
        now = self.loop.time()
        # Read what one window brings: a sender expects one ACK per window, a receiver
        # windowsize blocks.  Reading on until EAGAIN would cost an exception per
        # wakeup, and readiness is level-triggered, so nothing is left behind.  The twin
        # may be in blocking mode (the lane's): this side never waits on it.
        batch = 1 if self._sender else min(core.options.windowsize, MAX_BATCH)
        for _ in range(batch):
            try:
                data = recv(MAX_DATAGRAM_BYTES + 1, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._peer_gone(exc)
                return
            core.receive_datagram(data, peer, now)
        self._pump()

    def _peer_gone(self, exc: OSError) -> None:
        # ICMP port unreachable and the like: the peer's socket is gone.
        self._local_failure(network_error(exc, format_sockaddr(self._peer), "receive"))

    def _connect_peer(self, peer: PeerAddress) -> None:
        try:
            twin = _connected_twin(self.sock, peer)
        except OSError:
            self._peer = peer  # no twin: everything keeps going through the one socket
            return
        grow_buffers(twin, SOCKET_BUFFER_BYTES)
        self._twin, self._peer = twin, peer
        core = self.core
        if isinstance(core, SendingTransfer):
            self._lane = LockStepLane(twin, core, core.take_ack, self._service_lane,
                                      self._lane_returned)
        elif isinstance(core, ReceivingTransfer):
            self._lane = LockStepLane(twin, core, core.take_block, self._service_lane,
                                      self._lane_returned)
        self.loop.add_reader(twin.fileno(), self._on_peer_readable)

    def _start_lane(self, lane: LockStepLane) -> None:
        """Hand the core to the lane: neither the twin's reader nor the timer touches it
        meanwhile (strangers on the other socket still get their ERROR 5)."""
        assert self._twin is not None
        self._timer.arm(None)
        self.loop.remove_reader(self._twin.fileno())
        lane.start()

    def _service_lane(self) -> bool:
        """On the lane's thread, between steps: the file I/O the core asked for (the
        lane owns the core, and the source or sink, meanwhile)."""
        core = self.core
        if self._sender is not None:
            self._feed(self._sender, time.monotonic())
        elif isinstance(core, ReceivingTransfer):
            data = core.take_pending()
            if data:
                self._write(data)
        if self.on_progress is not None:
            self.loop.call_soon_threadsafe(self.on_progress, core.size)
        return core.step_ready

    def _lane_returned(self, why: LaneReturn) -> None:
        assert self._twin is not None and self._peer is not None
        self.loop.add_reader(self._twin.fileno(), self._on_peer_readable)
        core = self.core
        if why.datagram is not None:
            core.receive_datagram(why.datagram, self._peer, self.loop.time())
        elif why.error is not None:
            if why.sending:
                self._local_failure(network_error(why.error, format_sockaddr(self._peer),
                                                  "send"))
            else:
                self._peer_gone(why.error)
            return
        elif why.fault is not None:
            logger.error("lock-step lane failed", exc_info=why.fault)
            core.abort(SockferryError(f"internal error: {why.fault}"), ErrorCode.NOT_DEFINED,
                       self.loop.time())
        else:  # a receive timeout, or a service that left the steady state: run the
            # timeout if its deadline has come (if not quite, the lane waits the rest)
            due = core.next_deadline()
            if due is not None and due <= time.monotonic() + MIN_WAIT_S:
                core.handle_timeout(max(due, self.loop.time()))
        self._pump()

    def _on_timer(self, due: float) -> None:
        self.core.handle_timeout(max(due, self.loop.time()))
        self._pump()

    # -- the flush ----------------------------------------------------------------------

    def _pump(self) -> None:
        core = self.core
        sender = self._sender
        if sender is not None and sender.wants_data:
            self._feed(sender, self.loop.time())
        if self._peer is None and core.peer is not None:
            self._connect_peer(core.peer)
        if not self._send_queued(core.datagrams_to_send()):
            return
        while (event := core.next_event()) is not None:
            self._on_event(event)
        if self.on_progress is not None and core.size != self._reported:
            self._reported = core.size
            self.on_progress(core.size)
        self._wait_next()

    def _send_queued(self, datagrams: list[tuple[bytes, PeerAddress]]) -> bool:
        """Send what the core queued; False when a send failed the transfer."""
        peer, twin, sock = self._peer, self._twin, self.sock
        for data, addr in datagrams:
            try:
                if twin is not None and addr == peer:
                    twin.send(data, socket.MSG_DONTWAIT)  # the lane may leave it blocking
                else:
                    sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                pass  # the kernel's buffer is full: as good as lost; the timer resends
            except OSError as exc:
                if addr != peer:
                    continue  # a stranger's ERROR 5 that could not go: nothing lost
                self._local_failure(network_error(exc, format_sockaddr(addr), "send"))
                return False
        return True

    def _wait_next(self) -> None:
        """After a flush: done, or the lane takes over, or the timer waits the deadline."""
        core = self.core
        if core.finished:
            self._timer.arm(core.next_deadline())
            if not self._finished.done():
                self._finished.set_result(None)
            return
        lane = self._lane
        if lane is not None and core.step_ready:
            self._start_lane(lane)
            return
        deadline = core.next_deadline()
        self._timer.arm(deadline)

    def _feed(self, core: SendingTransfer, now: float) -> None:
        assert self.source is not None
        while core.wants_data:
            try:
                chunk = self.source.read()
            except StorageError as exc:
                core.abort(exc, ErrorCode.NOT_DEFINED, now)
                return
            core.send_data(chunk, now, end=not chunk)

    def _on_event(self, event: Event) -> None:
        match event:
            case BlockReceived():
                self._write(event.data)
            case LastBlockReceived():
                self._storing = self.loop.create_task(self._store())
            case OptionsAgreed():
                self.options = event.options
            case TransferCompleted():
                self._ended = self.loop.time()
                self._report()
            case TransferFailed():
                self._ended = self.loop.time()
                self.error = event.error
                self._report()
            case _:
                assert_never(event)

    def _report(self) -> None:
        if self.on_outcome is not None:
            self.on_outcome(self.result())

    def _write(self, data: bytes) -> None:
        if self.sink is None:
            return
        try:
            self.sink.write(data)
        except StorageError as exc:
            self.core.abort(exc, storage_error_code(exc), self.loop.time())

    async def _store(self) -> None:
        core = self.core
        assert isinstance(core, ReceivingTransfer)
        try:
            if self.sink is not None:
                # fsync and rename can take a while: keep the loop serving others.
                await asyncio.to_thread(self.sink.store)
            if core.finished:
                return  # cancelled while storing: the peer was told; the file is as stored
        except StorageError as exc:
            core.abort(exc, storage_error_code(exc), self.loop.time())
        else:
            core.confirm_stored(self.loop.time())
        self._pump()

    def _local_failure(self, error: NetworkError) -> None:
        self.core.abort(error, ErrorCode.NOT_DEFINED, self.loop.time())
        self._pump()
