"""The server's receiving of uploads: PUT, PUT_INLINE, holes, streamed and resumed
bodies written into the root's temporary files, checked against every limit, verified.

Kept apart from the connection's pump so the per-body path (``on_body``) is one dict
lookup and a sink call; verified uploads go to ``Commits`` (ferry/durability.py).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
from typing import TYPE_CHECKING

from sockferry.entries import Kind
from sockferry.errors import StorageError
from sockferry.ferry import events as ev
from sockferry.ferry import messages as m
from sockferry.ferry.bodies import Sink
from sockferry.ferry.codes import code_for
from sockferry.ferry.digests import hasher_of
from sockferry.ferry.limits import Reservation
from sockferry.ferry.upload_state import Upload, Verified
from sockferry.records import replace
from sockferry.storage.atomic import AtomicFile, PartialFile, ResumableFile
from sockferry.storage.names import capped_mode, split_client_path
from sockferry.units import format_bytes

if TYPE_CHECKING:
    from sockferry.ferry.connection_base import ServerConnection

log = logging.getLogger("sockferry.ferry")


def order_key(path: str) -> str:
    """The path as PathOrder tells PUTs apart: "a//b" and "./a/b" are "a/b"."""
    if "//" in path or ("." in path and ("/./" in path or path.startswith("./")
                                        or path.endswith("/."))):
        return "/".join(split_client_path(path))
    return path.rstrip("/")  # already plain: the common case costs no split


class Uploads:
    """One connection's uploads whose bodies are still arriving, by request."""

    __slots__ = ("connection", "receiving")

    def __init__(self, connection: ServerConnection) -> None:
        self.connection = connection
        self.receiving: dict[int, Upload] = {}

    def on_put(self, event: ev.PutRequested) -> None:
        c = self.connection
        c.metrics.transfer_started(c.transport, "upload")
        if event.resumable and event.size <= c.config.max_file_size:
            if c.within_budget(event.request, "PUT", event.path, event.size - event.offset):
                self._start_resumable(event)
            return
        upload = self._start(event.request, event.path, event.size, event.mode,
                             event.mtime_ns if event.keep_mtime else None)
        if upload is not None:
            upload.streamed = event.streamed
            self.receiving[event.request] = upload

    def _start(self, request: int, path: str, size: int, mode: int,
               mtime_ns: int | None) -> Upload | None:
        c = self.connection
        if size > c.config.max_file_size:
            self._refuse_too_large(request, path, size)
            return None
        if not c.within_budget(request, "PUT", path, size):
            return None
        try:
            file = c.root.create(path, c.dirs)
        except StorageError as exc:
            c.refuse(request, "PUT", path, code_for(exc), str(exc))
            return None
        room, reservation = self._reserve(request, path, size, file)
        if not room:
            return None
        sink = Sink(file, c.session.digest_feature, size=size, follow=c.zero_copy)
        c.commits.opened(request, order_key(path))
        final_mode = capped_mode(mode, c.config.umask)
        file.expect(final_mode, mtime_ns)
        return Upload(path, file, sink, size, final_mode, mtime_ns, reservation=reservation)

    def _reserve(self, request: int, path: str, size: int,
                 file: AtomicFile) -> tuple[bool, Reservation | None]:
        """--quota: room for ``size`` more bytes under the root, held until ``file`` is
        finished (None: no quota); False: refused (``file`` aborted, the client told)."""
        c = self.connection
        quota = c.quota
        if quota is None:
            return True, None
        replaced = 0
        if c.config.clobber:
            with contextlib.suppress(StorageError):
                entry = c.root.stat(path)
                replaced = entry.size if entry.kind is Kind.FILE else 0
        got = quota.reserve(path, size, replaced)
        if isinstance(got, str):
            c.metrics.limit_tripped(c.transport, "quota")
            file.abort()
            c.refuse(request, "PUT", path, m.ErrorCode.NO_SPACE, got)
            return False, None
        file.on_finish.append(functools.partial(quota.release, got))
        return True, got

    def _refuse_too_large(self, request: int, path: str, size: int) -> None:
        c = self.connection
        c.metrics.limit_tripped(c.transport, "max-file-size")
        c.refuse(request, "PUT", path, m.ErrorCode.TOO_LARGE,
                 f"'{path}' is {size} bytes; this server accepts at "
                 f"most {c.config.max_file_size}")

    def on_small_files(self, event: ev.SmallFilesReceived) -> None:
        """PUT_INLINE files, a run of them at once (the lookups made once per run).

        Each file's digest is checked before anything touches the disk; the file is then
        written whole, created with its final mode, and (where durability allows) closed
        at once, so its commit is only the rename."""
        c = self.connection
        files = event.files
        c.metrics.transfer_started(c.transport, "upload", len(files))
        new_hasher, config, budget, commits = (hasher_of(c.session.digest_feature),
                                               c.config, c.budget, c.commits)
        root, dirs, umask, seal_early = c.root, c.dirs, config.umask, commits.seal_early
        for small in files:
            data, path, request = small.data, small.path, small.request
            if new_hasher(data).digest() != small.digest:
                self._refuse_mismatch(request, path)
                continue
            size = len(data)
            if size > config.max_file_size:
                self._refuse_too_large(request, path, size)
                continue
            if budget.limited and not c.within_budget(request, "PUT", path, size):
                continue
            mode = capped_mode(small.mode, umask)
            mtime_ns = small.mtime_ns if small.keep_mtime else None
            reservation = None
            try:
                file = root.create(path, dirs, mode=mode)
                if c.quota is not None:
                    room, reservation = self._reserve(request, path, size, file)
                    if not room:
                        continue
                file.write(data)
                if seal_early:
                    file.seal(mode, mtime_ns, durable=False)
            except StorageError as exc:
                c.refuse(request, "PUT", path, code_for(exc), str(exc))
                continue
            commits.opened_verified(request, order_key(path), Verified(
                request, small.digest, Upload(path, file, None, size, mode, mtime_ns,
                                              reservation=reservation)))

    def on_body(self, request: int, piece: bytes | memoryview | int) -> None:
        upload = self.receiving.get(request)
        if upload is None:
            return
        assert upload.sink is not None  # PUT_INLINE uploads are never receiving
        if upload.streamed and not self._stream_grows(request, upload,
                                                      piece if isinstance(piece, int)
                                                      else len(piece)):
            return
        try:
            upload.sink.receive(piece)
        except StorageError as exc:
            self.body_failed(request, exc)

    def _stream_grows(self, request: int, upload: Upload, count: int) -> bool:
        """A streamed upload (§5.2) is ``count`` bytes longer: within every size limit,
        or refused before those bytes (a hole of any length) cost anything."""
        c = self.connection
        size = upload.size + count
        reason: str | None = None
        if size > c.config.max_file_size:
            limit, code = "max-file-size", m.ErrorCode.TOO_LARGE
            reason = (f"'{upload.path}' went over {c.config.max_file_size} bytes, the "
                      "most this server accepts in one file")
        elif c.budget.limited and (reason := c.budget.grow(upload.path, count)):
            limit, code = "max-per-connection", m.ErrorCode.TOO_LARGE
        elif upload.reservation is not None:
            assert c.quota is not None
            limit, code = "quota", m.ErrorCode.NO_SPACE
            reason = c.quota.grow(upload.path, upload.reservation, size)
        if reason is None:
            upload.size = size
            return True
        c.metrics.limit_tripped(c.transport, limit)
        del self.receiving[request]
        upload.file.abort()
        c.refuse(request, "PUT", upload.path, code, reason, upload.started, upload.size)
        return False

    def sink_of(self, request: int) -> Sink | None:
        """The sink a body may be spliced into: never a streamed one, whose every byte
        is counted against the limits on its way (``on_body``)."""
        upload = self.receiving.get(request)
        return upload.sink if upload is not None and not upload.streamed else None

    def body_failed(self, request: int, exc: StorageError) -> None:
        upload = self.receiving.pop(request, None)
        if upload is not None:
            upload.file.abort()
            self.connection.refuse(request, "PUT", upload.path, code_for(exc), str(exc))

    def on_put_finished(self, event: ev.PutFinished) -> None:
        upload = self.receiving.pop(event.request, None)
        if upload is None:
            return  # already refused (disk full, ...): the reply has been sent
        assert upload.sink is not None
        assert not upload.streamed or upload.size == event.size, "every byte was counted"
        commits = self.connection.commits
        if upload.sink.deferred:  # hashed in a thread: wait for it off the read loop
            commits.spawn(self._verify_later(event, upload))
            return
        if not upload.sink.matches(event.digest):
            upload.file.abort()
            self._refuse_mismatch(event.request, upload.path)
            return
        commits.commit(Verified(event.request, event.digest, upload))

    async def _verify_later(self, event: ev.PutFinished, upload: Upload) -> None:
        """Check a large or resumed body against DONE once its hashing thread is done,
        then commit it."""
        assert upload.sink is not None
        c = self.connection
        try:
            matches = await upload.sink.verify(event.digest)
        except StorageError as exc:
            upload.file.abort()
            c.refuse(event.request, "PUT", upload.path, m.ErrorCode.IO_ERROR, str(exc),
                     upload.started, upload.size - upload.offset)
            c.commits.leave()
            return
        except BaseException:
            upload.file.abort()
            raise
        if not matches:
            upload.file.abort()
            resumed = " (resumed: send it again without --resume)" if upload.offset else ""
            c.refuse(event.request, "PUT", upload.path, m.ErrorCode.DIGEST_MISMATCH,
                     f"digest mismatch for '{upload.path}': the data was damaged in "
                     "transit or the file changed while it was sent; nothing was "
                     f"written{resumed}", upload.started, upload.size - upload.offset)
        else:
            if upload.offset:
                log.info("%s: PUT '%s' resumed at byte %d: %s received, the whole file "
                         "verified", c.peer, upload.path, upload.offset,
                         format_bytes(upload.size - upload.offset))
            c.commits.commit(Verified(event.request, event.digest, upload))
        c.commits.leave()

    def _refuse_mismatch(self, request: int, path: str) -> None:
        self.connection.refuse(request, "PUT", path, m.ErrorCode.DIGEST_MISMATCH,
                               f"digest mismatch for '{path}': the data was damaged in "
                               "transit or the file changed while it was sent; nothing "
                               "was written")

    # -- resume (docs/protocol.md §5.1) ---------------------------------------------------

    def _start_resumable(self, event: ev.PutRequested) -> None:
        """PUT with RESUMABLE, or PUT_AT: write under the target's partial name."""
        c = self.connection
        try:
            file = c.root.create(event.path, kind=PartialFile)
        except StorageError as exc:
            if exc.errno != errno.EAGAIN:
                c.refuse(event.request, "PUT", event.path, code_for(exc), str(exc))
                return
            if event.offset:
                c.refuse(event.request, "PUT", event.path, m.ErrorCode.BUSY,
                         f"another transfer to '{event.path}' is in progress; try "
                         "again later")
                return
            c.budget.files -= 1  # counted again by the plain PUT
            c.budget.bytes -= event.size - event.offset
            self.on_put(replace(event, resumable=False))  # a random temporary
            return
        assert isinstance(file, ResumableFile)
        if event.offset > file.kept:
            file.abort()  # keeps the partial as it was
            c.refuse(event.request, "PUT", event.path, m.ErrorCode.BAD_REQUEST,
                     f"the server keeps {file.kept} bytes of '{event.path}', fewer "
                     f"than the offset {event.offset}; send it again without resuming")
            return
        try:
            file.start_at(event.offset)
        except StorageError as exc:
            c.refuse(event.request, "PUT", event.path, code_for(exc), str(exc))
            return
        room, reservation = self._reserve(event.request, event.path, event.size, file)
        if not room:
            return
        sink = Sink(file, c.session.digest_feature, size=event.size, kept=event.offset)
        self.receiving[event.request] = Upload(
            event.path, file, sink, event.size, capped_mode(event.mode, c.config.umask),
            event.mtime_ns if event.keep_mtime else None, offset=event.offset,
            reservation=reservation)
        c.commits.opened(event.request, order_key(event.path))

    # -- the ends of uploads that never finish --------------------------------------------

    def cancel(self, request: int) -> bool:
        """CANCEL of an upload still receiving (False: no such upload)."""
        upload = self.receiving.pop(request, None)
        if upload is None:
            return False
        upload.file.abort()
        c = self.connection
        c.commits.ended(request)
        c.log_file("PUT", upload.path, upload.file.written, upload.started,
                   "cancelled by the client")
        c.answers.run_name_changes()
        return True

    def input_ended(self) -> None:
        """The client's end of stream: every upload still receiving is refused."""
        for request, upload in list(self.receiving.items()):
            upload.file.abort()
            del self.receiving[request]
            self.connection.refuse(request, "PUT", upload.path, m.ErrorCode.BAD_REQUEST,
                                   "the connection ended before the file was complete",
                                   upload.started, upload.file.written)

    def abort(self) -> None:
        """The connection ends: every upload still receiving is removed."""
        for upload in self.receiving.values():
            upload.file.abort()
            self.connection.log_file("PUT", upload.path, upload.file.written,
                                     upload.started, "aborted: the connection ended")
        self.receiving.clear()
