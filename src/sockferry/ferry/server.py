"""The ferry server: asyncio driver around ``ServerSession``, one task pair per client.

Each connection has a reader (feeds the core; writes uploads to their temporary files;
answers STAT and MKDIR at once, so a pipelined MKDIR precedes the PUTs behind it) and a
writer (the only task that sends: core output, then GET and LIST jobs in order).
Uploads are committed (fsync, rename) in worker threads so a slow disk never stalls
the reading of the next request.  Any error costs one connection, never the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import itertools
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sockferry import memory
from sockferry.access import AccessRules, host_of, peer_address
from sockferry.addresses import Address, SockAddr, UnixPath, format_sockaddr
from sockferry.admission import RateLimitedLog, StartupGate, Startups, source_key
from sockferry.entries import Entry, Kind
from sockferry.errors import (
    AuthenticationFailed,
    NetworkError,
    RemoteProtocolError,
    SockferryError,
    StorageError,
    TransferTimeout,
)
from sockferry.ferry import codec, digests
from sockferry.ferry import events as ev
from sockferry.ferry import messages as m
from sockferry.ferry.bodies import (
    GATHER_BYTES,
    SMALL_FILE,
    Sink,
    TransferCancelled,
    read_whole,
    send_body,
    send_tail,
    splice_bodies,
    start_prefix_hash,
)
from sockferry.ferry.codes import code_for
from sockferry.ferry.digests import digest_of
from sockferry.ferry.limits import (
    DEFAULT_MAX_FILE_SIZE,
    DEFAULT_MAX_LIST_ENTRIES,
    Budget,
    Quota,
    Reservation,
)
from sockferry.ferry.ordering import PathOrder
from sockferry.ferry.server_session import ServerSession
from sockferry.ferry.session import DEFAULT_MAX_REQUESTS, ConnState
from sockferry.logfields import fields
from sockferry.metrics import OFF, Metrics
from sockferry.records import replace
from sockferry.sockets import describe_multipath, open_listeners, storage_error
from sockferry.storage.atomic import AtomicFile, PartialFile
from sockferry.storage.dircache import DirCache
from sockferry.storage.durability import Durability, GroupCommit, flushes_file_systems
from sockferry.storage.names import DEFAULT_UMASK, capped_mode, split_client_path
from sockferry.storage.root import Root
from sockferry.storage.sparse import is_sparse
from sockferry.streams import SocketStream, Stream
from sockferry.units import format_bytes, format_rate

if TYPE_CHECKING:
    from sockferry.tls import ServerTLS

log = logging.getLogger("sockferry.ferry")

DEFAULT_STARTUPS = Startups(10, 30, 100)  # sshd's MaxStartups default

TRIM_AFTER_S = 0.5  # without connections this long: memory.trim()
MAX_COMMITS_IN_FLIGHT = 16  # fsync+rename threads per connection (--fsync each)
FLUSH_ON_CLOSE_S = 2.0
LISTING_CHUNK = 1024  # entries read ahead of what the client has taken (LIST -R)
# Answers waiting to be sent before the reader stops taking requests: a client that
# pipelines STATs and never reads the answers pins this much (plus one read's worth).
MAX_UNSENT = 1024 * 1024


@dataclass(frozen=True, slots=True)
class FerryServerConfig:
    token: bytes
    umask: int = DEFAULT_UMASK
    clobber: bool = True
    max_connections: int = 256
    max_requests: int = DEFAULT_MAX_REQUESTS
    idle_timeout_s: float = 120.0
    # Limits of one connection and of the root (ferry/limits.py); 0: no limit.
    max_file_size: int = DEFAULT_MAX_FILE_SIZE
    max_bytes_per_connection: int = 0
    max_files_per_connection: int = 0
    max_list_entries: int = DEFAULT_MAX_LIST_ENTRIES
    quota: int = 0
    backlog: int = 128
    durability: Durability = Durability.BATCH
    # Resume (docs/protocol.md §5.1): how long and how much partial files are kept.
    partial_keep_s: float = 24 * 3600.0
    partial_max_bytes: int = 16 * 1024**3
    partial_sweep_s: float = 600.0
    features: int = m.ALL_FEATURES  # fewer to behave as an older server would
    mptcp: bool = False  # listen with Multipath TCP (still accepts plain TCP clients)
    # Before authentication (sshd's MaxStartups, PerSourceMaxStartups, LoginGraceTime).
    max_startups: Startups = DEFAULT_STARTUPS
    max_startups_per_source: int = 4
    handshake_timeout_s: float = 5.0  # the TLS handshake, then the token proofs: each
    access: AccessRules = field(default_factory=AccessRules)  # --allow/--deny (not AF_UNIX)
    read_only: bool = False  # refuse every request that writes (READ_ONLY)
    tls: ServerTLS | None = None  # accept TLS 1.3 clients only (ferry/secure.py)
    metrics: Metrics = OFF  # --metrics: what the server counts (metrics.py)
    log_transfers: bool = False  # every transfer at info, successes too (JSON logs)


@dataclass(slots=True)
class Upload:
    path: str
    file: AtomicFile
    sink: Sink | None  # hashes a body that arrives in pieces; None for PUT_INLINE
    size: int
    mode: int
    mtime_ns: int | None
    started: float = field(default_factory=time.monotonic)
    offset: int = 0  # resumed: the first bytes were kept from an earlier transfer
    reservation: Reservation | None = None  # room under --quota
    streamed: bool = False  # STREAM: ``size`` grows with the body, checked as it comes


@dataclass(frozen=True, slots=True)
class Verified:
    """An upload whose content matched the sender's digest, waiting to be committed."""

    request: int
    digest: bytes
    upload: Upload


