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
import dataclasses
import errno
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from sockferry.errors import (
    AuthenticationFailed,
    NetworkError,
    RemoteProtocolError,
    SockferryError,
    StorageError,
    TransferTimeout,
)
from sockferry.ferry import digests
from sockferry.ferry import messages as m
from sockferry.ferry import session as s
from sockferry.ferry.bodies import (
    ResumedSink,
    Sink,
    TransferCancelled,
    send_body,
    send_tail,
    start_prefix_hash,
)
from sockferry.ferry.codes import code_for
from sockferry.sockets import (
    Address,
    UnixPath,
    format_sockaddr,
    open_listeners,
)
from sockferry.storage import (
    DEFAULT_UMASK,
    Entry,
    PartialFile,
    Root,
    capped_mode,
    is_sparse,
)
from sockferry.streams import SocketStream, Stream
from sockferry.units import format_bytes, format_rate

log = logging.getLogger("sockferry.ferry")

RECV_BUFFER = 1024 * 1024
MAX_COMMITS_IN_FLIGHT = 16  # fsync+rename threads per connection
FLUSH_ON_CLOSE_S = 2.0


@dataclass(frozen=True, slots=True)
class ServerConfig:
    token: bytes
    umask: int = DEFAULT_UMASK
    clobber: bool = True
    max_connections: int = 256
    max_requests: int = s.DEFAULT_MAX_REQUESTS
    idle_timeout_s: float = 120.0
    max_file_size: int = m.MAX_FILE_SIZE
    backlog: int = 128
    # Resume (docs/protocol.md §5.1): how long and how much partial files are kept.
    partial_keep_s: float = 24 * 3600.0
    partial_max_bytes: int = 16 * 1024**3
    partial_sweep_s: float = 600.0
    features: int = m.ALL_FEATURES  # what the server grants (tests drop RESUME)


@dataclass(slots=True)
class Upload:
    path: str
    sink: Sink
    size: int
    mode: int
    mtime_ns: int | None
    started: float = field(default_factory=time.monotonic)
    offset: int = 0  # resumed: the first bytes were kept from an earlier transfer


class FerryServer:
    """Listens, accepts, and runs one ``Connection`` per client."""

    def __init__(self, root_path: str, config: ServerConfig) -> None:
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

    async def start(self, addresses: Sequence[Address]) -> list[str]:
        """Bind and listen on every address; returns them as bound (real ports)."""
        try:
            for address in addresses:
                socks = await open_listeners(address, socket.SOCK_STREAM,
                                             self.config.backlog)
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
        return self.addresses

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
                conn, _addr = await loop.sock_accept(listener)
            except OSError as exc:
                # EMFILE/ENFILE/ENOBUFS: out of resources; back off instead of spinning.
                log.warning("accept on %s failed: %s", format_sockaddr(listener.getsockname()),
                            exc.strerror)
                await asyncio.sleep(0.1)
                continue
            if self.full:
                _refuse_busy(conn, self.config.max_connections)
                continue
            self.serve(SocketStream(conn, self.config.idle_timeout_s))

    @property
    def full(self) -> bool:
        """Refuse the next client: ``max_connections`` are being served, or we stop."""
        return self.closing or len(self._connections) >= self.config.max_connections

    def serve(self, stream: Stream) -> None:
        """Run one client's connection: an accepted socket, or an SCTP association."""
        self._start_sweeping()
        task = asyncio.get_running_loop().create_task(Connection(self, stream).run())
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

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


def _refuse_busy(conn: socket.socket, limit: int) -> None:
    """Tell an over-limit client why, without waiting for it, and hang up."""
    with conn:
        conn.setblocking(False)
        with contextlib.suppress(OSError):
            conn.send(m.encode(m.Error(0, m.ErrorCode.BUSY,
                                       f"server busy: {limit} connections already — "
                                       "try again later")))
    log.warning("refused a connection: %d connections already", limit)


