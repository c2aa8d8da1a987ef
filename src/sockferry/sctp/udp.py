"""SCTP over UDP (RFC 6951): the asyncio driver of ``Stack`` behind the endpoint API.

One UDP socket per bound address feeds one ``Stack``; every association of the endpoint
shares them.  The driver only moves datagrams, events and the one timer; the protocol is
in ``stack.py`` and ``association.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import secrets
import socket
import struct
from collections.abc import Sequence
from typing import Any, Self, cast

from sockferry.addresses import Address, HostPort, SockAddr, UnixPath, format_sockaddr
from sockferry.errors import NetworkError, PeerRefused, UsageError
from sockferry.sctp.config import Config
from sockferry.sctp.endpoint import (
    AssociationChange,
    AssocId,
    AssocState,
    Received,
    UserMessage,
)
from sockferry.sctp.stack import Stack
from sockferry.sctp.states import AssociationState
from sockferry.sockets import grow_buffers, open_listeners, resolve
from sockferry.timers import LazyTimer

log = logging.getLogger("sockferry.sctp")

# Bytes a sender may queue on one association before send() waits (like SO_SNDBUF).
SEND_BUFFER = 4 << 20
# Kernel buffers asked for on the UDP socket: a window of 64 KiB datagrams must fit.
SOCKET_BUFFER = 8 << 20
# How long close() lets associations shut down gracefully before aborting them.
CLOSE_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 30.0
# The head start one resolved address gets before the next is tried too (RFC 8305 §5).
CONNECT_STAGGER_S = 0.25
MAX_ROUTES = 10_000
_IP_MTU = 14  # Linux <linux/in.h>, <linux/in6.h>: the route's MTU of a connected socket
_IPV6_MTU = 24
_FALLBACK_MTU = 1280  # the IPv6 minimum: safe on any path when the route is unknown


def _plain(address: Any) -> tuple[str, int]:
    """(host, port) with IPv4-mapped IPv6 turned back into IPv4."""
    host, port = address[0], address[1]
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return host, port


def path_packet_size(address: SockAddr) -> int:
    """The largest SCTP packet to ``address`` in one UDP datagram, from the route's MTU."""
    host = str(address[0])
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    overhead = (40 if family == socket.AF_INET6 else 20) + 8
    mtu = _FALLBACK_MTU
    with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect(address if not isinstance(address, str) else (host, 9))
        mtu = probe.getsockopt(socket.IPPROTO_IPV6 if family == socket.AF_INET6
                               else socket.IPPROTO_IP,
                               _IPV6_MTU if family == socket.AF_INET6 else _IP_MTU)
    # A UDP datagram carries at most 65535 - 8 bytes (less the IPv4 header, for IPv4).
    ceiling = 65527 if family == socket.AF_INET6 else 65507
    return min(mtu - overhead, ceiling)


# Linux's IP_RECVERR and IPV6_RECVERR (Python names neither): queue ICMP errors, with the
# packet that caused them, on the socket's error queue even when it is not connected.
_IP_RECVERR = 11
_IPV6_RECVERR = 25
# struct sock_extended_err (linux/errqueue.h): ee_errno, ee_origin, ee_type, ee_code, ...
_EXTENDED_ERR = struct.Struct("=IBBBBII")
_MAX_ERRORS_PER_CALL = 64


def enable_icmp_errors(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVERR, 1)
            # A dual-stack socket reports IPv4 errors through the IPv4 option.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IP, _IP_RECVERR, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, _IP_RECVERR, 1)


def icmp_errors(sock: socket.socket) -> list[tuple[int, bytes, SockAddr]]:
    """Drain the error queue: (errno, the packet that caused it, where it was sent).

    It must be drained: an error left queued keeps the socket reported as readable."""
    out: list[tuple[int, bytes, SockAddr]] = []
    for _ in range(_MAX_ERRORS_PER_CALL):
        try:
            quoted, ancillary, _flags, destination = sock.recvmsg(
                MAX_QUOTED_BYTES, 512, socket.MSG_ERRQUEUE)
        except (BlockingIOError, InterruptedError):
            break
        except OSError:
            break
        code = 0
        for level, kind, data in ancillary:
            if len(data) >= _EXTENDED_ERR.size and (level, kind) in (
                    (socket.IPPROTO_IP, _IP_RECVERR), (socket.IPPROTO_IPV6, _IPV6_RECVERR)):
                code = _EXTENDED_ERR.unpack_from(data)[0]
        if destination:
            out.append((code, quoted, _plain(destination)))
    return out


# Enough of a quoted packet for the common header and an INIT's Initiate Tag.
MAX_QUOTED_BYTES = 64


