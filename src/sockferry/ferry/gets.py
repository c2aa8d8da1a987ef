"""The client's GETs: asking for files, whole or resumed, and receiving their bodies
into local temporary files, verified, then committed (fsync, rename) off the loop."""

from __future__ import annotations

import asyncio
import errno
from typing import TYPE_CHECKING

from sockferry.errors import RemoteProtocolError, SockferryError, StorageError
from sockferry.ferry import events as ev
from sockferry.ferry.bodies import Progress, Sink, start_prefix_hash
from sockferry.ferry.inflight import NO_RESUME, Pending, ResumeReport
from sockferry.storage.atomic import AtomicFile, PartialFile

if TYPE_CHECKING:
    from sockferry.ferry.client_base import ClientConnection


class Gets:
    """One client's files being received, and their commits still running."""

    __slots__ = ("client", "commits", "inflight", "session")

    def __init__(self, client: ClientConnection) -> None:
        self.client = client
        self.session = client.session
        self.inflight = client.inflight
        self.commits: set[asyncio.Task[None]] = set()

    async def start_get(self, remote: str, local: str, *, keep_mtime: bool = False,
                        progress: Progress | None = None) -> asyncio.Future[object]:
        client = self.client
        await self.inflight.slot()
        future = self.inflight.track(self.session.get(remote), ev.RequestKind.GET,
                                     local_path=local, keep_mtime=keep_mtime,
                                     umask=client.umask, progress=progress)
        await client.gathered()
        return future

    async def start_get_resumable(self, remote: str, local: str, *, keep_mtime: bool = False,
                                  progress: Progress | None = None,
                                  ) -> tuple[asyncio.Future[object], ResumeReport]:
        """``get --resume``: keep the partial beside ``local``; offer its length and
        digest; the server sends the rest only if its own first bytes match."""
        client = self.client
        report = ResumeReport(note="" if client.can_resume else NO_RESUME)
        try:
            partial = PartialFile.beside(local)
        except StorageError as exc:
            if exc.errno == errno.EAGAIN:
                raise StorageError(f"another transfer to {local} is in progress; try again "
                                   "later", errno=exc.errno, path=local) from None
            raise
        assert isinstance(partial, PartialFile)
        sink = Sink(partial, self.session.digest_feature)  # replaced once FILE says more
        try:
            prefix = None
            if partial.kept and client.can_resume:
                prefix = await start_prefix_hash(partial.fd, partial.kept,
                                                 self.session.digest_feature)
            await self.inflight.slot()
            if prefix is not None:
                request = self.session.get(remote, partial.kept, prefix.digest())
            else:
                request = self.session.get(remote)
        except BaseException:
            partial.abort()
            raise
        future = self.inflight.track(request, ev.RequestKind.GET, local_path=local,
                                     keep_mtime=keep_mtime, umask=client.umask,
                                     progress=progress, sink=sink, prefix=prefix,
                                     resume=report)
        await client.send_queued()
        return future, report

    # -- what the reader is given ----------------------------------------------------------

    def on_file_started(self, event: ev.FileStarted) -> None:
        pending = self.inflight.pending[event.request]
        pending.mode, pending.mtime_ns = event.mode, event.mtime_ns
        if pending.resume is not None:
            self._on_partial_started(event, pending)
            return
        try:
            pending.sink = Sink(AtomicFile.beside(pending.local_path),
                                self.session.digest_feature)
        except StorageError as exc:
            self._give_up(event.request, exc)

    def _on_partial_started(self, event: ev.FileStarted, pending: Pending) -> None:
        sink, report = pending.sink, pending.resume
        if sink is None or report is None:
            return  # given up locally already
        partial = sink.file
        assert isinstance(partial, PartialFile)
        try:
            partial.start_at(event.offset)
        except StorageError as exc:
            self._give_up(event.request, exc)
            return
        if event.offset and pending.prefix is not None:
            # The prefix hasher already covers the kept bytes: it goes on over the tail.
            pending.sink = Sink(partial, self.session.digest_feature, kept=event.offset,
                                prefix=pending.prefix)
            report.offset = event.offset
            if pending.progress:
                pending.progress(event.offset)
            return
        pending.sink = Sink(partial, self.session.digest_feature)
        if pending.prefix is not None:
            report.note = (f"the server's file differs from the {partial.kept} bytes kept "
                           f"of {pending.local_path}; receiving all of it")

    def sink_of(self, request: int) -> Sink | None:
        pending = self.inflight.pending.get(request)
        return pending.sink if pending is not None else None

    def copied(self, request: int, count: int) -> None:
        progress = self.inflight.pending[request].progress
        if progress:
            progress(count)

    def copy_failed(self, request: int, exc: StorageError) -> None:
        sink = self.inflight.pending[request].sink
        if sink is not None:
            sink.file.abort()
        self._give_up(request, exc)

    def _give_up(self, request: int, exc: SockferryError) -> None:
        """A local failure while receiving: cancel on the wire, fail the future now."""
        self.session.cancel(request)
        pending = self.inflight.pending[request]
        pending.sink = None
        if not pending.future.done():
            pending.future.set_exception(exc)

    def on_body(self, request: int, piece: bytes | memoryview | int) -> None:
        pending = self.inflight.pending[request]
        if pending.sink is None:
            return  # cancelled locally; the server's reply will close the request
        try:
            count = pending.sink.receive(piece)
        except StorageError as exc:
            self._give_up(request, exc)
            return
        if pending.progress:
            pending.progress(count, hole=isinstance(piece, int))

    def on_file_finished(self, event: ev.FileFinished) -> None:
        pending = self.inflight.pending[event.request]
        sink, pending.sink = pending.sink, None
        if sink is None:
            self.inflight.settle(event.request)
            return
        if not sink.deferred and not sink.matches(event.digest):
            sink.file.abort()
            self.inflight.settle(event.request, error=RemoteProtocolError(
                f"digest mismatch for {pending.local_path}: the data was damaged in "
                "transit; the partial file was removed"))
            return
        # (Verify a deferred sink,) fsync and rename off the event loop; the request
        # stays counted until then.
        task = asyncio.get_running_loop().create_task(
            self._commit(event, pending, sink))
        self.commits.add(task)
        task.add_done_callback(self.commits.discard)

    async def _commit(self, event: ev.FileFinished, pending: Pending, sink: Sink) -> None:
        if sink.deferred and not await self._verified(event, pending, sink):
            return
        mode = pending.mode & 0o777 & ~pending.umask
        mtime = pending.mtime_ns if pending.keep_mtime else None
        try:
            await asyncio.to_thread(sink.file.commit, mode, mtime)
        except StorageError as exc:
            self.inflight.settle(event.request, error=exc)
        else:
            self.inflight.settle(event.request, sink.file.written)

    async def _verified(self, event: ev.FileFinished, pending: Pending, sink: Sink) -> bool:
        """A body hashed in a thread: whether it matches DONE (if not, it is settled)."""
        resumed = isinstance(sink.file, PartialFile) and pending.resume is not None \
            and pending.resume.offset > 0
        try:
            matches = await sink.verify(event.digest)
        except StorageError as exc:
            if isinstance(sink.file, PartialFile):
                sink.file.keep = False
            sink.file.abort()
            self.inflight.settle(event.request, error=exc)
            return False
        if matches:
            return True
        if isinstance(sink.file, PartialFile):
            sink.file.keep = False
        sink.file.abort()
        what = ("the resumed file does not match the server's digest; the partial file was "
                "removed — get it again") if resumed else \
            "the data was damaged in transit; the partial file was removed"
        self.inflight.settle(event.request, error=RemoteProtocolError(
            f"digest mismatch for {pending.local_path}: {what}"))
        return False
