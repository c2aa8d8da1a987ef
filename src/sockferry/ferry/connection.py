"""One client's connection on the server: the reader that feeds ``ServerSession`` and
the writer that alone sends, their lifetime, and the table that hands each event the
core emits to the part answering it (``Uploads``, ``Answers``, ``Commits``).

The reader writes uploads into their temporary files and answers STAT and MKDIR at
once, so a pipelined MKDIR precedes the PUTs behind it (on a remote store it waits for
each such store call, made in a worker thread, before the next event); the writer sends
the core's output, then GET and LIST bodies in order.  Any error costs this connection
only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

from sockferry.errors import (
    AuthenticationFailed,
    NetworkError,
    RemoteProtocolError,
    SockferryError,
    StorageError,
    TransferTimeout,
)
from sockferry.ferry import digests
from sockferry.ferry import events as ev
from sockferry.ferry import messages as m
from sockferry.ferry.answers import Answers
from sockferry.ferry.bodies import GATHER_BYTES, receive_bodies
from sockferry.ferry.codes import attempt
from sockferry.ferry.connection_base import ConnectionHost
from sockferry.ferry.durability import Commits
from sockferry.ferry.limits import Budget
from sockferry.ferry.server_session import ServerSession
from sockferry.ferry.session import ConnState
from sockferry.ferry.uploads import Uploads
from sockferry.logfields import fields
from sockferry.streams import Stream
from sockferry.units import format_bytes, format_rate

log = logging.getLogger("sockferry.ferry")

FLUSH_ON_CLOSE_S = 2.0
# Answers waiting to be sent before the reader stops taking requests: a client that
# pipelines STATs and never reads the answers pins this much (plus one read's worth).
MAX_UNSENT = 1024 * 1024


class Connection:
    """One client, from its first byte to its last log line; what its parts share."""

    def __init__(self, server: ConnectionHost, stream: Stream, source: str | None = None,
                 channel_binding: bytes | None = None) -> None:
        self.server = server
        self.source = source  # counted in server.gate until authenticated (None: not)
        self.handshake_deadline: asyncio.Timeout | None = None
        self.root = server.root
        self.quota = server.quota
        self.config = server.config
        self.handlers = READ_ONLY_HANDLERS if server.config.read_only else HANDLERS
        # A store whose calls wait on the network: those events are awaited in turn.
        self.waiting: WaitingHandlers = {} if not server.root.remote else \
            READ_ONLY_WAITING if server.config.read_only else WAITING_HANDLERS
        self.stream = stream
        self.session = ServerSession(server.config.token, os.urandom(m.NONCE_BYTES),
                                       max_requests=server.config.max_requests,
                                       features=server.features,
                                       channel_binding=channel_binding)
        self.jobs: deque[ev.GetRequested | ev.ListRequested | ev.PartialRequested
                         | ev.ChecksumRequested] = deque()
        self.dirs = self.root.new_cache()
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
        self.uploads: Uploads = Uploads(self)
        self.commits: Commits = Commits(self)
        self.answers: Answers = Answers(self)

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
            self.leave_gate()
            self.commits.abort()
            if self.root.remote and self.uploads.receiving:
                # an S3 upload broken off is completed as its partial object, or aborted:
                # requests that wait for the parts in flight, never on the event loop
                await asyncio.to_thread(self.uploads.abort_files)
            self.uploads.abort()
            self.dirs.close()
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
        uploads = self.uploads
        while True:
            data = await self.stream.receive()
            self.session.receive_data(data)
            if self.session.state is ConnState.AWAIT_AUTH:
                # Our proof is out; a client with another token hangs up here.
                self.auth = ("authentication failed (the client hung up before proving "
                             "it knows the token)")
            if self.waiting:
                await self._handle_events_waiting()
            else:
                self._handle_events()  # consumes every view of ``data`` before the next await
            self.wake.set()
            if not data:
                return
            while self.session.unsent > MAX_UNSENT:  # the client is not reading: wait
                self.sent.clear()
                self.wake.set()
                await self.sent.wait()
            await receive_bodies(self.session, self.stream, uploads.sink_of,
                                lambda _request, _count: None, uploads.body_failed)
            self.wake.set()  # a refusal may wait to be sent

    def _handle_events(self) -> None:
        while (event := self.session.next_event()) is not None:
            handler = self.handlers.get(type(event))
            if handler is None:
                raise AssertionError(f"server core emitted {event!r}")
            handler(self, event)

    async def _handle_events_waiting(self) -> None:
        """``_handle_events`` for a remote store: an event whose answer waits on the store
        is handled in a worker thread while this reader waits, so the connection's
        requests keep their order (a MKDIR before the PUTs into it) and every other
        connection goes on.  Views of ``data`` stay valid meanwhile: only this reader
        receives."""
        waiting = self.waiting
        while (event := self.session.next_event()) is not None:
            slow = waiting.get(type(event))
            if slow is not None:
                await slow(self, event)
                continue
            handler = self.handlers.get(type(event))
            if handler is None:
                raise AssertionError(f"server core emitted {event!r}")
            handler(self, event)

    def on_authenticated(self, event: ev.ClientAuthenticated) -> None:
        self.auth = (f"authenticated (client {event.software}, "
                     f"{digests.name_of(self.session.digest_feature)})")
        if self.handshake_deadline is not None:
            self.handshake_deadline.reschedule(None)
        self.leave_gate()

    def leave_gate(self) -> None:
        if self.source is not None:
            self.server.gate.release(self.source)
            self.source = None

    def on_cancel(self, request: int) -> None:
        if not self.uploads.cancel(request):
            self.answers.cancelled.add(request)

    def on_input_ended(self) -> None:
        self.input_done = True
        self.uploads.input_ended()

    # -- what every part of the connection shares ---------------------------------------

    def within_budget(self, request: int, verb: str, path: str, size: int) -> bool:
        """--max-files/--max-bytes-per-connection: count this transfer, or refuse it."""
        if not self.budget.limited:
            return True
        reason = self.budget.take(path, size)
        if reason is not None:
            self.metrics.limit_tripped(self.transport, "max-per-connection")
            self.refuse(request, verb, path, m.ErrorCode.TOO_LARGE, reason)
            return False
        return True

    def refuse(self, request: int, verb: str, path: str, code: int, message: str,
               started: float | None = None, nbytes: int = 0) -> None:
        self.session.refuse(request, code, message)
        if verb == "PUT":
            self.commits.ended(request)  # what waited on it in its path's order goes
            self.answers.run_name_changes()
        self.log_file(verb, path, nbytes, started, f"refused: {message}",
                      error=_code_name(code))

    def log_file(self, verb: str, path: str, nbytes: int, started: float | None,
                 result: str, level: int = logging.INFO, error: str | None = None) -> None:
        """One line per file (or other request refused): failures at info, successes at
        debug (the connection's summary line counts them; a line per small file would
        cost more than the file). The metrics count every transfer."""
        elapsed = time.monotonic() - started if started is not None else 0.0
        if result == "ok":  # every small file: no parsing of the result
            outcome = "committed"
            error = None
        else:
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

    async def flush(self) -> None:
        buffers = self.session.buffers_to_send()
        if buffers:
            await self.stream.send(buffers)
        self.sent.set()

    async def _write_loop(self) -> None:
        answers = self.answers
        while True:
            if self.jobs:
                job = self.jobs.popleft()
                if isinstance(job, ev.GetRequested):
                    await answers.send_file(job)
                elif isinstance(job, ev.PartialRequested):
                    await answers.send_prefix(job)
                elif isinstance(job, ev.ChecksumRequested):
                    await answers.send_sum(job)
                else:
                    await answers.send_listing(job)
                if self.session.unsent >= GATHER_BYTES:  # small files' frames, gathered
                    await self.flush()
                continue
            await self.flush()
            if self.input_done and not self.commits.tasks:
                return
            await self.wake.wait()
            self.wake.clear()


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


# -- which part answers which event --------------------------------------------------------

# A handler as the table keeps it: the event's exact type is its key, so the handler
# registered with ``_on`` for that type is the one called (what mypy cannot see in one
# dict of many value types).
Handler = Callable[[Connection, ev.Event], None]
Handlers = dict[type[object], Handler]
E = TypeVar("E")
T = TypeVar("T")


def _on(kind: type[E], handler: Callable[[Connection, E], None]) -> tuple[type[object], Handler]:
    """One entry of a table: ``handler`` is checked against the event type it serves."""
    return kind, cast(Handler, handler)


def _queue_job(c: Connection, job: ev.GetRequested | ev.ListRequested | ev.PartialRequested
               | ev.ChecksumRequested) -> None:
    c.jobs.append(job)  # the writer sends its answer in request order


# One handler per event the server core emits (one table for all connections: an idle
# connection should cost as little memory as it can).
HANDLERS: Handlers = dict([
    _on(ev.ClientAuthenticated, Connection.on_authenticated),
    _on(ev.PutRequested, lambda c, e: c.uploads.on_put(e)),
    _on(ev.SmallFilesReceived, lambda c, e: c.uploads.on_small_files(e)),
    _on(ev.BodyReceived, lambda c, e: c.uploads.on_body(e.request, e.data)),
    _on(ev.HoleReceived, lambda c, e: c.uploads.on_body(e.request, e.length)),
    _on(ev.PutFinished, lambda c, e: c.uploads.on_put_finished(e)),
    _on(ev.RequestCancelled, lambda c, e: c.on_cancel(e.request)),
    _on(ev.GetRequested, _queue_job),
    _on(ev.ListRequested, _queue_job),
    _on(ev.PartialRequested, _queue_job),
    _on(ev.ChecksumRequested, _queue_job),
    _on(ev.StatRequested, lambda c, e: c.answers.on_stat(e)),
    _on(ev.QuickCheckRequested, lambda c, e: c.answers.on_quick_check(e)),
    _on(ev.MkdirRequested, lambda c, e: c.answers.on_mkdir(e)),
    _on(ev.DeleteRequested, lambda c, e: c.answers.on_name_change(e)),
    _on(ev.SymlinkRequested, lambda c, e: c.answers.on_name_change(e)),
    _on(ev.ReadlinkRequested, lambda c, e: c.answers.on_readlink(e)),
    _on(ev.InputEnded, lambda c, _e: c.on_input_ended()),
])


# For a remote store: each event whose answer waits on the store, as the call made in a
# worker thread (the StorageError it raises kept as a value) and what the reader does with
# its result.
WaitingHandler = Callable[[Connection, ev.Event], Awaitable[None]]
WaitingHandlers = dict[type[object], WaitingHandler]


def _waiting(kind: type[E], call: Callable[[Connection, E], T],
             done: Callable[[Connection, E, T | StorageError], None],
             ) -> tuple[type[object], WaitingHandler]:
    async def handle(c: Connection, event: E) -> None:
        done(c, event, await asyncio.to_thread(attempt, call, c, event))
    return kind, cast(WaitingHandler, handle)


async def _put_waiting(c: Connection, event: ev.PutRequested) -> None:
    if c.uploads.admit_put(event):
        c.uploads.opened_put(event, await asyncio.to_thread(attempt, c.uploads.open_put,
                                                            event))


async def _input_ended_waiting(c: Connection, _event: ev.InputEnded) -> None:
    # what the uploads still receiving hold is kept or aborted first, in a worker thread
    # (requests to the store); their refusals then go out as on any store
    await asyncio.to_thread(c.uploads.abort_files)
    c.on_input_ended()


async def _small_files_waiting(c: Connection, event: ev.SmallFilesReceived) -> None:
    c.uploads.on_small_files(event, await asyncio.to_thread(c.uploads.open_small_files,
                                                            event))


_READING_WAITING: WaitingHandlers = dict([
    _waiting(ev.StatRequested, lambda c, e: c.root.stat(e.path),
             lambda c, e, found: c.answers.on_stat(e, found)),
    _waiting(ev.ReadlinkRequested, lambda c, e: c.root.readlink(e.path),
             lambda c, e, target: c.answers.on_readlink(e, target)),
])
WAITING_HANDLERS: WaitingHandlers = _READING_WAITING | dict([
    _waiting(ev.MkdirRequested, lambda c, e: c.answers.make_dirs(e),
             lambda c, e, made: c.answers.on_mkdir(e, made)),
    (ev.PutRequested, cast(WaitingHandler, _put_waiting)),
    (ev.SmallFilesReceived, cast(WaitingHandler, _small_files_waiting)),
    (ev.InputEnded, cast(WaitingHandler, _input_ended_waiting)),
])
READ_ONLY_WAITING: WaitingHandlers = _READING_WAITING  # writes are refused at once


def _refuse_write(connection: Connection,
                  event: ev.PutRequested | ev.SmallFileReceived | ev.MkdirRequested
                  | ev.PartialRequested | ev.DeleteRequested | ev.SymlinkRequested) -> None:
    """serve --read-only: a request that would write is refused, and only that request
    (a PUT's body that follows is discarded as for any refused PUT)."""
    verb = {ev.MkdirRequested: "MKDIR", ev.PartialRequested: "PARTIAL",
            ev.DeleteRequested: "DELETE", ev.SymlinkRequested: "SYMLINK"}.get(type(event), "PUT")
    connection.refuse(event.request, verb, event.path, m.ErrorCode.READ_ONLY,
                      "this server is read-only: nothing can be written to it")


def _refuse_each(connection: Connection, files: list[ev.SmallFileReceived]) -> None:
    for small in files:
        _refuse_write(connection, small)


# The same table for serve --read-only: the writing requests go to _refuse_write.
READ_ONLY_HANDLERS: Handlers = HANDLERS | dict([
    _on(ev.PutRequested, _refuse_write),
    _on(ev.SmallFilesReceived, lambda c, e: _refuse_each(c, e.files)),
    _on(ev.MkdirRequested, _refuse_write),
    _on(ev.PartialRequested, _refuse_write),
    _on(ev.DeleteRequested, _refuse_write),
    _on(ev.SymlinkRequested, _refuse_write),
])
