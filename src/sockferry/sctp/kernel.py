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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from sockferry.errors import (
    MalformedPacket,
    NetworkError,
    NotAvailable,
    PeerRefused,
    UsageError,
)
from sockferry.sctp import chunks
from sockferry.sctp import linux_abi as abi
from sockferry.sctp.association import Config, cause_text
from sockferry.sctp.endpoint import (
    AssociationChange,
    AssocId,
    AssocState,
    Message,
    Received,
)
from sockferry.sockets import (
    Address,
    HostPort,
    SockAddr,
    UnixPath,
    format_sockaddr,
    grow_buffers,
    network_error,
    resolve,
)

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
# Kernel socket buffers asked for (capped by net.core.[rw]mem_max unless root).
SOCKET_BUFFER = 4 << 20
# User-Initiated Abort reason sent to the peer (RFC 9260 §3.3.10.12); longer is cut.
MAX_ABORT_REASON = 256
# A readable answer of SCTP_GET_LOCAL_ADDRS; CPython's getsockopt allows at most 1024.
_GETSOCKOPT_MAX = 1024
_UDP_PORT_SYSCTL = Path("/proc/sys/net/sctp/udp_port")
_RCVINFO_SPACE = socket.CMSG_SPACE(abi.RCVINFO.size)
_SUBSCRIBED = (abi.NotificationType.ASSOC_CHANGE, abi.NotificationType.SHUTDOWN_EVENT,
               abi.NotificationType.SEND_FAILED_EVENT, abi.NotificationType.REMOTE_ERROR,
               abi.NotificationType.PARTIAL_DELIVERY_EVENT)
# errno of socket(IPPROTO_SCTP) on a kernel built or configured without SCTP.
_NO_SCTP = {errno.EPROTONOSUPPORT, errno.ESOCKTNOSUPPORT, errno.EAFNOSUPPORT}


def kernel_sctp_missing() -> str | None:
    """None when this kernel opens SCTP sockets; otherwise why it does not."""
    try:
        probe = socket.socket(socket.AF_INET, socket.SOCK_SEQPACKET, abi.IPPROTO_SCTP)
    except OSError as exc:
        return exc.strerror or str(exc)
    probe.close()
    return None


