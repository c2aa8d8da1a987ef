"""The ferry server: listens, admits (--allow/--deny, MaxStartups, max_connections,
TLS) and runs one ``Connection`` (ferry/connection.py) per client until it stops.

Any error costs one connection, never the server; partial files are swept here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from sockferry import memory
from sockferry.access import host_of, peer_address
from sockferry.addresses import Address, SockAddr, UnixPath, format_sockaddr
from sockferry.admission import RateLimitedLog, StartupGate, source_key
from sockferry.ferry import codec
from sockferry.ferry import messages as m
from sockferry.ferry.connection import Connection
from sockferry.ferry.limits import Quota
from sockferry.ferry.server_config import FerryServerConfig
from sockferry.sockets import describe_multipath, open_listeners
from sockferry.storage.root import Root
from sockferry.storage.store import Store
from sockferry.storage.stores import open_store
from sockferry.storage.sweeper import sweep_forever
from sockferry.streams import SocketStream, Stream
from sockferry.units import format_bytes

if TYPE_CHECKING:
    from sockferry.tls import ServerTLS

log = logging.getLogger("sockferry.ferry")

TRIM_AFTER_S = 0.5  # without connections this long: memory.trim()


class FerryServer:
    """Listens, accepts, and runs one ``Connection`` per client."""

    def __init__(self, root: str | Store, config: FerryServerConfig) -> None:
        """``root``: a directory's path, an S3 location (storage/stores.py) or a store."""
        self.root: Store = open_store(root) if isinstance(root, str) else root
        # What HELLO_REPLY offers: the configured features the store can keep.
        self.features = (config.features
                         & ~(0 if self.root.keeps_partials else m.Feature.RESUME)
                         & ~(0 if self.root.keeps_links else m.Feature.LINKS)
                         # a look-up per name costs an object store a request each
                         & ~(0 if isinstance(self.root, Root) else m.Feature.QUICK_CHECK))
        self.config = config
        self._listeners: list[socket.socket] = []
        self._accepting: list[asyncio.Task[None]] = []
        self._connections: set[asyncio.Task[None]] = set()
        self._unix_paths: list[str] = []
        self.addresses: list[str] = []
        self.closing = False
        self.stopped = asyncio.Event()
        self._sweeper: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._trim: asyncio.TimerHandle | None = None
        self.gate = StartupGate(config.max_startups, config.max_startups_per_source)
        self.refusals = RateLimitedLog()
        self.quota = Quota(config.quota) if config.quota else None

    async def start(self, addresses: Sequence[Address],
                    inherited: Sequence[socket.socket] = ()) -> list[str]:
        """Bind and listen on every address, and serve the ``inherited`` listening
        sockets too (socket activation); returns them all as bound (real ports)."""
        self._listeners += inherited
        try:
            for address in addresses:
                socks = await open_listeners(address, socket.SOCK_STREAM,
                                             self.config.backlog, mptcp=self.config.mptcp)
                self._listeners += socks
                if isinstance(address, UnixPath):
                    self._unix_paths.append(address.path)
        except BaseException:
            self._close_listeners()
            raise
        loop = asyncio.get_running_loop()
        for sock in self._listeners:
            self.addresses.append(format_sockaddr(sock.getsockname()))
            self._accepting.append(loop.create_task(self._accept_loop(sock)))
        self._start_sweeping()
        if self.quota is not None:
            self._spawn_background(self._measure_quota(self.quota))
        return self.addresses

    async def _measure_quota(self, quota: Quota) -> None:
        """--quota: what the root holds already, scanned once in a worker thread."""
        started = time.monotonic()
        try:
            found = await asyncio.to_thread(self.root.usage)
        except OSError as exc:
            log.warning("measuring the root for --quota failed: %s; counting only "
                        "uploads from now on", exc.strerror or exc)
            return
        quota.measured(found)
        log.info("quota: %s used of %s (measured in %.1f s)", format_bytes(quota.used),
                 format_bytes(quota.limit), time.monotonic() - started)

    def _spawn_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _start_sweeping(self) -> None:
        if self._sweeper is None:
            # Remove expired partial files, and the oldest over the budget (§5.1).
            config = self.config
            self._sweeper = asyncio.get_running_loop().create_task(sweep_forever(
                self.root, config.partial_keep_s, config.partial_max_bytes,
                config.partial_sweep_s, log))

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, addr = await loop.sock_accept(listener)
            except OSError as exc:
                # EMFILE/ENFILE/ENOBUFS: out of resources; back off instead of spinning.
                # The client waits in the backlog until a descriptor is free.
                where = format_sockaddr(listener.getsockname())
                self.log_refusal(f"to accept on {where}",
                                 f"{exc.strerror} (waiting for descriptors)")
                await asyncio.sleep(0.1)
                continue
            transport = "unix" if conn.family == socket.AF_UNIX else "tcp"
            if not self.admits(addr, transport, conn):
                continue
            source = source_key(addr[0]) if transport == "tcp" else "the local socket"
            reason = self.refusal(source, transport)
            if reason is not None:
                _refuse(conn, m.ErrorCode.BUSY, reason)
                self.log_refusal(f"a connection from {format_sockaddr(addr)}", reason)
                continue
            if self.config.mptcp and conn.family != socket.AF_UNIX:
                log.info("%s: %s", format_sockaddr(addr), describe_multipath(conn))
            if self.config.tls is not None:
                self._spawn(self._serve_tls(conn, self.config.tls, source))
            else:
                self.serve(SocketStream(conn, self.config.idle_timeout_s), source)

    def admits(self, peer: SockAddr | None, transport: str,
               conn: socket.socket | None = None) -> bool:
        """--allow/--deny: may ``peer`` be served?  A refused TCP client gets ERROR
        PERMISSION at once (it cannot be forged: the handshake is done) and is closed;
        one log line, rate-limited."""
        if self.config.access.admits_peer(peer):
            return True
        self.config.metrics.limit_tripped(transport, "access")
        if conn is not None:
            host = host_of(peer)
            _refuse(conn, m.ErrorCode.PERMISSION, f"this server does not accept "
                    f"connections from {peer_address(host) or host} (--allow/--deny)")
        self.log_refusal(f"a connection from {format_sockaddr(peer)}",
                              "not allowed by --allow/--deny")
        return False

    def log_refusal(self, what: str, reason: str) -> None:
        """One log line per refusal, as many as the limiter lets through (a flood of
        connections must not become a flood of log lines)."""
        show, left_out = self.refusals.allow()
        if left_out:
            log.warning("%d more refusals were not logged", left_out)
        if show:
            log.warning("refused %s: %s", what, reason)

    @property
    def full(self) -> bool:
        """Refuse the next client: ``max_connections`` are being served, or we stop."""
        return self.closing or len(self._connections) >= self.config.max_connections

    def refusal(self, source: str, transport: str) -> str | None:
        """Why a new client from ``source`` is turned away, or None: then it is counted as
        authenticating (``serve`` with ``source``) until it authenticates or leaves."""
        if self.closing:
            return "the server is shutting down"
        if len(self._connections) >= self.config.max_connections:
            self.config.metrics.limit_tripped(transport, "max-connections")
            return (f"server busy: {self.config.max_connections} connections already — "
                    "try again later")
        reason = self.gate.admit(source)
        if reason is not None:
            self.config.metrics.limit_tripped(transport, "max-startups")
        return reason

    def serve(self, stream: Stream, source: str | None = None) -> None:
        """Run one client's connection: an accepted socket, or an SCTP association;
        ``source``: admitted by ``refusal``, counted until it authenticates."""
        self._spawn(Connection(self, stream, source).run())

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        self._start_sweeping()
        task = asyncio.get_running_loop().create_task(work)
        self._connections.add(task)
        task.add_done_callback(self._connection_ended)

    def _connection_ended(self, task: asyncio.Task[None]) -> None:
        self._connections.discard(task)
        if not self._connections and self._trim is None and not self.closing:
            self._trim = asyncio.get_running_loop().call_later(TRIM_AFTER_S,
                                                               self._trim_if_idle)

    def _trim_if_idle(self) -> None:
        """After a burst: give the memory its connections held back to the system."""
        self._trim = None
        if not self._connections:
            memory.trim()

    async def _serve_tls(self, conn: socket.socket, tls: ServerTLS, source: str) -> None:
        """The TLS handshake, then the connection, bound to the certificate (§3.1);
        ``source`` stays counted as authenticating until the token proofs are done."""
        from sockferry.ferry.secure import accept_tls  # noqa: PLC0415 - TLS servers only

        try:
            stream = await accept_tls(conn, tls, self.config.idle_timeout_s,
                                      self.config.handshake_timeout_s)
        except BaseException:
            self.gate.release(source)
            raise
        if stream is None:
            self.gate.release(source)
            return
        await Connection(self, stream, source, channel_binding=stream.binding).run()

    def _close_listeners(self) -> None:
        for sock in self._listeners:
            sock.close()
        self._listeners.clear()
        for path in self._unix_paths:
            with contextlib.suppress(OSError):
                os.unlink(path)
        self._unix_paths.clear()

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop accepting; let connections finish for ``grace_s``; then abort them."""
        self.closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        for task in self._background:
            task.cancel()
        if self._trim is not None:
            self._trim.cancel()
        for task in self._accepting:
            task.cancel()
        await asyncio.gather(*self._accepting, return_exceptions=True)
        self._close_listeners()
        pending = set(self._connections)
        if pending:
            log.info("waiting up to %g s for %d connection(s) to finish", grace_s,
                     len(pending))
            _done, pending = await asyncio.wait(pending, timeout=grace_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        self.root.close()
        self.stopped.set()


def _refuse(conn: socket.socket, code: m.ErrorCode, message: str) -> None:
    """ERROR on a connection turned away, sent without waiting, then hang up."""
    with conn:
        conn.setblocking(False)
        with contextlib.suppress(OSError):
            conn.send(codec.encode(m.Error(0, code, message)))
            # What the client sent already is read, so that closing sends a FIN after
            # the ERROR rather than a reset that could discard it.
            conn.recv(4096)

