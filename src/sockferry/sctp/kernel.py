"""Linux kernel SCTP behind the endpoint API: one SOCK_SEQPACKET socket, no accept().

The one-to-many style of RFC 6458 §3, driven with the standard library only: sendmsg and
recvmsg carry SCTP_SNDINFO / SCTP_RCVINFO (§5.3.4, §5.3.5); SCTP_EVENT subscriptions
(§6.2.2) bring association changes, which become the same ``AssociationChange`` objects
as the userspace stack's.  Every number and structure comes from ``linux_abi``.

The same ``Config`` as the userspace stack sets the kernel's RTO bounds, retransmission
limits, heartbeat interval and stream counts, so both backends behave alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections import deque
from collections.abc import Sequence
from typing import Self

from sockferry.addresses import Address, HostPort, SockAddr, UnixPath, format_sockaddr
from sockferry.errors import (
    MalformedPacket,
    NetworkError,
    PeerRefused,
    UsageError,
)
from sockferry.sctp import linux_abi as abi
from sockferry.sctp.config import Config
from sockferry.sctp.endpoint import (
    AssociationChange,
    AssocId,
    AssocState,
    Received,
    UserMessage,
)
from sockferry.sctp.kernel_events import (
    KernelAssociation,
    KernelEvents,
    MessageTooLarge,
    Output,
    address_key,
    plain_address,
)
from sockferry.sctp.kernel_socket import open_endpoint_socket
from sockferry.sockets import network_error, resolve

log = logging.getLogger("sockferry.sctp")

# One recvmsg reads at most this much; a longer message arrives in pieces (partial
# delivery, RFC 6458 §8.1.20) that are joined here until MSG_EOR.
RECEIVE_CHUNK = 256 << 10
# Messages received but not yet taken by receive(): past this, reading pauses and the
# kernel's receive window closes on the peers (flow control instead of memory growth).
MAX_INBOX_BYTES = 8 << 20
# recvmsg calls per readiness callback, so one busy peer cannot starve the event loop.
READS_PER_WAKEUP = 64
CLOSE_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 30.0
# User-Initiated Abort reason sent to the peer (RFC 9260 §3.3.10.12); longer is cut.
MAX_ABORT_REASON = 256
# A readable answer of SCTP_GET_LOCAL_ADDRS; CPython's getsockopt allows at most 1024.
_GETSOCKOPT_MAX = 1024
_RCVINFO_SPACE = socket.CMSG_SPACE(abi.RCVINFO.size)


class KernelEndpoint:
    """A one-to-many SCTP endpoint on the Linux kernel's SCTP."""

    def __init__(self, sock: socket.socket, config: Config) -> None:
        self._sock = sock
        self._config = config
        self._loop = asyncio.get_running_loop()
        self._inbox: deque[Received] = deque()
        self._inbox_bytes = 0
        self._receivers: list[asyncio.Future[None]] = []
        self._events = KernelEvents(config.max_message_size)
        self._connecting: dict[tuple[str, int], list[asyncio.Future[AssociationChange]]] = {}
        self._ending: dict[AssocId, list[asyncio.Future[AssociationChange]]] = {}
        self._writable: list[asyncio.Future[None]] = []
        self._buffer = memoryview(bytearray(RECEIVE_CHUNK))
        self._reading = False
        self._closed = False
        self._resume_reading()

    @classmethod
    async def open(cls, listen: Sequence[Address] = (), *, peer_udp_port: int | None = None,
                   udp_port: int | None = None, config: Config | None = None) -> Self:
        """Bind ``listen`` and accept associations, or (no ``listen``) an unbound client.

        ``udp_port``: a server's local SCTP-over-UDP port, which for the kernel is the
        machine-wide sysctl net.sctp.udp_port; ``peer_udp_port``: the UDP port of peers
        reached over UDP (RFC 6951), set with SCTP_REMOTE_UDP_ENCAPS_PORT.
        """
        config = config or Config()
        sock = await open_endpoint_socket(listen, config, udp_port=udp_port,
                                          peer_udp_port=peer_udp_port)
        return cls(sock, config)

    # -----------------------------------------------------------------------------------
    # Reading: messages, and notifications that become AssociationChange

    def _resume_reading(self) -> None:
        if not self._reading and not self._closed:
            self._reading = True
            self._loop.add_reader(self._sock.fileno(), self._on_readable)

    def _pause_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._sock.fileno())

    def _on_readable(self) -> None:
        for _ in range(READS_PER_WAKEUP):
            try:
                nbytes, ancdata, flags, address = self._sock.recvmsg_into(
                    [self._buffer], _RCVINFO_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # a pending socket error is reported once, then cleared
                log.warning("SCTP receive failed: %s", exc)
                return
            event = self._events.receive(bytes(self._buffer[:nbytes]), ancdata, flags,
                                         address)
            if event is not None:
                self._on_event(event)
            if self._inbox_bytes >= MAX_INBOX_BYTES:
                self._pause_reading()
                return

    def _on_event(self, event: Output) -> None:
        if isinstance(event, MessageTooLarge):
            self.abort(event.assoc_id, f"message larger than {event.limit} bytes")
            return
        if isinstance(event, AssociationChange):
            waiters = [] if event.state in (AssocState.COMM_UP, AssocState.RESTART) \
                else self._ending.pop(event.assoc_id, [])
            if event.peer is not None:
                waiters += self._connecting.pop(address_key(event.peer), [])
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(event)
        self._deliver(event)

    def _deliver(self, item: Received) -> None:
        self._inbox.append(item)
        if isinstance(item, UserMessage):
            self._inbox_bytes += len(item.data)
        self._wake(self._receivers)

    @staticmethod
    def _wake(waiters: list[asyncio.Future[None]]) -> None:
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        waiters.clear()

    # -----------------------------------------------------------------------------------
    # Writing

    def _on_writable(self) -> None:
        self._loop.remove_writer(self._sock.fileno())
        self._wake(self._writable)

    async def _wait_writable(self) -> None:
        waiter = self._loop.create_future()
        if not self._writable:
            self._loop.add_writer(self._sock.fileno(), self._on_writable)
        self._writable.append(waiter)
        await waiter

    async def _sendmsg(self, data: bytes, info: bytes, assoc_id: AssocId) -> None:
        """One whole message: SCTP's sendmsg takes all of it or none (RFC 6458 §9.12)."""
        while True:
            if self._closed:
                raise NetworkError("the SCTP endpoint is closed")
            try:
                self._sock.sendmsg([data], [(abi.IPPROTO_SCTP, abi.CmsgType.SNDINFO, info)])
                return
            except (BlockingIOError, InterruptedError):
                await self._wait_writable()
            except OSError as exc:
                raise self._send_error(exc, assoc_id, len(data)) from exc

    def _send_error(self, exc: OSError, assoc_id: AssocId, size: int) -> NetworkError:
        known = self._events.associations.get(assoc_id)
        where = format_sockaddr(known.peer) if known and known.peer else "?"
        if exc.errno in (errno.EPIPE, errno.ESHUTDOWN) or known is None:
            return NetworkError(f"association {assoc_id} with {where} has ended or is "
                                "shutting down", errno=exc.errno, address=where)
        if exc.errno == errno.EMSGSIZE:
            limit = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
            return NetworkError(f"a message of {size} bytes is larger than the kernel's "
                                f"SCTP send buffer ({limit} bytes) — send smaller messages "
                                "or raise net.core.wmem_max", errno=exc.errno, address=where)
        return network_error(exc, where, f"sending on association {assoc_id}")

    # -----------------------------------------------------------------------------------
    # The endpoint API

    @property
    def local_addresses(self) -> list[SockAddr]:
        try:
            answer = self._sock.getsockopt(abi.IPPROTO_SCTP, abi.SockOpt.GET_LOCAL_ADDRS,
                                           _GETSOCKOPT_MAX)
            addresses: list[SockAddr] = list(abi.decode_getaddrs(answer))
        except (OSError, MalformedPacket):
            addresses = []
        return addresses or [plain_address(self._sock.getsockname())]

    @property
    def sctp_port(self) -> int:
        return int(self._sock.getsockname()[1])

    def _known(self, assoc_id: AssocId) -> KernelAssociation:
        known = self._events.associations.get(assoc_id)
        if known is None:
            raise NetworkError(f"association {assoc_id} does not exist or has ended")
        return known

    async def connect(self, address: Address, *,
                      timeout_s: float = CONNECT_TIMEOUT_S) -> AssocId:
        """INIT to each resolved address in turn, until one comes up (RFC 6458 §3.1.5)."""
        if isinstance(address, UnixPath):
            raise NetworkError(f"{address}: SCTP runs over IP, not over a unix socket")
        reasons: list[str] = []
        try:
            async with asyncio.timeout(timeout_s):
                for target in await resolve(address):
                    change = await self._connect_one(plain_address(target.sockaddr))
                    if change.state in (AssocState.COMM_UP, AssocState.RESTART):
                        return change.assoc_id
                    reasons.append(change.reason)
        except TimeoutError:
            pass
        if reasons:
            raise NetworkError(f"could not set up an SCTP association with {address}: "
                               f"{reasons[0]}", address=str(address))
        raise NetworkError(f"no SCTP answer from {address} within {timeout_s:g} s — is the "
                           "server running?", errno=errno.ETIMEDOUT, address=str(address))

    async def _connect_one(self, peer: SockAddr) -> AssociationChange:
        key = address_key(peer)
        existing = self._events.by_peer(key)
        if existing is not None:
            known = self._events.associations[existing]
            return AssociationChange(AssocState.COMM_UP, existing, known.peer, known.outbound,
                                     known.inbound)
        waiter: asyncio.Future[AssociationChange] = self._loop.create_future()
        first = key not in self._connecting
        self._connecting.setdefault(key, []).append(waiter)
        if first:
            code = self._sock.connect_ex(self._sockaddr(peer))
            if code not in (0, errno.EINPROGRESS, errno.EALREADY, errno.EISCONN):
                self._connecting.pop(key, None)
                raise network_error(OSError(code, errno.errorcode.get(code, "")),
                                    format_sockaddr(peer), "connect")
        try:
            return await waiter
        except asyncio.CancelledError:
            # Timed out or cancelled: drop the half-open association (found by address).
            if key in self._connecting and self._events.by_peer(key) is None:
                self._connecting.pop(key, None)
                self._abort_address(peer, "connection attempt abandoned")
            raise

    def _sockaddr(self, peer: SockAddr) -> SockAddr:
        """``peer`` in this socket's family (IPv4 peers are IPv4-mapped on IPv6)."""
        assert not isinstance(peer, str)
        if self._sock.family == socket.AF_INET6 and len(peer) == 2:
            return f"::ffff:{peer[0]}", peer[1], 0, 0
        if self._sock.family == socket.AF_INET and len(peer) == 4:
            raise NetworkError(f"{format_sockaddr(peer)} is IPv6 but this endpoint is "
                               "bound to IPv4 addresses only", address=format_sockaddr(peer))
        return peer

    async def _association_for(self, to: AssocId | Address) -> AssocId:
        if isinstance(to, int):
            return to
        if isinstance(to, HostPort):
            for target in await resolve(to):
                existing = self._events.by_peer(address_key(plain_address(target.sockaddr)))
                if existing is not None:
                    return existing
        return await self.connect(to)

    async def send(self, data: bytes, *, to: AssocId | Address, stream: int = 0,
                   ppid: int = 0, unordered: bool = False) -> AssocId:
        assoc_id = await self._association_for(to)
        known = self._known(assoc_id)
        if not 0 <= stream < known.outbound:
            raise UsageError(f"stream {stream} is not among the {known.outbound} outbound "
                             f"streams of association {assoc_id}")
        flags = abi.SendFlag.UNORDERED if unordered else abi.SendFlag(0)
        await self._sendmsg(data, abi.encode_sndinfo(stream, ppid, assoc_id, flags), assoc_id)
        return assoc_id

    async def receive(self) -> Received:
        while not self._inbox:
            if self._closed:
                raise NetworkError("the SCTP endpoint is closed")
            waiter = self._loop.create_future()
            self._receivers.append(waiter)
            await waiter
        item = self._inbox.popleft()
        if isinstance(item, UserMessage):
            self._inbox_bytes -= len(item.data)
            if self._inbox_bytes < MAX_INBOX_BYTES // 2:
                self._resume_reading()
        return item

    def streams(self, assoc_id: AssocId) -> tuple[int, int]:
        known = self._known(assoc_id)
        return known.outbound, known.inbound

    async def shutdown(self, assoc_id: AssocId) -> None:
        """SCTP_EOF (RFC 6458 §5.3.4): SHUTDOWN once queued data is acknowledged."""
        if assoc_id not in self._events.associations:
            return
        waiter: asyncio.Future[AssociationChange] = self._loop.create_future()
        self._ending.setdefault(assoc_id, []).append(waiter)
        info = abi.encode_sndinfo(0, 0, assoc_id, abi.SendFlag.EOF)
        try:
            await self._sendmsg(b"", info, assoc_id)
        except NetworkError:
            if assoc_id not in self._events.associations:  # it ended meanwhile
                return
        change = await waiter
        if change.state == AssocState.COMM_LOST:
            raise PeerRefused(f"association {assoc_id} ended before its shutdown completed: "
                              f"{change.reason}")

    def abort(self, assoc_id: AssocId, reason: str = "") -> None:
        """SCTP_ABORT (RFC 6458 §5.3.4): ABORT with ``reason`` as User-Initiated Abort."""
        text = reason.encode()[:MAX_ABORT_REASON]
        info = abi.encode_sndinfo(0, 0, assoc_id, abi.SendFlag.ABORT)
        try:
            self._sock.sendmsg([text], [(abi.IPPROTO_SCTP, abi.CmsgType.SNDINFO, info)])
        except OSError as exc:  # already gone: nothing left to abort
            log.debug("association %d: abort not sent: %s", assoc_id, exc)
            return
        self._events.aborted_locally(assoc_id, reason)

    def _abort_address(self, peer: SockAddr, reason: str) -> None:
        """ABORT the association with ``peer`` whose id is not known yet."""
        info = abi.encode_sndinfo(0, 0, 0, abi.SendFlag.ABORT)
        with contextlib.suppress(OSError):
            self._sock.sendmsg([reason.encode()], [(abi.IPPROTO_SCTP, abi.CmsgType.SNDINFO,
                                                    info)], 0, self._sockaddr(peer))

    async def close(self) -> None:
        """Shut every association down (at most CLOSE_TIMEOUT_S), abort the rest, close."""
        if self._closed:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await asyncio.gather(*(self.shutdown(i) for i in list(self._events.associations)),
                                     return_exceptions=True)
        for assoc_id in list(self._events.associations):
            self.abort(assoc_id, "endpoint closed")
        self._closed = True
        self._pause_reading()
        if self._writable:
            self._loop.remove_writer(self._sock.fileno())
            self._wake(self._writable)
        self._sock.close()
        self._wake(self._receivers)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


# ---------------------------------------------------------------------------------------
