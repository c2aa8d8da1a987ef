"""The client's requests in flight: each one's future and record, the server's window
(a slot per request), and how they settle — answered, refused, or failed all at once
when the connection breaks."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from sockferry.entries import Entry
from sockferry.errors import SockferryError
from sockferry.ferry import digests
from sockferry.ferry import events as ev
from sockferry.ferry.bodies import Progress, Sink
from sockferry.ferry.client_session import ClientSession
from sockferry.ferry.codes import exception_for
from sockferry.records import mutable_record

NO_RESUME = "resume is not available on this server; the whole file is sent"


@mutable_record
class ResumeReport:
    """What ``--resume`` did for one file: bytes kept, or why it started from 0."""

    offset: int = 0
    note: str = ""


@mutable_record
class Pending:
    """One request in flight: its future, and for GET the file being received."""

    kind: ev.RequestKind
    future: asyncio.Future[object]
    local_path: str = ""
    keep_mtime: bool = False
    umask: int = 0o022
    sink: Sink | None = None
    entries: list[Entry] | None = None  # LIST: what came so far
    progress: Progress | None = None
    mode: int = 0o644
    mtime_ns: int = 0
    refused: bool = False
    prefix: digests.Hasher | None = None  # get --resume: fed with our partial's bytes
    resume: ResumeReport | None = None


class InFlight:
    """The requests sent and not yet answered, by request number."""

    __slots__ = ("_flush", "_loop", "failure", "pending", "session", "slot_freed")

    def __init__(self, session: ClientSession,
                 flush: Callable[[], Awaitable[None]]) -> None:
        self.session = session
        self._flush = flush  # sends what is gathered (the connection's current stream)
        self.pending: dict[int, Pending] = {}
        self.slot_freed = asyncio.Event()
        self.failure: SockferryError | None = None
        self._loop = asyncio.get_running_loop()

    def check_alive(self) -> None:
        if self.failure is not None:
            raise self.failure

    async def slot(self) -> None:
        """Wait until the server's window has room for one more request."""
        if self.failure is None and self.session.window_open:
            return  # the common case, without a loop
        while True:
            self.check_alive()
            if self.session.window_open:
                return
            await self._flush()  # what is gathered must leave before we wait
            self.slot_freed.clear()
            await self.slot_freed.wait()

    def track(self, request: int, kind: ev.RequestKind,
              **details: object) -> asyncio.Future[object]:
        future: asyncio.Future[object] = self._loop.create_future()
        self.pending[request] = Pending(kind, future, **details)  # type: ignore[arg-type]
        return future

    def drop(self, request: int) -> None:
        """A request closed without an answer to wait for (cancelled, or refused while
        its last bytes were leaving): its slot is free."""
        self.pending.pop(request, None)
        self.slot_freed.set()

    def settle(self, request: int, result: object = None,
               error: BaseException | None = None) -> None:
        pending = self.pending.pop(request, None)
        self.slot_freed.set()
        if pending is None or pending.future.done():
            return
        if error is not None:
            pending.future.set_exception(error)
        else:
            pending.future.set_result(result)

    def fail_all(self, exc: SockferryError) -> None:
        self.failure = exc
        for pending in self.pending.values():
            if pending.sink is not None:
                pending.sink.file.abort()
            if not pending.future.done():
                pending.future.set_exception(exc)
                # Marked as seen: the same failure reaches the caller by ``failure`` or
                # by the request it was sending, and a copy that gives up (or a --retry
                # that starts over) never awaits the rest.
                pending.future.exception()
        self.pending.clear()
        self.slot_freed.set()

    def on_entries(self, event: ev.EntriesReceived) -> None:
        pending = self.pending[event.request]
        if pending.entries is None:
            pending.entries = []
        pending.entries.extend(event.entries)
        if event.last:
            self.settle(event.request, pending.entries)

    def on_failed(self, event: ev.RequestFailed) -> None:
        pending = self.pending.get(event.request)
        if pending is None:
            return
        if pending.sink is not None:
            pending.sink.file.abort()
            pending.sink = None
        pending.refused = True
        error = exception_for(event.code, event.message)
        if event.request in self.session.requests:
            # A refused PUT stays open until our CANCEL; fail its future now.
            if not pending.future.done():
                pending.future.set_exception(error)
            return
        self.settle(event.request, error=error)

    def abort(self) -> None:
        """The connection is closed: files still being received are removed."""
        for pending in self.pending.values():
            if pending.sink is not None:
                pending.sink.file.abort()