class FerryServer:
    """Listens, accepts, and runs one ``Connection`` per client."""

    def __init__(self, root_path: str, config: FerryServerConfig) -> None:
        self.root = Root(root_path)
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
        self.handlers = _READ_ONLY_HANDLERS if config.read_only else _HANDLERS
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
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_loop())

    async def _sweep_loop(self) -> None:
        """Remove expired partial files, and the oldest over the budget (§5.1)."""
        config = self.config
        while True:
            try:
                removed = await asyncio.to_thread(self.root.sweep_temporaries,
                                                  config.partial_keep_s,
                                                  config.partial_max_bytes)
            except OSError as exc:
                log.warning("sweeping partial files failed: %s", exc.strerror or exc)
            else:
                for path, size in removed:
                    log.info("removed partial file %s (%s): expired or over the budget",
                             path, format_bytes(size))
            await asyncio.sleep(config.partial_sweep_s)

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


_DIRECTIONS = {"PUT": "upload", "GET": "download"}


def _error_kind(result: str) -> str | None:
    """The metrics' error kind of a file's result: its first word (refused, aborted,
    cancelled, ...), or None for a commit."""
    return None if result.startswith("ok") else result.split(maxsplit=1)[0].rstrip(":")


def _code_name(code: int) -> str:
    try:
        return m.ErrorCode(code).name.lower()
    except ValueError:
        return f"error_{code}"


def _order_key(path: str) -> str:
    """The path as PathOrder tells PUTs apart: "a//b" and "./a/b" are "a/b"."""
    if "//" in path or ("." in path and ("/./" in path or path.startswith("./")
                                        or path.endswith("/."))):
        return "/".join(split_client_path(path))
    return path.rstrip("/")  # already plain: the common case costs no split


def _refuse(conn: socket.socket, code: m.ErrorCode, message: str) -> None:
    """ERROR on a connection turned away, sent without waiting, then hang up."""
    with conn:
        conn.setblocking(False)
        with contextlib.suppress(OSError):
            conn.send(codec.encode(m.Error(0, code, message)))
            # What the client sent already is read, so that closing sends a FIN after
            # the ERROR rather than a reset that could discard it.
            conn.recv(4096)