def kernel_udp_port() -> int:
    """The kernel's local SCTP-over-UDP port (sysctl net.sctp.udp_port); 0 when off."""
    try:
        return int(_UDP_PORT_SYSCTL.read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def _plain(address: Any) -> SockAddr:
    """A peer address as users read it: IPv4-mapped IPv6 back to IPv4, no flow info."""
    host, port = str(address[0]), int(address[1])
    if host.startswith("::ffff:") and "." in host:
        return host[7:], port
    if ":" in host:
        return host, port, 0, int(address[3]) if len(address) > 3 else 0
    return host, port


def _key(address: SockAddr) -> tuple[str, int]:
    assert not isinstance(address, str)
    return str(address[0]), int(address[1])


@dataclass(slots=True)
class _Association:
    peer: SockAddr | None
    outbound: int
    inbound: int


class _Pieces:
    """A message or notification read in pieces until MSG_EOR (RFC 6458 §8.1.20)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0
        self.notification = False
        self.info: abi.RcvInfo | None = None
        self.peer: Any = None
        self.discarding = False

    def reset(self) -> None:
        self.parts = []
        self.size = 0
        self.info = self.peer = None
        self.discarding = False


class KernelEndpoint:
    """A one-to-many SCTP endpoint on the Linux kernel's SCTP."""

    def __init__(self, sock: socket.socket, config: Config) -> None:
        self._sock = sock
        self._config = config
        self._loop = asyncio.get_running_loop()
        self._inbox: deque[Received] = deque()
        self._inbox_bytes = 0
        self._receivers: list[asyncio.Future[None]] = []
        self._associations: dict[AssocId, _Association] = {}
        self._connecting: dict[tuple[str, int], list[asyncio.Future[AssociationChange]]] = {}
        self._ending: dict[AssocId, list[asyncio.Future[AssociationChange]]] = {}
        self._aborted: dict[AssocId, str] = {}
        self._writable: list[asyncio.Future[None]] = []
        self._pieces = _Pieces()
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
        _check_udp(udp_port, peer_udp_port)
        targets = await _resolve_all(listen)
        family = socket.AF_INET6 if not targets or any(
            len(t) == 4 for t in targets) else socket.AF_INET
        if not targets and not socket.has_ipv6:
            family = socket.AF_INET
        sock = _open_socket(family)
        try:
            config = config or Config()
            _configure(sock, config, peer_udp_port)
            if targets:
                _bind_all(sock, targets)
                sock.listen(socket.SOMAXCONN)
        except BaseException:
            sock.close()
            raise
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
            self._on_piece(bytes(self._buffer[:nbytes]), ancdata, flags, address)
            if self._inbox_bytes >= MAX_INBOX_BYTES:
                self._pause_reading()
                return

    def _on_piece(self, data: bytes, ancdata: list[tuple[int, int, bytes]], flags: int,
                  address: Any) -> None:
        pieces = self._pieces
        notification = bool(flags & abi.MSG_NOTIFICATION)
        if pieces.parts and pieces.notification != notification:
            # A partial delivery was aborted (the notification says so): drop its start.
            log.warning("an incomplete message of %d bytes was dropped", pieces.size)
            pieces.reset()
        if not pieces.parts and not pieces.discarding:
            pieces.notification, pieces.peer = notification, address
            pieces.info = _rcvinfo(ancdata)
        if not pieces.discarding:
            pieces.parts.append(data)
            pieces.size += len(data)
            if not notification and pieces.size > self._config.max_message_size:
                self._refuse_large(pieces)
        if not flags & socket.MSG_EOR:
            return
        whole = b"".join(pieces.parts)
        info, peer, discarded = pieces.info, pieces.peer, pieces.discarding
        pieces.reset()
        if discarded:
            return
        if notification:
            self._on_notification(whole, peer)
        elif info is None:
            log.warning("a message without SCTP_RCVINFO was dropped")
        else:
            self._deliver(Message(whole, AssocId(info.assoc_id), info.stream, info.ppid,
                                  _plain(peer),
                                  bool(info.flags & abi.SendFlag.UNORDERED)))

    def _refuse_large(self, pieces: _Pieces) -> None:
        """Like the userspace stack: a message over the limit aborts its association."""
        limit = self._config.max_message_size
        pieces.parts.clear()
        pieces.discarding = True
        if pieces.info is not None:
            log.warning("association %d: a message exceeds %d bytes; aborting it",
                        pieces.info.assoc_id, limit)
            self.abort(AssocId(pieces.info.assoc_id), f"message larger than {limit} bytes")

    def _on_notification(self, data: bytes, address: Any) -> None:
        try:
            note = abi.decode_notification(data)
        except MalformedPacket as exc:
            log.warning("an SCTP notification was not understood: %s", exc)
            return
        match note:
            case abi.AssocChangeNote():
                self._on_assoc_change(note, _plain(address) if address else None)
            case abi.ShutdownNote():
                log.debug("association %d: the peer is shutting down", note.assoc_id)
            case abi.SendFailedNote():
                log.warning("association %d: a message of %d bytes on stream %d was not "
                            "delivered", note.assoc_id, len(note.data), note.stream)
            case abi.RemoteErrorNote():
                log.info("association %d: the peer reported an error: %s", note.assoc_id,
                         cause_text((chunks.Cause(note.cause, note.data),)))
            case abi.PartialDeliveryNote():
                log.warning("association %d: delivery of a message on stream %d was "
                            "aborted", note.assoc_id, note.stream)
            case abi.OtherNote():
                log.debug("SCTP notification %#x ignored", note.type)

    def _on_assoc_change(self, note: abi.AssocChangeNote, peer: SockAddr | None) -> None:
        assoc_id = AssocId(note.assoc_id)
        state = AssocState[note.state.name]
        outbound, inbound = note.outbound_streams, note.inbound_streams
        if state in (AssocState.COMM_UP, AssocState.RESTART):
            self._associations[assoc_id] = _Association(peer, outbound, inbound)
            reason = ""
        else:
            known = self._associations.pop(assoc_id, None)
            if known is not None:
                peer = peer or known.peer
                outbound, inbound = known.outbound, known.inbound
            reason = self._reason(assoc_id, state, note)
        change = AssociationChange(state, assoc_id, peer, outbound, inbound, reason)
        waiters = self._ending.pop(assoc_id, []) if state not in (
            AssocState.COMM_UP, AssocState.RESTART) else []
        if peer is not None:
            waiters += self._connecting.pop(_key(peer), [])
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(change)
        self._deliver(change)

    def _reason(self, assoc_id: AssocId, state: AssocState,
                note: abi.AssocChangeNote) -> str:
        """Why an association ended, in the userspace stack's words."""
        if assoc_id in self._aborted:
            reason = self._aborted.pop(assoc_id)
            return f"aborted locally: {reason}" if reason else "aborted locally"
        causes = _abort_causes(note.info)
        if causes:
            return f"the peer aborted the association: {cause_text(causes)}"
        # Linux reports an ABORT without causes and exhausted retransmissions alike.
        if state == AssocState.COMM_LOST:
            return "the peer aborted or stopped answering"
        if state == AssocState.CANT_STR_ASSOC:
            return "the peer refused the association or did not answer INIT"
        return ""

    def _deliver(self, item: Received) -> None:
        self._inbox.append(item)
        if isinstance(item, Message):
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
        known = self._associations.get(assoc_id)
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
        return addresses or [_plain(self._sock.getsockname())]

    @property
    def sctp_port(self) -> int:
        return int(self._sock.getsockname()[1])

    def _known(self, assoc_id: AssocId) -> _Association:
        known = self._associations.get(assoc_id)
        if known is None:
            raise NetworkError(f"association {assoc_id} does not exist or has ended")
        return known

    def _by_peer(self, key: tuple[str, int]) -> AssocId | None:
        for assoc_id, known in self._associations.items():
            if known.peer is not None and _key(known.peer) == key:
                return assoc_id
        return None

    async def connect(self, address: Address, *,
                      timeout_s: float = CONNECT_TIMEOUT_S) -> AssocId:
        """INIT to each resolved address in turn, until one comes up (RFC 6458 §3.1.5)."""
        if isinstance(address, UnixPath):
            raise NetworkError(f"{address}: SCTP runs over IP, not over a unix socket")
        reasons: list[str] = []
        try:
            async with asyncio.timeout(timeout_s):
                for target in await resolve(address):
                    change = await self._connect_one(_plain(target.sockaddr))
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
        key = _key(peer)
        existing = self._by_peer(key)
        if existing is not None:
            known = self._associations[existing]
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
            if key in self._connecting and self._by_peer(key) is None:
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
                existing = self._by_peer(_key(_plain(target.sockaddr)))
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
        if isinstance(item, Message):
            self._inbox_bytes -= len(item.data)
            if self._inbox_bytes < MAX_INBOX_BYTES // 2:
                self._resume_reading()
        return item

    def streams(self, assoc_id: AssocId) -> tuple[int, int]:
        known = self._known(assoc_id)
        return known.outbound, known.inbound

    async def shutdown(self, assoc_id: AssocId) -> None:
        """SCTP_EOF (RFC 6458 §5.3.4): SHUTDOWN once queued data is acknowledged."""
        if assoc_id not in self._associations:
            return
        waiter: asyncio.Future[AssociationChange] = self._loop.create_future()
        self._ending.setdefault(assoc_id, []).append(waiter)
        info = abi.encode_sndinfo(0, 0, assoc_id, abi.SendFlag.EOF)
        try:
            await self._sendmsg(b"", info, assoc_id)
        except NetworkError:
            if assoc_id not in self._associations:  # it ended meanwhile
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
        self._aborted[assoc_id] = reason

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
                await asyncio.gather(*(self.shutdown(i) for i in list(self._associations)),
                                     return_exceptions=True)
        for assoc_id in list(self._associations):
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
# Opening and configuring the socket


def _check_udp(udp_port: int | None, peer_udp_port: int | None) -> None:
    """The kernel speaks SCTP over UDP only from its one sysctl port (RFC 6951 §5)."""
    if udp_port is None and peer_udp_port is None:
        return
    local = kernel_udp_port()
    if udp_port is not None and udp_port != local:
        raise NotAvailable(f"the kernel's SCTP-over-UDP port is {local or 'off'}, not "
                           f"{udp_port} — run 'sysctl -w net.sctp.udp_port={udp_port}' as "
                           "root, or use --transport udp")
    if local == 0:
        raise NotAvailable("the kernel's SCTP over UDP is off — run 'sysctl -w "
                           "net.sctp.udp_port=9899' as root, or use --transport udp")


async def _resolve_all(listen: Sequence[Address]) -> list[SockAddr]:
    targets: list[SockAddr] = []
    for address in listen:
        if isinstance(address, UnixPath):
            raise NetworkError(f"{address}: SCTP runs over IP, not over a unix socket")
        if address.host == "":
            wildcard: SockAddr = (("::", address.port, 0, 0) if socket.has_ipv6
                                  else ("0.0.0.0", address.port))
            targets.append(wildcard)
            continue
        targets.extend(_plain(t.sockaddr) for t in await resolve(address, passive=True))
    ports = {_key(t)[1] for t in targets} - {0}
    if len(ports) > 1:
        raise UsageError("an SCTP endpoint has one port; the addresses to listen on name "
                         f"ports {', '.join(map(str, sorted(ports)))}")
    return targets


def _open_socket(family: socket.AddressFamily) -> socket.socket:
    try:
        sock = socket.socket(family, socket.SOCK_SEQPACKET, abi.IPPROTO_SCTP)
    except OSError as exc:
        if exc.errno in _NO_SCTP:
            raise NotAvailable("this kernel has no SCTP (socket() said: "
                               f"{exc.strerror}) — load it with 'modprobe sctp', or use "
                               "--transport udp") from exc
        raise network_error(exc, "an SCTP socket", "open") from exc
    sock.setblocking(False)
    return sock


def _configure(sock: socket.socket, config: Config, peer_udp_port: int | None) -> None:
    """Options before any association exists: they apply to all future ones."""
    level = abi.IPPROTO_SCTP
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    # The send buffer also caps the size of one message (EMSGSIZE above it).
    grow_buffers(sock, SOCKET_BUFFER)
    streams = config.streams
    rto_ms = (round(config.rto_initial_s * 1000), round(config.rto_max_s * 1000),
              round(config.rto_min_s * 1000))
    options: list[tuple[int, bytes | int]] = [
        (abi.SockOpt.INITMSG, abi.encode_initmsg(streams.outbound, streams.max_inbound,
                                                 config.max_init_retransmits, rto_ms[1])),
        (abi.SockOpt.RECVRCVINFO, 1),
        (abi.SockOpt.FRAGMENT_INTERLEAVE, 0),  # a message in pieces blocks the others
        (abi.SockOpt.NODELAY, 1),  # messages go out at once, as the userspace stack's do
        (abi.SockOpt.RTOINFO, abi.encode_rtoinfo(*rto_ms)),
        (abi.SockOpt.ASSOCINFO, abi.encode_assocparams(
            config.association_max_retrans, round(config.valid_cookie_life_s * 1000))),
        (abi.SockOpt.PEER_ADDR_PARAMS, abi.encode_paddrparams(
            round(config.hb_interval_s * 1000), 0)),
    ]
    options += [(abi.SockOpt.EVENT, abi.encode_event(kind, True)) for kind in _SUBSCRIBED]
    if peer_udp_port is not None:
        options.append((abi.SockOpt.REMOTE_UDP_ENCAPS_PORT,
                        abi.encode_udpencaps(peer_udp_port)))
    for option, value in options:
        try:
            sock.setsockopt(level, option, value)
        except OSError as exc:
            name = abi.SockOpt(option).name
            raise NotAvailable(f"this kernel's SCTP refused option SCTP_{name} "
                               f"({exc.strerror}) — it may be too old (Linux 5.11 or later "
                               "is needed), use --transport udp") from exc


def _bind_all(sock: socket.socket, targets: list[SockAddr]) -> None:
    """sctp_bindx(SCTP_BINDX_ADD_ADDR) of every address on one port (RFC 6458 §9.1)."""
    port = 0
    for target in targets:
        host, wanted = _key(target)
        address = (host, wanted or port) if len(target) == 2 else (host, wanted or port, 0, 0)
        try:
            sock.setsockopt(abi.IPPROTO_SCTP, abi.SockOpt.SOCKOPT_BINDX_ADD,
                            abi.encode_sockaddr(address))
        except OSError as exc:
            raise network_error(exc, format_sockaddr(address), "bind") from exc
        port = port or int(sock.getsockname()[1])


def _rcvinfo(ancdata: list[tuple[int, int, bytes]]) -> abi.RcvInfo | None:
    for level, kind, data in ancdata:
        if level == abi.IPPROTO_SCTP and kind == abi.CmsgType.RCVINFO:
            try:
                return abi.decode_rcvinfo(data)
            except MalformedPacket:
                return None
    return None


def _abort_causes(info: bytes) -> tuple[chunks.Cause, ...]:
    """The error causes of a received ABORT, which Linux puts in ``sac_info`` (RFC 6458
    §6.1.1 asks for the whole chunk; Linux gives its body, the chunk header stripped)."""
    if not info:
        return ()
    header = chunks.CHUNK_HEADER.pack(chunks.ChunkType.ABORT, 0,
                                      chunks.CHUNK_HEADER_SIZE + len(info))
    try:
        decoded = chunks.decode_chunks(header + info, 0)
    except MalformedPacket:
        return ()
    first = decoded[0] if decoded else None
    return first.causes if isinstance(first, chunks.AbortChunk) else ()