class _Socket(asyncio.DatagramProtocol):
    def __init__(self, endpoint: UdpEndpoint, sock: socket.socket) -> None:
        self.endpoint = endpoint
        self.sock = sock
        self.transport: asyncio.DatagramTransport | None = None
        self.family = sock.family

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport quacks like DatagramTransport without subclassing it.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.endpoint.datagram_received(data, _plain(addr), self)

    def error_received(self, exc: Exception) -> None:
        """An ICMP error arrived (IP_RECVERR): see which peer it is about."""
        log.debug("UDP error: %s", exc)
        for code, quoted, destination in icmp_errors(self.sock):
            if code == errno.ECONNREFUSED:
                self.endpoint.unreachable(quoted, destination)


class UdpEndpoint:
    """A one-to-many SCTP endpoint carried in UDP."""

    def __init__(self, config: Config, peer_udp_port: int | None) -> None:
        self._config = config
        self._peer_udp_port = peer_udp_port
        self._loop = asyncio.get_running_loop()
        self._sockets: list[_Socket] = []
        self._stack: Stack | None = None
        self._inbox: asyncio.Queue[Received | None] = asyncio.Queue()
        self._waiters: dict[AssocId, list[asyncio.Future[AssociationChange]]] = {}
        self._space: dict[AssocId, asyncio.Future[None]] = {}
        self._timer = LazyTimer(self._loop, self._on_timer)
        self._route: dict[str, _Socket] = {}
        self._hidden: set[AssocId] = set()  # connect attempts that lost the race
        # Attempts of a connect() in progress: their failures are its to report.
        self._connecting: set[AssocId] = set()
        self._closed = False
        self._flush_scheduled = False

    @classmethod
    async def open(cls, listen: Sequence[Address] = (), *, udp_port: int | None = None,
                   peer_udp_port: int | None = None, config: Config | None = None,
                   inherited: Sequence[socket.socket] = ()) -> Self:
        """Bind ``listen`` (SCTP port = UDP port unless ``udp_port``), or an ephemeral
        port; or carry SCTP in the ``inherited`` UDP sockets (socket activation: the SCTP
        port is theirs)."""
        endpoint = cls(config or Config(), peer_udp_port)
        try:
            if inherited:
                await endpoint._adopt(inherited)
            else:
                await endpoint._bind(listen, udp_port)
        except BaseException:
            await endpoint.close()
            raise
        return endpoint

    async def _bind(self, listen: Sequence[Address], udp_port: int | None) -> None:
        """One SCTP port for the endpoint; one UDP socket per address, all on one port."""
        targets = list(listen) or [HostPort("", 0)]
        if any(isinstance(a, UnixPath) for a in targets):
            raise NetworkError("SCTP runs over IP, not over a unix socket")
        ports = {a.port for a in targets if isinstance(a, HostPort)}
        if len(ports) > 1:
            raise UsageError("an SCTP endpoint has one port: give every --listen address "
                             "the same port")
        sctp_port = ports.pop()
        bound = udp_port if udp_port is not None else sctp_port
        for address in targets:
            assert isinstance(address, HostPort)
            for sock in await open_listeners(HostPort(address.host, bound), socket.SOCK_DGRAM):
                await self._carry(sock)
                bound = sock.getsockname()[1]  # port 0: the rest share the kernel's pick
        self._start_stack(sctp_port or bound)

    async def _adopt(self, sockets: Sequence[socket.socket]) -> None:
        ports = {sock.getsockname()[1] for sock in sockets}
        if len(ports) > 1:
            raise UsageError("an SCTP endpoint has one port: give every ListenDatagram= of "
                             "the .socket unit the same port")
        self._start_stack(ports.pop())  # first: a datagram may be waiting already
        for sock in sockets:
            await self._carry(sock)

    async def _carry(self, sock: socket.socket) -> None:
        grow_buffers(sock, SOCKET_BUFFER)
        enable_icmp_errors(sock)
        _, protocol = await self._loop.create_datagram_endpoint(
            lambda: _Socket(self, sock), sock=sock)
        self._sockets.append(protocol)

    def _start_stack(self, sctp_port: int) -> None:
        self._stack = Stack(sctp_port, self._config, secret=secrets.token_bytes(32),
                            rng=secrets.token_bytes, packet_size=path_packet_size)

    @property
    def stack(self) -> Stack:
        assert self._stack is not None
        return self._stack

    @property
    def local_addresses(self) -> list[SockAddr]:
        out = []
        for protocol in self._sockets:
            if protocol.transport is not None:
                out.append(protocol.transport.get_extra_info("sockname"))
        return out

    @property
    def sctp_port(self) -> int:
        return self.stack.local_port

    # -----------------------------------------------------------------------------------
    # Moving datagrams, events and the timer

    def datagram_received(self, data: bytes, addr: tuple[str, int], via: _Socket) -> None:
        if len(self._sockets) > 1:
            # Answer from the socket (the local address) the peer wrote to: the peer's
            # association is bound to it.  Bounded: forged sources must not grow it.
            if len(self._route) >= MAX_ROUTES:
                self._route.clear()
            self._route[addr[0]] = via
        try:
            self.stack.receive_datagram(data, addr, self._loop.time())
        except Exception:  # a bug met by one peer's packet must not stop the others
            log.exception("internal error on a packet from %s; packet dropped",
                          format_sockaddr(addr))
        # Datagrams read in one go are answered together, once the loop is through them.
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def unreachable(self, quoted: bytes, destination: SockAddr) -> None:
        """ICMP port unreachable from ``destination``: nobody listens on that UDP port."""
        self.stack.unreachable(quoted, destination,
                               f"connection refused by {format_sockaddr(destination)} "
                               "(ICMP port unreachable) — is the server running, and is "
                               "the UDP port right?")
        self._flush()

    def _socket_for(self, host: str) -> _Socket | None:
        known = self._route.get(host)
        if known is not None:
            return known
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        for protocol in self._sockets:
            sock = protocol.transport.get_extra_info("socket") if protocol.transport else None
            if sock is not None and (sock.family == family or (
                    sock.family == socket.AF_INET6 and _dual_stack(sock))):
                return protocol
        return None

    def _flush(self) -> None:
        self._flush_scheduled = False
        stack = self.stack
        for data, addr in stack.datagrams_to_send():
            assert not isinstance(addr, str)
            host = str(addr[0])
            protocol = self._socket_for(host)
            if protocol is None or protocol.transport is None:
                continue
            if protocol.family == socket.AF_INET6 and "." in host:
                protocol.transport.sendto(data, (f"::ffff:{host}", addr[1], 0, 0))
            else:
                protocol.transport.sendto(data, addr)
        for event in stack.events():
            self._on_event(event)
        self._wake_senders()
        self._timer.arm(stack.next_deadline())

    def _on_event(self, event: Received) -> None:
        if event.assoc_id in self._connecting and isinstance(event, AssociationChange):
            if event.state in (AssocState.COMM_UP, AssocState.RESTART):
                self._connecting.discard(event.assoc_id)  # from now on the app's to see
                self._inbox.put_nowait(event)
            # else: connect() reports the failure (or tries the next address)
        elif event.assoc_id in self._hidden:
            if isinstance(event, AssociationChange) and event.state not in (
                    AssocState.COMM_UP, AssocState.RESTART):
                self._hidden.discard(event.assoc_id)
        else:
            self._inbox.put_nowait(event)
        if isinstance(event, AssociationChange):
            for waiter in self._waiters.pop(event.assoc_id, []):
                if not waiter.done():
                    waiter.set_result(event)
            if event.state in (AssocState.COMM_UP, AssocState.RESTART):
                return
            space = self._space.pop(event.assoc_id, None)
            if space is not None and not space.done():
                space.set_result(None)

    def _wake_senders(self) -> None:
        for assoc_id, future in list(self._space.items()):
            assoc = self.stack.association(assoc_id)
            if assoc is None or assoc.buffered_amount < SEND_BUFFER:
                del self._space[assoc_id]
                if not future.done():
                    future.set_result(None)

    def _on_timer(self, due: float) -> None:
        now = max(due, self._loop.time())
        deadline = self.stack.next_deadline()
        if deadline is not None and deadline <= now:
            self.stack.handle_timeout(now)
        self._flush()

    # -----------------------------------------------------------------------------------
    # The endpoint API

    async def connect(self, address: Address, *,
                      timeout_s: float = CONNECT_TIMEOUT_S) -> AssocId:
        """Try each resolved address, the next one starting if the previous has not come
        up within CONNECT_STAGGER_S (RFC 8305's head start); the first up wins."""
        if isinstance(address, UnixPath):
            raise NetworkError(f"{address}: SCTP runs over IP, not over a unix socket")
        targets = [_plain(t.sockaddr) for t in await resolve(address, socket.SOCK_DGRAM)]
        attempts: dict[asyncio.Future[AssociationChange], AssocId] = {}
        reasons: list[str] = []
        winner: AssocId | None = None
        try:
            async with asyncio.timeout(timeout_s):
                for index, (host, port) in enumerate(targets):
                    winner = self._attempt(host, port, attempts)
                    if winner is None:
                        last = index == len(targets) - 1
                        winner = await self._first_up(attempts, reasons,
                                                      None if last else CONNECT_STAGGER_S)
                    if winner is not None:
                        break
        except TimeoutError:
            pass
        finally:
            self._give_up(attempts, winner)
        if winner is not None:
            return winner
        if reasons:
            raise NetworkError(f"could not set up an SCTP association with {address}: "
                               f"{reasons[0]}", address=str(address))
        udp = f" (UDP port {self._peer_udp_port})" if self._peer_udp_port else ""
        raise NetworkError(f"no SCTP answer from {address}{udp} within {timeout_s:g} s — "
                           "is the server running, and is the UDP port right?",
                           address=str(address))

    def _attempt(self, host: str, port: int,
                 attempts: dict[asyncio.Future[AssociationChange], AssocId]) -> AssocId | None:
        """Start (or join) an association to host:port; its id if it is already up."""
        assoc_id = self.stack.connect(host, port, (host, self._peer_udp_port or port),
                                      self._loop.time())
        assoc = self.stack.association(assoc_id)
        if assoc is not None and assoc.state == AssociationState.ESTABLISHED:
            return assoc_id
        waiter = self._loop.create_future()
        self._waiters.setdefault(assoc_id, []).append(waiter)
        attempts[waiter] = assoc_id
        self._connecting.add(assoc_id)
        self._flush()
        return None

    async def _first_up(self, attempts: dict[asyncio.Future[AssociationChange], AssocId],
                        reasons: list[str], within_s: float | None) -> AssocId | None:
        """Wait (``within_s`` at most) for an attempt to come up; failures go to reasons."""
        pending = {f for f in attempts if not f.done()}
        while pending:
            done, pending = await asyncio.wait(pending, timeout=within_s,
                                               return_when=asyncio.FIRST_COMPLETED)
            if not done:
                return None
            for future in done:
                change = future.result()
                if change.state in (AssocState.COMM_UP, AssocState.RESTART):
                    return change.assoc_id
                reasons.append(change.reason)
        return None

    def _give_up(self, attempts: dict[asyncio.Future[AssociationChange], AssocId],
                 winner: AssocId | None) -> None:
        """Abort the attempts that lost; the application never hears of them."""
        for future, assoc_id in attempts.items():
            future.cancel()
            self._connecting.discard(assoc_id)
            if assoc_id != winner and self.stack.association(assoc_id) is not None:
                self._hidden.add(assoc_id)
                self.stack.abort(assoc_id, "another address answered first", self._loop.time())
        self._flush()

    async def send(self, data: bytes, *, to: AssocId | Address, stream: int = 0,
                   ppid: int = 0, unordered: bool = False) -> AssocId:
        assoc_id = to if isinstance(to, int) else await self.connect(to)
        assoc = self.stack.association(assoc_id)
        if assoc is not None and assoc.outbound_streams and not (
                0 <= stream < assoc.outbound_streams):
            # As the kernel backend says it: a caller's value, not a protocol fault.
            raise UsageError(f"stream {stream} is not among the {assoc.outbound_streams} "
                             f"outbound streams of association {assoc_id}")
        while assoc is not None and assoc.buffered_amount >= SEND_BUFFER:
            future = self._space.get(assoc_id)
            if future is None:
                future = self._space[assoc_id] = self._loop.create_future()
            await future
            assoc = self.stack.association(assoc_id)
        try:
            self.stack.send(assoc_id, data, stream=stream, ppid=ppid, unordered=unordered,
                            now=self._loop.time())
        finally:
            self._flush()
        return assoc_id

    async def receive(self) -> Received:
        item = await self._inbox.get()
        if item is None:
            self._inbox.put_nowait(None)  # wake any other receiver too
            raise NetworkError("the SCTP endpoint is closed")
        if isinstance(item, UserMessage):
            self.stack.release(item.assoc_id, len(item.data), self._loop.time())
            self._flush()
        return item

    def streams(self, assoc_id: AssocId) -> tuple[int, int]:
        assoc = self.stack.association(assoc_id)
        if assoc is None:
            raise NetworkError(f"association {assoc_id} does not exist or has ended")
        return assoc.outbound_streams, assoc.inbound_streams

    async def shutdown(self, assoc_id: AssocId) -> None:
        if self.stack.association(assoc_id) is None:
            return
        waiter = self._loop.create_future()
        self._waiters.setdefault(assoc_id, []).append(waiter)
        self.stack.shutdown(assoc_id, self._loop.time())
        self._flush()
        change = await waiter
        if change.state == AssocState.COMM_LOST:
            raise PeerRefused(f"association {assoc_id} ended before its shutdown completed: "
                              f"{change.reason}")

    def abort(self, assoc_id: AssocId, reason: str = "") -> None:
        self.stack.abort(assoc_id, reason, self._loop.time())
        self._flush()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._stack is not None:
            ids = self.stack.association_ids
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await asyncio.gather(*(self.shutdown(i) for i in ids),
                                         return_exceptions=True)
            for assoc_id in self.stack.association_ids:
                self.abort(assoc_id, "endpoint closed")
        self._timer.cancel()
        for protocol in self._sockets:
            if protocol.transport is not None:
                protocol.transport.close()
        self._inbox.put_nowait(None)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _dual_stack(sock: socket.socket) -> bool:
    try:
        return sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
    except OSError:
        return False