class Connection:
    def __init__(self, server: FerryServer, stream: Stream) -> None:
        self.server = server
        self.root = server.root
        self.config = server.config
        self.stream = stream
        self.session = s.ServerSession(server.config.token, os.urandom(m.NONCE_BYTES),
                                       max_requests=server.config.max_requests,
                                       features=server.config.features)
        self.uploads: dict[int, Upload] = {}
        self.jobs: deque[s.GetRequested | s.ListRequested | s.PartialRequested] = deque()
        self.cancelled: set[int] = set()
        self.commits: set[asyncio.Task[None]] = set()
        self.commit_slots = asyncio.Semaphore(MAX_COMMITS_IN_FLIGHT)
        self.path_locks: dict[str, asyncio.Lock] = {}
        self.wake = asyncio.Event()
        self.input_done = False
        self.files = 0
        self.auth = "not authenticated"
        self.started = time.monotonic()
        self.peer = self.stream.peer

    # -- lifetime -----------------------------------------------------------------------

    async def run(self) -> None:
        log.debug("%s: connected to %s", self.peer, self.stream.local)
        outcome = "closed"
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
            outcome = f"protocol error: {error}"
            self.session.fail_connection(error.code or m.ErrorCode.BAD_REQUEST, str(error))
            await self._flush_before_close()
        except* (NetworkError, TransferTimeout) as group:
            outcome = f"dropped: {group.exceptions[0]}"
        except* asyncio.CancelledError:
            outcome = "aborted: the server is shutting down"
            self.session.fail_connection(m.ErrorCode.SHUTTING_DOWN,
                                         "the server is shutting down")
            await self._flush_before_close()
            raise
        except* Exception as group:  # a bug: log it, keep serving everyone else
            outcome = f"internal error: {group.exceptions[0]!r}"
            log.exception("%s: internal error", self.peer)
        finally:
            self._abort_everything()
            self.stream.close()
            elapsed = time.monotonic() - self.started
            log.info("%s -> %s: %s; %s after %.2f s: %d file(s), %s in, %s out", self.peer,
                     self.stream.local, self.auth, outcome, elapsed, self.files,
                     format_bytes(self.stream.bytes_in), format_bytes(self.stream.bytes_out))

    async def _flush_before_close(self) -> None:
        with contextlib.suppress(SockferryError, OSError, TimeoutError):
            async with asyncio.timeout(FLUSH_ON_CLOSE_S):
                await self.stream.send(self.session.buffers_to_send())

    def _abort_everything(self) -> None:
        for upload in self.uploads.values():
            upload.sink.file.abort()
            self._log_file("PUT", upload.path, upload.sink.file.written, upload.started,
                           "aborted: the connection ended")
        self.uploads.clear()
        for task in self.commits:
            task.cancel()

    # -- reading ------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        buffer = bytearray(RECV_BUFFER)
        view = memoryview(buffer)
        while True:
            n = await self.stream.recv_into(buffer)
            self.session.receive_data(view[:n])
            if self.session.state is s.ConnState.AWAIT_AUTH:
                # Our proof is out; a client with another token hangs up here.
                self.auth = ("authentication failed (the client hung up before proving "
                             "it knows the token)")
            self._handle_events()
            self.wake.set()
            if n == 0:
                return

    def _handle_events(self) -> None:
        while (event := self.session.next_event()) is not None:
            match event:
                case s.ClientAuthenticated():
                    self.auth = (f"authenticated (client {event.software}, "
                                 f"{digests.name_of(self.session.digest_feature)})")
                case s.PutRequested():
                    self._on_put(event)
                case s.DataReceived():
                    self._on_body(event.request, event.data)
                case s.HoleReceived():
                    self._on_body(event.request, event.length)
                case s.PutFinished():
                    self._on_put_finished(event)
                case s.RequestCancelled():
                    self._on_cancel(event.request)
                case s.GetRequested() | s.ListRequested() | s.PartialRequested():
                    self.jobs.append(event)
                case s.StatRequested():
                    self._on_stat(event)
                case s.MkdirRequested():
                    self._on_mkdir(event)
                case s.InputEnded():
                    self._on_input_ended()
                case _:
                    raise AssertionError(f"server core emitted {event!r}")

    def _on_put(self, event: s.PutRequested) -> None:
        if event.size > self.config.max_file_size:
            self._refuse(event.request, "PUT", event.path, m.ErrorCode.TOO_LARGE,
                         f"'{event.path}' is {event.size} bytes; this server accepts at "
                         f"most {self.config.max_file_size}")
            return
        if event.resumable:
            self._on_put_resumable(event)
            return
        try:
            file = self.root.create(event.path)
        except StorageError as exc:
            self._refuse(event.request, "PUT", event.path, code_for(exc), str(exc))
            return
        self.uploads[event.request] = Upload(
            event.path, Sink(file, self.session.digest_feature), event.size,
            capped_mode(event.mode, self.config.umask),
            event.mtime_ns if event.keep_mtime else None)

    def _on_body(self, request: int, piece: bytes | memoryview | int) -> None:
        upload = self.uploads.get(request)
        if upload is None:
            return
        try:
            upload.sink.receive(piece)
        except StorageError as exc:
            del self.uploads[request]
            self._refuse(request, "PUT", upload.path, code_for(exc), str(exc))

    def _on_put_finished(self, event: s.PutFinished) -> None:
        upload = self.uploads.pop(event.request, None)
        if upload is None:
            return  # already refused (disk full, ...): the reply has been sent
        if isinstance(upload.sink, ResumedSink):
            task = asyncio.get_running_loop().create_task(self._commit_resumed(event, upload))
            self.commits.add(task)
            task.add_done_callback(self.commits.discard)
            return
        if not upload.sink.matches(event.digest):
            upload.sink.file.abort()
            self._refuse(event.request, "PUT", upload.path, m.ErrorCode.DIGEST_MISMATCH,
                         f"digest mismatch for '{upload.path}': the data was damaged in "
                         "transit or the file changed while it was sent; nothing was "
                         "written")
            return
        task = asyncio.get_running_loop().create_task(self._commit(event, upload))
        self.commits.add(task)
        task.add_done_callback(self.commits.discard)

    async def _commit(self, event: s.PutFinished, upload: Upload) -> None:
        lock = self.path_locks.setdefault(upload.path, asyncio.Lock())
        async with self.commit_slots, lock:  # same path twice: commit in request order
            try:
                await asyncio.to_thread(upload.sink.file.commit, upload.mode, upload.mtime_ns,
                                        clobber=self.config.clobber)
            except StorageError as exc:
                self._refuse(event.request, "PUT", upload.path, code_for(exc), str(exc),
                             upload.started, upload.size)
            else:
                self.session.commit(event.request, upload.size, event.digest)
                self.files += 1
                self._log_file("PUT", upload.path, upload.size, upload.started, "ok")
        if not lock.locked():
            self.path_locks.pop(upload.path, None)
        # Leave the set before waking the writer: it exits once no commit is left.
        self.commits.discard(asyncio.current_task())
        self.wake.set()

    # -- resume (docs/protocol.md §5.1) ---------------------------------------------------

    def _on_put_resumable(self, event: s.PutRequested) -> None:
        """PUT with RESUMABLE, or PUT_AT: write under the target's partial name."""
        feature = self.session.digest_feature
        try:
            file = self.root.create(event.path, PartialFile)
        except StorageError as exc:
            if exc.errno != errno.EAGAIN:
                self._refuse(event.request, "PUT", event.path, code_for(exc), str(exc))
                return
            if event.offset:
                self._refuse(event.request, "PUT", event.path, m.ErrorCode.BUSY,
                             f"another transfer to '{event.path}' is in progress; try "
                             "again later")
                return
            self._on_put(dataclasses.replace(event, resumable=False))  # a random temporary
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
        sink = (ResumedSink(file, feature, event.offset,
                            start_prefix_hash(file.fd, event.offset, feature))
                if event.offset else Sink(file, feature))
        self.uploads[event.request] = Upload(
            event.path, sink, event.size, capped_mode(event.mode, self.config.umask),
            event.mtime_ns if event.keep_mtime else None, offset=event.offset)

    async def _commit_resumed(self, event: s.PutFinished, upload: Upload) -> None:
        """Check the whole file (kept prefix, then tail) against DONE, then commit."""
        sink = upload.sink
        assert isinstance(sink, ResumedSink)
        try:
            matches = await sink.verify(event.digest)
        except OSError as exc:
            sink.file.abort()
            matches = False
            log.warning("%s: checking '%s' failed: %s", self.peer, upload.path, exc)
        except BaseException:
            sink.file.abort()
            raise
        if matches:
            log.info("%s: PUT '%s' resumed at byte %d: %s received, the whole file "
                     "verified", self.peer, upload.path, upload.offset,
                     format_bytes(upload.size - upload.offset))
            await self._commit(event, upload)
            return
        sink.file.abort()
        self._refuse(event.request, "PUT", upload.path, m.ErrorCode.DIGEST_MISMATCH,
                     f"digest mismatch for '{upload.path}': the resumed file does not match "
                     "the sender's digest; nothing was written — send it again without "
                     "resuming", upload.started, upload.size - upload.offset)
        self.commits.discard(asyncio.current_task())
        self.wake.set()

    async def _send_prefix(self, job: s.PartialRequested) -> None:
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

    async def _send_tail(self, job: s.GetRequested) -> bool:
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
            self.session.resumed_file_header(job.request, st.st_size, st.st_mode & 0o7777,
                                             st.st_mtime_ns)
            await send_tail(self.session, self.stream, job.request, fd, job.offset,
                            st.st_size, hasher, lambda: job.request in self.cancelled)
        except TransferCancelled:
            self._refuse(job.request, "GET", job.path, m.ErrorCode.CANCELLED,
                         "cancelled by the client", started)
        except StorageError as exc:
            self._refuse(job.request, "GET", job.path, m.ErrorCode.IO_ERROR, str(exc),
                         started)
        else:
            self.files += 1
            self._log_file("GET", job.path, st.st_size - job.offset, started,
                           f"ok (resumed at byte {job.offset})")
        finally:
            os.close(fd)
        self.cancelled.discard(job.request)
        return True

    def _on_cancel(self, request: int) -> None:
        upload = self.uploads.pop(request, None)
        if upload is not None:
            upload.sink.file.abort()
            self._log_file("PUT", upload.path, upload.sink.file.written, upload.started,
                           "cancelled by the client")
        else:
            self.cancelled.add(request)

    def _on_stat(self, event: s.StatRequested) -> None:
        try:
            entry = self.root.stat(event.path)
        except StorageError as exc:
            self.session.refuse(event.request, code_for(exc), str(exc))
            return
        self.session.entries(event.request, [entry], last=True)

    def _on_mkdir(self, event: s.MkdirRequested) -> None:
        try:
            self.root.make_dirs(event.path, capped_mode(event.mode, self.config.umask))
        except StorageError as exc:
            self._refuse(event.request, "MKDIR", event.path, code_for(exc), str(exc))
            return
        self.session.ok(event.request)

    def _on_input_ended(self) -> None:
        self.input_done = True
        for request, upload in list(self.uploads.items()):
            upload.sink.file.abort()
            del self.uploads[request]
            self._refuse(request, "PUT", upload.path, m.ErrorCode.BAD_REQUEST,
                         "the connection ended before the file was complete",
                         upload.started, upload.sink.file.written)

    def _refuse(self, request: int, verb: str, path: str, code: int, message: str,
                started: float | None = None, nbytes: int = 0) -> None:
        self.session.refuse(request, code, message)
        self._log_file(verb, path, nbytes, started, f"refused: {message}")

    def _log_file(self, verb: str, path: str, nbytes: int, started: float | None,
                  result: str) -> None:
        elapsed = time.monotonic() - started if started is not None else 0.0
        log.info("%s: %s '%s' %s in %.3f s (%s): %s", self.peer, verb, path,
                 format_bytes(nbytes), elapsed, format_rate(nbytes, elapsed), result)

    # -- writing ------------------------------------------------------------------------

    async def _flush(self) -> None:
        buffers = self.session.buffers_to_send()
        if buffers:
            await self.stream.send(buffers)

    async def _write_loop(self) -> None:
        while True:
            await self._flush()
            if self.jobs:
                job = self.jobs.popleft()
                if isinstance(job, s.GetRequested):
                    await self._send_file(job)
                elif isinstance(job, s.PartialRequested):
                    await self._send_prefix(job)
                else:
                    await self._send_listing(job)
                continue
            if self.input_done and not self.commits:
                await self._flush()
                return
            await self.wake.wait()
            self.wake.clear()

    async def _send_file(self, job: s.GetRequested) -> None:
        if job.prefix_digest is not None:
            if await self._send_tail(job):
                return
            job = dataclasses.replace(job, offset=0, prefix_digest=None)
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
        try:
            self.session.file_header(job.request, st.st_size, st.st_mode & 0o7777,
                                     st.st_mtime_ns)
            sparse = bool(self.session.features & m.Feature.SPARSE) and is_sparse(st)
            await send_body(self.session, self.stream, job.request, fd, st.st_size, sparse,
                            lambda: job.request in self.cancelled)
        except TransferCancelled:
            self._refuse(job.request, "GET", job.path, m.ErrorCode.CANCELLED,
                         "cancelled by the client", started)
        except StorageError as exc:
            self._refuse(job.request, "GET", job.path, m.ErrorCode.IO_ERROR, str(exc),
                         started)
        else:
            self.files += 1
            self._log_file("GET", job.path, st.st_size, started, "ok")
        finally:
            os.close(fd)
            self.cancelled.discard(job.request)

    async def _send_listing(self, job: s.ListRequested) -> None:
        def collect() -> list[Entry]:
            return list(self.root.list(job.path, recursive=job.recursive))

        try:
            entries = await asyncio.to_thread(collect)
        except StorageError as exc:
            self.session.refuse(job.request, code_for(exc), str(exc))
            return
        batch: list[Entry] = []
        size = 2
        for entry in entries:
            entry_size = m.entry_wire_size(entry)
            if size + entry_size > m.MAX_CONTROL_BODY or len(batch) == m.MAX_ENTRIES_PER_FRAME:
                self.session.entries(job.request, batch, last=False)
                await self._flush()
                batch, size = [], 2
            batch.append(entry)
            size += entry_size
        self.session.entries(job.request, batch, last=True)