class Connection:
    def __init__(self, server: FerryServer, stream: Stream, source: str | None = None,
                 channel_binding: bytes | None = None) -> None:
        self.server = server
        self.source = source  # counted in server.gate until authenticated (None: not)
        self.handshake_deadline: asyncio.Timeout | None = None
        self.root = server.root
        self.config = server.config
        self.stream = stream
        self.session = ServerSession(server.config.token, os.urandom(m.NONCE_BYTES),
                                       max_requests=server.config.max_requests,
                                       features=server.config.features,
                                       channel_binding=channel_binding)
        self.uploads: dict[int, Upload] = {}
        self.jobs: deque[ev.GetRequested | ev.ListRequested | ev.PartialRequested
                         | ev.ChecksumRequested] = deque()
        # DELETEs and SYMLINKs, each waiting for the PUTs sent before it (§5.3).
        self.name_changes: deque[ev.DeleteRequested | ev.SymlinkRequested] = deque()
        self.cancelled: set[int] = set()
        self.commits: set[asyncio.Task[None]] = set()
        self.verified: list[Verified] = []  # the next group to commit (--fsync batch)
        self.grouping = False  # a task is committing groups
        self.dirs = DirCache(self.root)
        self.order: PathOrder[Verified] = PathOrder(self._commit_in_turn)
        # Small files are closed as soon as written where nothing fsyncs them one by one.
        self.seal_early = (server.config.durability is Durability.NONE
                           or (server.config.durability is Durability.BATCH
                               and flushes_file_systems()))
        self.commit_slots = asyncio.Semaphore(MAX_COMMITS_IN_FLIGHT)
        self.path_locks: dict[str, asyncio.Lock] = {}
        self.wake = asyncio.Event()
        self.sent = asyncio.Event()  # the writer flushed the core's output
        self.input_done = False
        self.files = 0
        self.budget = Budget(server.config.max_files_per_connection,
                             server.config.max_bytes_per_connection)
        self.auth = "not authenticated"
        self.started = time.monotonic()
        self.peer = self.stream.peer
        self.metrics = server.config.metrics
        self.transport: str = getattr(stream, "transport", "unix" if stream.local.startswith(
            "unix:") else "tcp")
        self.metrics.connection_opened(self.transport)
        # False for TLS streams (tlsstream.py): bodies are copied, not spliced.
        self.zero_copy: bool = getattr(stream, "zero_copy", True)

    # -- lifetime -----------------------------------------------------------------------

    async def run(self) -> None:
        log.debug("%s: connected to %s", self.peer, self.stream.local)
        outcome, kind = "closed", "closed"
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._read_loop())
                group.create_task(self._write_loop())
        except* AuthenticationFailed:
            self.auth = "authentication failed"
            await self._flush_before_close()
        except* RemoteProtocolError as group:
            error = group.exceptions[0]
            assert isinstance(error, RemoteProtocolError)
            outcome, kind = f"protocol error: {error}", "protocol_error"
            self.session.fail_connection(error.code or m.ErrorCode.BAD_REQUEST, str(error))
            await self._flush_before_close()
        except* (NetworkError, TransferTimeout) as group:
            outcome, kind = f"dropped: {group.exceptions[0]}", "dropped"
        except* asyncio.CancelledError:
            outcome, kind = "aborted: the server is shutting down", "shutdown"
            self.session.fail_connection(m.ErrorCode.SHUTTING_DOWN,
                                         "the server is shutting down")
            await self._flush_before_close()
            raise
        except* Exception as group:  # a bug: log it, keep serving everyone else
            outcome, kind = f"internal error: {group.exceptions[0]!r}", "internal_error"
            log.exception("%s: internal error", self.peer)
        finally:
            self._leave_gate()
            self._abort_everything()
            self.stream.close()
            elapsed = time.monotonic() - self.started
            if self.auth.startswith("authentication failed"):
                kind = "authentication_failed"
            self.metrics.connection_closed(self.transport, kind, self.stream.bytes_in,
                                           self.stream.bytes_out)
            log.info("%s -> %s: %s; %s after %.2f s: %d file(s), %s in, %s out", self.peer,
                     self.stream.local, self.auth, outcome, elapsed, self.files,
                     format_bytes(self.stream.bytes_in), format_bytes(self.stream.bytes_out),
                     extra=fields("connection", transport=self.transport, peer=self.peer,
                                  local=self.stream.local, outcome=kind, files=self.files,
                                  bytes_in=self.stream.bytes_in,
                                  bytes_out=self.stream.bytes_out,
                                  duration=round(elapsed, 6),
                                  error=None if kind == "closed" else
                                  self.auth if kind == "authentication_failed" else outcome))

    async def _flush_before_close(self) -> None:
        with contextlib.suppress(SockferryError, OSError, TimeoutError):
            async with asyncio.timeout(FLUSH_ON_CLOSE_S):
                await self.stream.send(self.session.buffers_to_send())

    def _abort_everything(self) -> None:
        for verified in self.verified:
            upload = verified.upload
            upload.file.abort()
            self._log_file("PUT", upload.path, upload.size, upload.started,
                           "aborted: the connection ended before it was committed")
        self.verified.clear()
        for verified in self.order.held():
            upload = verified.upload
            upload.file.abort()
            self._log_file("PUT", upload.path, upload.size, upload.started,
                           "aborted: the connection ended before it was committed")
        self.order.clear()
        for upload in self.uploads.values():
            upload.file.abort()
            self._log_file("PUT", upload.path, upload.file.written, upload.started,
                           "aborted: the connection ended")
        self.uploads.clear()
        for task in self.commits:
            task.cancel()
        self.dirs.close()

    # -- reading ------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        """Frames in; the handshake must be done within ``handshake_timeout_s``."""
        timeout = self.config.handshake_timeout_s
        try:
            async with asyncio.timeout(timeout) as self.handshake_deadline:
                await self._read_frames()
        except TimeoutError:
            self.session.fail_connection(m.ErrorCode.BAD_REQUEST,
                                         f"the handshake did not complete within {timeout:g} s")
            await self._flush_before_close()
            raise TransferTimeout(f"the handshake did not complete within {timeout:g} s",
                                  ) from None

    async def _read_frames(self) -> None:
        while True:
            data = await self.stream.receive()
            self.session.receive_data(data)
            if self.session.state is ConnState.AWAIT_AUTH:
                # Our proof is out; a client with another token hangs up here.
                self.auth = ("authentication failed (the client hung up before proving "
                             "it knows the token)")
            self._handle_events()  # consumes every view of ``data`` before the next await
            self.wake.set()
            if not data:
                return
            while self.session.unsent > MAX_UNSENT:  # the client is not reading: wait
                self.sent.clear()
                self.wake.set()
                await self.sent.wait()
            await splice_bodies(self.session, self.stream, self._sink_of,
                                lambda _request, _count: None, self._body_failed)
            self.wake.set()  # a refusal may wait to be sent

    def _sink_of(self, request: int) -> Sink | None:
        """The sink a body may be spliced into: never a streamed one, whose every byte
        is counted against the limits on its way (``_on_body``)."""
        upload = self.uploads.get(request)
        return upload.sink if upload is not None and not upload.streamed else None

    def _body_failed(self, request: int, exc: StorageError) -> None:
        upload = self.uploads.pop(request, None)
        if upload is not None:
            upload.file.abort()
            self._refuse(request, "PUT", upload.path, code_for(exc), str(exc))

    def _handle_events(self) -> None:
        while (event := self.session.next_event()) is not None:
            handler = self.server.handlers.get(type(event))
            if handler is None:
                raise AssertionError(f"server core emitted {event!r}")
            handler(self, event)

    def _on_authenticated(self, event: ev.ClientAuthenticated) -> None:
        self.auth = (f"authenticated (client {event.software}, "
                     f"{digests.name_of(self.session.digest_feature)})")
        if self.handshake_deadline is not None:
            self.handshake_deadline.reschedule(None)
        self._leave_gate()

    def _leave_gate(self) -> None:
        if self.source is not None:
            self.server.gate.release(self.source)
            self.source = None

    def _on_put(self, event: ev.PutRequested) -> None:
        self.metrics.transfer_started(self.transport, "upload")
        if event.resumable and event.size <= self.config.max_file_size:
            if self._within_budget(event.request, "PUT", event.path,
                                   event.size - event.offset):
                self._on_put_resumable(event)
            return
        upload = self._start_upload(event.request, event.path, event.size, event.mode,
                                    event.mtime_ns if event.keep_mtime else None)
        if upload is not None:
            upload.streamed = event.streamed
            self.uploads[event.request] = upload

    def _start_upload(self, request: int, path: str, size: int, mode: int,
                      mtime_ns: int | None) -> Upload | None:
        if size > self.config.max_file_size:
            self._refuse_too_large(request, path, size)
            return None
        if not self._within_budget(request, "PUT", path, size):
            return None
        try:
            file = self.root.create(path, self.dirs)
        except StorageError as exc:
            self._refuse(request, "PUT", path, code_for(exc), str(exc))
            return None
        room, reservation = self._reserve(request, path, size, file)
        if not room:
            return None
        sink = Sink(file, self.session.digest_feature, size=size, follow=self.zero_copy)
        self.order.opened(request, _order_key(path))
        return Upload(path, file, sink, size, capped_mode(mode, self.config.umask), mtime_ns,
                      reservation=reservation)

    def _within_budget(self, request: int, verb: str, path: str, size: int) -> bool:
        """--max-files/--max-bytes-per-connection: count this transfer, or refuse it."""
        if not self.budget.limited:
            return True
        reason = self.budget.take(path, size)
        if reason is not None:
            self.metrics.limit_tripped(self.transport, "max-per-connection")
            self._refuse(request, verb, path, m.ErrorCode.TOO_LARGE, reason)
            return False
        return True

    def _reserve(self, request: int, path: str, size: int,
                 file: AtomicFile) -> tuple[bool, Reservation | None]:
        """--quota: room for ``size`` more bytes under the root, held until ``file`` is
        finished (None: no quota); False: refused (``file`` aborted, the client told)."""
        quota = self.server.quota
        if quota is None:
            return True, None
        replaced = 0
        if self.config.clobber:
            with contextlib.suppress(StorageError):
                entry = self.root.stat(path)
                replaced = entry.size if entry.kind is Kind.FILE else 0
        got = quota.reserve(path, size, replaced)
        if isinstance(got, str):
            self.metrics.limit_tripped(self.transport, "quota")
            file.abort()
            self._refuse(request, "PUT", path, m.ErrorCode.NO_SPACE, got)
            return False, None
        file.on_finish.append(functools.partial(quota.release, got))
        return True, got

    def _refuse_too_large(self, request: int, path: str, size: int) -> None:
        self.metrics.limit_tripped(self.transport, "max-file-size")
        self._refuse(request, "PUT", path, m.ErrorCode.TOO_LARGE,
                     f"'{path}' is {size} bytes; this server accepts at "
                     f"most {self.config.max_file_size}")

    def _on_small_file(self, event: ev.SmallFileReceived) -> None:
        """PUT_INLINE: the digest is checked before anything touches the disk; the file
        is then written whole, created with its final mode, and (where durability
        allows) closed at once, so its commit is only the rename."""
        data, path = event.data, event.path
        self.metrics.transfer_started(self.transport, "upload")
        if digest_of(data, self.session.digest_feature) != event.digest:
            self._refuse_mismatch(event.request, path)
            return
        if len(data) > self.config.max_file_size:
            self._refuse_too_large(event.request, path, len(data))
            return
        if not self._within_budget(event.request, "PUT", path, len(data)):
            return
        mode = capped_mode(event.mode, self.config.umask)
        mtime_ns = event.mtime_ns if event.keep_mtime else None
        try:
            file = self.root.create(path, self.dirs, mode=mode)
            room, reservation = self._reserve(event.request, path, len(data), file)
            if not room:
                return
            file.write(data)
            if self.seal_early:
                file.seal(mode, mtime_ns, durable=False)
        except StorageError as exc:
            self._refuse(event.request, "PUT", path, code_for(exc), str(exc))
            return
        self.order.opened_verified(event.request, _order_key(path), Verified(
            event.request, event.digest, Upload(path, file, None, len(data), mode, mtime_ns,
                                                reservation=reservation)))

    def _on_body(self, request: int, piece: bytes | memoryview | int) -> None:
        upload = self.uploads.get(request)
        if upload is None:
            return
        assert upload.sink is not None  # PUT_INLINE uploads are never in self.uploads
        if upload.streamed and not self._stream_grows(request, upload,
                                                      piece if isinstance(piece, int)
                                                      else len(piece)):
            return
        try:
            upload.sink.receive(piece)
        except StorageError as exc:
            self._body_failed(request, exc)

    def _stream_grows(self, request: int, upload: Upload, count: int) -> bool:
        """A streamed upload (§5.2) is ``count`` bytes longer: within every size limit,
        or refused before those bytes (a hole of any length) cost anything."""
        size = upload.size + count
        reason: str | None = None
        if size > self.config.max_file_size:
            limit, code = "max-file-size", m.ErrorCode.TOO_LARGE
            reason = (f"'{upload.path}' went over {self.config.max_file_size} bytes, the "
                      "most this server accepts in one file")
        elif self.budget.limited and (reason := self.budget.grow(upload.path, count)):
            limit, code = "max-per-connection", m.ErrorCode.TOO_LARGE
        elif upload.reservation is not None:
            assert self.server.quota is not None
            limit, code = "quota", m.ErrorCode.NO_SPACE
            reason = self.server.quota.grow(upload.path, upload.reservation, size)
        if reason is None:
            upload.size = size
            return True
        self.metrics.limit_tripped(self.transport, limit)
        del self.uploads[request]
        upload.file.abort()
        self._refuse(request, "PUT", upload.path, code, reason, upload.started, upload.size)
        return False

    def _on_put_finished(self, event: ev.PutFinished) -> None:
        upload = self.uploads.pop(event.request, None)
        if upload is None:
            return  # already refused (disk full, ...): the reply has been sent
        assert upload.sink is not None
        assert not upload.streamed or upload.size == event.size, "every byte was counted"
        if upload.sink.deferred:  # hashed in a thread: wait for it off the read loop
            self._spawn_commit(self._verify_later(event, upload))
            return
        if not upload.sink.matches(event.digest):
            upload.file.abort()
            self._refuse_mismatch(event.request, upload.path)
            return
        self._commit(Verified(event.request, event.digest, upload))

    async def _verify_later(self, event: ev.PutFinished, upload: Upload) -> None:
        """Check a large or resumed body against DONE once its hashing thread is done,
        then commit it."""
        assert upload.sink is not None
        try:
            matches = await upload.sink.verify(event.digest)
        except StorageError as exc:
            upload.file.abort()
            self._refuse(event.request, "PUT", upload.path, m.ErrorCode.IO_ERROR, str(exc),
                         upload.started, upload.size - upload.offset)
            self._leave_commits()
            return
        except BaseException:
            upload.file.abort()
            raise
        if not matches:
            upload.file.abort()
            resumed = " (resumed: send it again without --resume)" if upload.offset else ""
            self._refuse(event.request, "PUT", upload.path, m.ErrorCode.DIGEST_MISMATCH,
                         f"digest mismatch for '{upload.path}': the data was damaged in "
                         "transit or the file changed while it was sent; nothing was "
                         f"written{resumed}", upload.started, upload.size - upload.offset)
        else:
            if upload.offset:
                log.info("%s: PUT '%s' resumed at byte %d: %s received, the whole file "
                         "verified", self.peer, upload.path, upload.offset,
                         format_bytes(upload.size - upload.offset))
            self._commit(Verified(event.request, event.digest, upload))
        self._leave_commits()

    def _refuse_mismatch(self, request: int, path: str) -> None:
        self._refuse(request, "PUT", path, m.ErrorCode.DIGEST_MISMATCH,
                     f"digest mismatch for '{path}': the data was damaged in transit or "
                     "the file changed while it was sent; nothing was written")

    def _commit(self, verified: Verified) -> None:
        """Make a verified upload visible, as durable as --fsync says, once every
        earlier PUT of its path has been (§5: same path, request order)."""
        self.order.verified(verified.request, verified)

    def _commit_in_turn(self, verified: Verified) -> None:
        match self.config.durability:
            case Durability.NONE:
                self._commit_now(verified)
            case Durability.BATCH:
                self.verified.append(verified)
                if not self.grouping:
                    self.grouping = True
                    self._spawn_commit(self._commit_groups())
            case Durability.EACH:
                self._spawn_commit(self._commit_one(verified))

    def _spawn_commit(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self.commits.add(task)
        task.add_done_callback(self.commits.discard)

    def _commit_now(self, verified: Verified) -> None:
        """--fsync none: rename at once, on the loop (no fsync, so nothing blocks)."""
        upload = verified.upload
        try:
            upload.file.commit(upload.mode, upload.mtime_ns, clobber=self.config.clobber,
                                    durable=False)
        except StorageError as exc:
            self._refuse(verified.request, "PUT", upload.path, code_for(exc), str(exc),
                         upload.started, upload.size)
        else:
            self._committed(verified)

    async def _commit_groups(self) -> None:
        """--fsync batch: what was verified while a group was being made durable forms
        the next group; one send per group, in request order.  Only the flushes go to a
        worker thread where the other steps never wait for the disk, and nothing does
        where the files are in memory only."""
        while self.verified:
            group, self.verified = self.verified, []
            commit = GroupCommit([(v.upload.file, v.upload.mode, v.upload.mtime_ns)
                                  for v in group], clobber=self.config.clobber)
            try:
                if not commit.waits_for_disk():  # tmpfs: no flush, so no thread either
                    commit.run_steps()
                elif commit.cheap_steps:
                    commit.seal()
                    await asyncio.to_thread(commit.flush_data)
                    commit.publish()
                    await asyncio.to_thread(commit.flush_names)
                else:
                    await asyncio.to_thread(commit.run_steps)
            except BaseException:
                commit.abandon()
                raise
            for verified, error in zip(group, commit.finish(), strict=True):
                if error is None:
                    self._committed(verified)
                else:
                    upload = verified.upload
                    self._refuse(verified.request, "PUT", upload.path, code_for(error),
                                 str(error), upload.started, upload.size)
            self.wake.set()
        self.grouping = False
        self._leave_commits()

    async def _commit_one(self, verified: Verified) -> None:
        """--fsync each: this file and its directory fsynced on their own."""
        upload = verified.upload
        lock = self.path_locks.setdefault(upload.path, asyncio.Lock())
        async with self.commit_slots, lock:  # same path twice: commit in request order
            try:
                await asyncio.to_thread(upload.file.commit, upload.mode, upload.mtime_ns,
                                        clobber=self.config.clobber)
            except StorageError as exc:
                self._refuse(verified.request, "PUT", upload.path, code_for(exc), str(exc),
                             upload.started, upload.size)
            else:
                self._committed(verified)
        if not lock.locked():
            self.path_locks.pop(upload.path, None)
        self._leave_commits()

    def _leave_commits(self) -> None:
        # Leave the set before waking the writer: it exits once no commit is left.
        self.commits.discard(asyncio.current_task())
        self.wake.set()

    def _committed(self, verified: Verified) -> None:
        upload = verified.upload
        self.session.commit(verified.request, upload.size, verified.digest)
        self._run_name_changes()
        if upload.reservation is not None:
            assert self.server.quota is not None
            self.server.quota.committed(upload.reservation)
        self.files += 1
        self._log_file("PUT", upload.path, upload.size, upload.started, "ok",
                       logging.DEBUG)
    # -- resume (docs/protocol.md §5.1) ---------------------------------------------------

    def _on_put_resumable(self, event: ev.PutRequested) -> None:
        """PUT with RESUMABLE, or PUT_AT: write under the target's partial name."""
        feature = self.session.digest_feature
        try:
            file = self.root.create(event.path, kind=PartialFile)
        except StorageError as exc:
            if exc.errno != errno.EAGAIN:
                self._refuse(event.request, "PUT", event.path, code_for(exc), str(exc))
                return
            if event.offset:
                self._refuse(event.request, "PUT", event.path, m.ErrorCode.BUSY,
                             f"another transfer to '{event.path}' is in progress; try "
                             "again later")
                return
            self.budget.files -= 1  # counted again by the plain PUT
            self.budget.bytes -= event.size - event.offset
            self._on_put(replace(event, resumable=False))  # a random temporary
            return
        assert isinstance(file, PartialFile)
        if event.offset > file.kept:
            file.abort()  # keeps the partial as it was
            self._refuse(event.request, "PUT", event.path, m.ErrorCode.BAD_REQUEST,
                         f"the server keeps {file.kept} bytes of '{event.path}', fewer "
                         f"than the offset {event.offset}; send it again without resuming")
            return
        try:
            file.start_at(event.offset)
        except StorageError as exc:
            self._refuse(event.request, "PUT", event.path, code_for(exc), str(exc))
            return
        room, reservation = self._reserve(event.request, event.path, event.size, file)
        if not room:
            return
        sink = Sink(file, feature, size=event.size, kept=event.offset)
        self.uploads[event.request] = Upload(
            event.path, file, sink, event.size, capped_mode(event.mode, self.config.umask),
            event.mtime_ns if event.keep_mtime else None, offset=event.offset,
            reservation=reservation)
        self.order.opened(event.request, _order_key(event.path))

    async def _send_prefix(self, job: ev.PartialRequested) -> None:
        """PARTIAL: the length of what is kept towards the path, and its digest."""
        feature = self.session.digest_feature
        try:
            found = self.root.open_partial(job.path)
        except StorageError as exc:
            code = m.ErrorCode.BUSY if exc.errno == errno.EAGAIN else code_for(exc)
            self._refuse(job.request, "PARTIAL", job.path, code, str(exc))
            return
        length, hasher = 0, None
        if found is not None:
            fd, st = found
            try:
                if time.time() - st.st_mtime_ns / 1e9 <= self.config.partial_keep_s:
                    hasher = await start_prefix_hash(fd, st.st_size, feature)
                    length = st.st_size
            finally:
                os.close(fd)
        if hasher is None:
            length, hasher = 0, digests.new_hasher(feature)
        self.session.prefix(job.request, length, hasher.digest())
        log.debug("%s: PARTIAL '%s': %s kept", self.peer, job.path, format_bytes(length))

    async def _send_tail(self, job: ev.GetRequested) -> bool:
        """GET with a prefix digest: if our first ``offset`` bytes have that digest, send
        the rest (True); otherwise False, and the whole file goes as for a plain GET."""
        assert job.prefix_digest is not None
        if job.request in self.cancelled:
            return False
        started = time.monotonic()
        try:
            fd, st = self.root.open_read(job.path)
        except StorageError:
            return False  # the plain path refuses it with the same error
        try:
            hasher = None
            if job.offset <= st.st_size:
                hasher = await start_prefix_hash(fd, job.offset, self.session.digest_feature)
            if hasher is None or hasher.digest() != job.prefix_digest:
                log.info("%s: GET '%s': the client's %s differ from this file; sending all "
                         "of it", self.peer, job.path, format_bytes(job.offset))
                return False
            if not self._within_budget(job.request, "GET", job.path,
                                       st.st_size - job.offset):
                return True
            self.session.resumed_file_header(job.request, st.st_size, st.st_mode & 0o7777,
                                             st.st_mtime_ns)
            prefix = hasher
            await self._send_job_body(job, started, st.st_size - job.offset,
                                      f"ok (resumed at byte {job.offset})", logging.INFO,
                                      lambda: send_tail(self.session, self.stream,
                                                        job.request, fd, job.offset,
                                                        st.st_size, prefix,
                                                        lambda: job.request in self.cancelled))
        finally:
            os.close(fd)
        return True

    def _on_cancel(self, request: int) -> None:
        upload = self.uploads.pop(request, None)
        if upload is not None:
            upload.file.abort()
            self.order.ended(request)
            self._log_file("PUT", upload.path, upload.file.written, upload.started,
                           "cancelled by the client")
            self._run_name_changes()
        else:
            self.cancelled.add(request)

    def _on_stat(self, event: ev.StatRequested) -> None:
        try:
            entry = self.root.stat(event.path)
        except StorageError as exc:
            self.session.refuse(event.request, code_for(exc), str(exc))
            return
        self.session.entries(event.request, [entry], last=True)

    def _on_mkdir(self, event: ev.MkdirRequested) -> None:
        try:
            self.root.make_dirs(event.path, capped_mode(event.mode, self.config.umask))
        except StorageError as exc:
            self._refuse(event.request, "MKDIR", event.path, code_for(exc), str(exc))
            return
        self.dirs.changed(event.path)
        self.session.ok(event.request)

    # -- incremental copies (docs/protocol.md §5.3) --------------------------------------

    def _on_name_change(self, event: ev.DeleteRequested | ev.SymlinkRequested) -> None:
        self.name_changes.append(event)
        self._run_name_changes()

    def _run_name_changes(self) -> None:
        """DELETEs and SYMLINKs in arrival order, each once every PUT sent before it is
        answered."""
        while self.name_changes and not self._put_open_before(self.name_changes[0].request):
            event = self.name_changes.popleft()
            if isinstance(event, ev.DeleteRequested):
                self._delete_now(event)
            else:
                self._symlink_now(event)

    def _put_open_before(self, request: int) -> bool:
        """Whether a PUT that arrived before ``request`` is still unanswered (the core's
        requests are kept in arrival order; at most a window's worth)."""
        for open_request, state in self.session.requests.items():
            if open_request == request:
                return False
            if state.kind is ev.RequestKind.PUT and state.phase is not ev.Phase.DISCARDING:
                return True
        return False

    def _delete_now(self, event: ev.DeleteRequested) -> None:
        try:
            freed = self.root.remove(event.path, directory=event.directory)
        except StorageError as exc:
            self._refuse(event.request, "DELETE", event.path, code_for(exc), str(exc))
            return
        self.dirs.removed(event.path)
        if self.server.quota is not None:
            self.server.quota.freed(freed)
        self.session.ok(event.request)
        self._log_file("DELETE", event.path, freed, None, "ok", logging.DEBUG)

    def _symlink_now(self, event: ev.SymlinkRequested) -> None:
        try:
            self.root.symlink(event.path, event.target, clobber=self.config.clobber)
        except StorageError as exc:
            self._refuse(event.request, "SYMLINK", event.path, code_for(exc), str(exc))
            return
        self.dirs.changed(event.path)
        self.session.ok(event.request)
        self._log_file("SYMLINK", event.path, 0, None, f"ok (-> {event.target})",
                       logging.DEBUG)

    def _on_readlink(self, event: ev.ReadlinkRequested) -> None:
        try:
            target = self.root.readlink(event.path)
        except StorageError as exc:
            self._refuse(event.request, "READLINK", event.path, code_for(exc), str(exc))
            return
        self.session.link(event.request, target)

    async def _send_sum(self, job: ev.ChecksumRequested) -> None:
        """CHECKSUM: the digest of a file, counted against the limits as a GET."""
        try:
            fd, st = self.root.open_read(job.path)
        except StorageError as exc:
            self._refuse(job.request, "CHECKSUM", job.path, code_for(exc), str(exc))
            return
        try:
            if not self._within_budget(job.request, "CHECKSUM", job.path, st.st_size):
                return
            feature = self.session.digest_feature
            if st.st_size <= SMALL_FILE:
                digest = digest_of(read_whole(fd, st.st_size), feature)
            else:  # hashing a large file takes long: off the event loop
                digest = await asyncio.to_thread(digests.hash_fd, fd, st.st_size, feature)
        except (StorageError, OSError) as exc:
            error = exc if isinstance(exc, StorageError) else storage_error(exc, job.path)
            self._refuse(job.request, "CHECKSUM", job.path, m.ErrorCode.IO_ERROR, str(error))
            return
        finally:
            os.close(fd)
        self.session.sum(job.request, st.st_size, digest)

    def _on_input_ended(self) -> None:
        self.input_done = True
        for request, upload in list(self.uploads.items()):
            upload.file.abort()
            del self.uploads[request]
            self._refuse(request, "PUT", upload.path, m.ErrorCode.BAD_REQUEST,
                         "the connection ended before the file was complete",
                         upload.started, upload.file.written)

    def _refuse(self, request: int, verb: str, path: str, code: int, message: str,
                started: float | None = None, nbytes: int = 0) -> None:
        self.session.refuse(request, code, message)
        if verb == "PUT":
            self.order.ended(request)  # what waited on it in its path's order goes
            self._run_name_changes()
        self._log_file(verb, path, nbytes, started, f"refused: {message}",
                       error=_code_name(code))

    def _log_file(self, verb: str, path: str, nbytes: int, started: float | None,
                  result: str, level: int = logging.INFO, error: str | None = None) -> None:
        """One line per file (or other request refused): failures at info, successes at
        debug (the connection's summary line counts them; a line per small file would
        cost more than the file). The metrics count every transfer."""
        elapsed = time.monotonic() - started if started is not None else 0.0
        outcome = ("committed" if result.startswith("ok") else
                   "refused" if result.startswith("refused") else "failed")
        error = None if outcome == "committed" else error or _error_kind(result)
        direction = _DIRECTIONS.get(verb)  # None: MKDIR, PARTIAL, ... (not a transfer)
        if direction is not None:
            self.metrics.transfer_ended(self.transport, direction, outcome, nbytes, elapsed,
                                        error)
        if self.config.log_transfers:
            level = max(level, logging.INFO)
        if not log.isEnabledFor(level):
            return
        event = "transfer" if direction is not None else "request"
        log.log(level, "%s: %s '%s' %s in %.3f s (%s): %s", self.peer, verb, path,
                format_bytes(nbytes), elapsed, format_rate(nbytes, elapsed), result,
                extra=fields(event, transport=self.transport, peer=self.peer, path=path,
                             direction=direction, outcome=outcome, bytes=nbytes,
                             duration=round(elapsed, 6), error=error))

    # -- writing ------------------------------------------------------------------------

    async def _flush(self) -> None:
        buffers = self.session.buffers_to_send()
        if buffers:
            await self.stream.send(buffers)
        self.sent.set()

    async def _write_loop(self) -> None:
        while True:
            if self.jobs:
                job = self.jobs.popleft()
                if isinstance(job, ev.GetRequested):
                    await self._send_file(job)
                elif isinstance(job, ev.PartialRequested):
                    await self._send_prefix(job)
                elif isinstance(job, ev.ChecksumRequested):
                    await self._send_sum(job)
                else:
                    await self._send_listing(job)
                if self.session.unsent >= GATHER_BYTES:  # small files' frames, gathered
                    await self._flush()
                continue
            await self._flush()
            if self.input_done and not self.commits:
                return
            await self.wake.wait()
            self.wake.clear()

    async def _send_file(self, job: ev.GetRequested) -> None:
        self.metrics.transfer_started(self.transport, "download")
        if job.prefix_digest is not None:
            if await self._send_tail(job):
                return
            job = replace(job, offset=0, prefix_digest=None)
        started = time.monotonic()
        if job.offset:
            self._refuse(job.request, "GET", job.path, m.ErrorCode.BAD_REQUEST,
                         "this server does not resume transfers (GET offset must be 0)")
            return
        if job.request in self.cancelled:
            self.cancelled.discard(job.request)
            self._refuse(job.request, "GET", job.path, m.ErrorCode.CANCELLED,
                         "cancelled by the client")
            return
        try:
            fd, st = self.root.open_read(job.path)
        except StorageError as exc:
            self._refuse(job.request, "GET", job.path, code_for(exc), str(exc))
            return
        if not self._within_budget(job.request, "GET", job.path, st.st_size):
            os.close(fd)
            return
        try:
            self.session.file_header(job.request, st.st_size, st.st_mode & 0o7777,
                                     st.st_mtime_ns)
            sparse = bool(self.session.features & m.Feature.SPARSE) and is_sparse(st)
            await self._send_job_body(job, started, st.st_size, "ok", logging.DEBUG,
                                      lambda: send_body(self.session, self.stream,
                                                        job.request, fd, st.st_size, sparse,
                                                        lambda: job.request in self.cancelled))
        finally:
            os.close(fd)

    async def _send_job_body(self, job: ev.GetRequested, started: float, nbytes: int,
                             result: str, level: int,
                             body: Callable[[], Awaitable[object]]) -> None:
        """Send a GET's body; cancellation or a read error ends it with ERROR."""
        try:
            await body()
        except TransferCancelled:
            self._refuse(job.request, "GET", job.path, m.ErrorCode.CANCELLED,
                         "cancelled by the client", started)
        except StorageError as exc:
            self._refuse(job.request, "GET", job.path, m.ErrorCode.IO_ERROR, str(exc),
                         started)
        else:
            self.files += 1
            self._log_file("GET", job.path, nbytes, started, result, level)
        finally:
            self.cancelled.discard(job.request)

    async def _send_listing(self, job: ev.ListRequested) -> None:
        """ENTRIES frames as the walk goes: a thread of this listing's own reads
        LISTING_CHUNK entries at a time, the next chunk while this one is encoded (its
        system calls let go of the GIL), and a chunk is read only once the one before it
        has left, so a huge tree or a client that stops reading holds at most two chunks
        (and the socket buffers)."""
        walk = self.root.list(job.path, recursive=job.recursive,
                              limit=self.config.max_list_entries)
        # one thread, so the walk is never run by two at once and its close (with the
        # directory fds) waits for a chunk still being read when the connection ends
        lane = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sockferry-list")
        loop = asyncio.get_running_loop()
        batch: list[Entry] = []
        size = 2
        ahead = loop.run_in_executor(lane, _next_entries, walk, LISTING_CHUNK)
        try:
            while True:
                try:
                    chunk = await ahead
                except StorageError as exc:  # an ERROR may follow ENTRIES (§5)
                    self.session.refuse(job.request, code_for(exc), str(exc))
                    return
                if len(chunk) == LISTING_CHUNK:
                    ahead = loop.run_in_executor(lane, _next_entries, walk, LISTING_CHUNK)
                for entry in chunk:
                    entry_size = codec.entry_wire_size(entry)
                    if (size + entry_size > m.MAX_CONTROL_BODY
                            or len(batch) == m.MAX_ENTRIES_PER_FRAME):
                        self.session.entries(job.request, batch, last=False)
                        batch, size = [], 2
                    batch.append(entry)
                    size += entry_size
                if len(chunk) < LISTING_CHUNK:
                    break
                await self._flush()  # waits while the client does not read
        finally:
            ahead.cancel()  # a chunk nobody will take (and an error nobody will see)
            lane.submit(walk.close)
            lane.shutdown(wait=False)
        self.session.entries(job.request, batch, last=True)


def _next_entries(walk: Iterator[Entry], count: int) -> list[Entry]:
    return list(itertools.islice(walk, count))


# One handler per event the server core emits (one table for all connections: an idle
# connection should cost as little memory as it can).
_HANDLERS: dict[type, Callable[[Connection, Any], None]] = {
    ev.ClientAuthenticated: Connection._on_authenticated,
    ev.PutRequested: Connection._on_put,
    ev.SmallFileReceived: Connection._on_small_file,
    ev.BodyReceived: lambda c, e: c._on_body(e.request, e.data),
    ev.HoleReceived: lambda c, e: c._on_body(e.request, e.length),
    ev.PutFinished: Connection._on_put_finished,
    ev.RequestCancelled: lambda c, e: c._on_cancel(e.request),
    ev.GetRequested: lambda c, e: c.jobs.append(e),
    ev.ListRequested: lambda c, e: c.jobs.append(e),
    ev.PartialRequested: lambda c, e: c.jobs.append(e),
    ev.StatRequested: Connection._on_stat,
    ev.MkdirRequested: Connection._on_mkdir,
    ev.DeleteRequested: Connection._on_name_change,
    ev.SymlinkRequested: Connection._on_name_change,
    ev.ReadlinkRequested: Connection._on_readlink,
    ev.ChecksumRequested: lambda c, e: c.jobs.append(e),
    ev.InputEnded: lambda c, _e: c._on_input_ended(),
}


def _refuse_write(connection: Connection,
                  event: ev.PutRequested | ev.SmallFileReceived | ev.MkdirRequested
                  | ev.PartialRequested | ev.DeleteRequested | ev.SymlinkRequested) -> None:
    """serve --read-only: a request that would write is refused, and only that request
    (a PUT's body that follows is discarded as for any refused PUT)."""
    verb = {ev.MkdirRequested: "MKDIR", ev.PartialRequested: "PARTIAL",
            ev.DeleteRequested: "DELETE", ev.SymlinkRequested: "SYMLINK"}.get(type(event), "PUT")
    connection._refuse(event.request, verb, event.path, m.ErrorCode.READ_ONLY,
                       "this server is read-only: nothing can be written to it")


# The same table for serve --read-only: the writing requests go to _refuse_write.
_READ_ONLY_HANDLERS: dict[type, Callable[[Connection, Any], None]] = {
    **_HANDLERS,
    **{kind: _refuse_write for kind in (ev.PutRequested, ev.SmallFileReceived,
                                        ev.MkdirRequested, ev.PartialRequested,
                                        ev.DeleteRequested, ev.SymlinkRequested)},
}
