"""The server's receiving of uploads: PUT, PUT_INLINE, holes, streamed and resumed
bodies written into the root's temporary files, checked against every limit, verified.

Kept apart from the connection's pump so the per-body path (``on_body``) is one dict
lookup and a sink call; verified uploads go to ``Commits`` (ferry/durability.py).
"""

from __future__ import annotations

import errno
import functools
import logging
from typing import TYPE_CHECKING

from sockferry.entries import Kind
from sockferry.errors import StorageError
from sockferry.ferry import events as ev
from sockferry.ferry import messages as m
from sockferry.ferry.bodies import Sink
from sockferry.ferry.codes import attempt, code_for
from sockferry.ferry.digests import hasher_of
from sockferry.ferry.limits import Reservation
from sockferry.ferry.upload_state import Upload, Verified
from sockferry.storage.atomic import AtomicFile, PartialFile, ResumableFile
from sockferry.storage.names import capped_mode, split_client_path
from sockferry.units import format_bytes

if TYPE_CHECKING:
    from sockferry.ferry.connection_base import ServerConnection

log = logging.getLogger("sockferry.ferry")

Opened = tuple[AtomicFile, int]  # an upload's file, and the bytes it would replace (--quota)


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
        if self.admit_put(event):
            self.opened_put(event, attempt(self.open_put, event))

    def admit_put(self, event: ev.PutRequested) -> bool:
        """The checks of a PUT before its file is opened (counted against the limits);
        False: refused, the client told."""
        c = self.connection
        c.metrics.transfer_started(c.transport, "upload")
        if event.size > c.config.max_file_size:
            self._refuse_too_large(event.request, event.path, event.size)
            return False
        return c.within_budget(event.request, "PUT", event.path, event.size - event.offset)

    def open_put(self, event: ev.PutRequested) -> Opened:
        """What a PUT waits on the store for (a worker thread's job on a remote store):
        its file, and the size of the file it would replace when a quota counts it.  A
        resumable PUT opens its target's partial file and keeps ``offset`` bytes of it
        (what another transfer is resuming gets a random temporary when it starts from
        0; from an offset it is refused, see ``opened_put``)."""
        c = self.connection
        if event.resumable:
            try:
                file = c.root.create(event.path, kind=PartialFile)
            except StorageError as exc:
                if exc.errno != errno.EAGAIN or event.offset:
                    raise
            else:
                assert isinstance(file, ResumableFile)
                if event.offset <= file.kept:  # else refused, the partial kept as it was
                    file.start_at(event.offset)
                return file, self._replaced(event.path)
        return c.root.create(event.path, c.dirs), self._replaced(event.path)

    def _replaced(self, path: str) -> int:
        """--quota: the bytes of the file a PUT to ``path`` would replace."""
        c = self.connection
        if c.quota is None or not c.config.clobber:
            return 0
        try:
            entry = c.root.stat(path)
        except StorageError:
            return 0
        return entry.size if entry.kind is Kind.FILE else 0

    def opened_put(self, event: ev.PutRequested, opened: Opened | StorageError) -> None:
        """The rest of a PUT once ``open_put`` is done (or failed)."""
        c = self.connection
        request, path = event.request, event.path
        if isinstance(opened, StorageError):
            if opened.errno == errno.EAGAIN and event.resumable:
                c.refuse(request, "PUT", path, m.ErrorCode.BUSY,
                         f"another transfer to '{path}' is in progress; try again later")
            else:
                c.refuse(request, "PUT", path, code_for(opened), str(opened))
            return
        file, replaced = opened
        resumed = isinstance(file, ResumableFile) and event.resumable
        if isinstance(file, ResumableFile) and resumed and event.offset > file.kept:
            file.abort()  # keeps the partial as it was
            c.refuse(request, "PUT", path, m.ErrorCode.BAD_REQUEST,
                     f"the server keeps {file.kept} bytes of '{path}', fewer than the "
                     f"offset {event.offset}; send it again without resuming")
            return
        room, reservation = self._reserve(request, path, event.size, file, replaced)
        if not room:
            return
        mtime_ns = event.mtime_ns if event.keep_mtime else None
        final_mode = capped_mode(event.mode, c.config.umask)
        if resumed:
            sink = Sink(file, c.session.digest_feature, kept=event.offset)
        else:
            sink = Sink(file, c.session.digest_feature)
            file.expect(final_mode, mtime_ns)
        upload = Upload(path, file, sink, event.size, final_mode, mtime_ns,
                        offset=event.offset if resumed else 0, reservation=reservation)
        upload.streamed = event.streamed
        self.receiving[request] = upload
        c.commits.opened(request, order_key(path))

    def _reserve(self, request: int, path: str, size: int, file: AtomicFile,
                 replaced: int) -> tuple[bool, Reservation | None]:
        """--quota: room for ``size`` more bytes under the root (``replaced``: the bytes
        of the file it replaces; -1: look them up), held until ``file`` is finished
        (None: no quota); False: refused (``file`` aborted, the client told)."""
        c = self.connection
        quota = c.quota
        if quota is None:
            return True, None
        if replaced < 0:
            replaced = self._replaced(path)
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

    def on_small_files(self, event: ev.SmallFilesReceived,
                       opened: list[Opened | StorageError] | None = None) -> None:
        """PUT_INLINE files, a run of them at once (the lookups made once per run);
        ``opened``: their files, from ``open_small_files`` in a worker thread (a remote
        store), else each is created here.

        Each file's digest is checked before anything is written; the file is then
        written whole, created with its final mode, and (where durability allows) closed
        at once, so its commit is only the rename."""
        c = self.connection
        files = event.files
        c.metrics.transfer_started(c.transport, "upload", len(files))
        new_hasher, config, budget, commits = (hasher_of(c.session.digest_feature),
                                               c.config, c.budget, c.commits)
        root, dirs, umask, seal_early = c.root, c.dirs, config.umask, commits.seal_early
        for index, small in enumerate(files):
            data, path, request = small.data, small.path, small.request
            size = len(data)
            if new_hasher(data).digest() != small.digest:
                self._refuse_mismatch(request, path)
            elif size > config.max_file_size:
                self._refuse_too_large(request, path, size)
            elif not budget.limited or c.within_budget(request, "PUT", path, size):
                mode = capped_mode(small.mode, umask)
                mtime_ns = small.mtime_ns if small.keep_mtime else None
                reservation = None
                try:
                    # a local store: created here, with no call more per file
                    file, replaced = (root.create(path, dirs, mode=mode), -1) \
                        if opened is None else _unwrapped(opened[index])
                    if c.quota is not None:
                        room, reservation = self._reserve(request, path, size, file,
                                                          replaced)
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
                continue
            if opened is not None:
                _abort_unused(opened[index])

    def open_small_files(self, event: ev.SmallFilesReceived) -> list[Opened | StorageError]:
        """Each file of the run created, in order (a worker thread's job on a remote store,
        where a file's directory is looked up over the network)."""
        c = self.connection
        umask = c.config.umask
        return [attempt(self._open_small, small.path, capped_mode(small.mode, umask))
                for small in event.files]

    def _open_small(self, path: str, mode: int) -> Opened:
        c = self.connection
        return c.root.create(path, c.dirs, mode=mode), self._replaced(path)

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
        """The sink a body may be copied into off the event loop: never a streamed one,
        whose every byte is counted against the limits on its way (``on_body``)."""
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

    def abort_files(self) -> None:
        """The files of the uploads still receiving aborted (a partial one kept), the
        uploads left for ``input_ended`` or ``abort`` to answer and log: a remote
        store's aborts are requests, made in a worker thread first (aborting twice is
        nothing)."""
        for upload in list(self.receiving.values()):
            upload.file.abort()

    def abort(self) -> None:
        """The connection ends: every upload still receiving is removed."""
        for upload in self.receiving.values():
            upload.file.abort()
            self.connection.log_file("PUT", upload.path, upload.file.written,
                                     upload.started, "aborted: the connection ended")
        self.receiving.clear()


def _abort_unused(opened: Opened | StorageError) -> None:
    """A file opened ahead for a PUT_INLINE that was then refused: never written."""
    if not isinstance(opened, StorageError):
        opened[0].abort()


def _unwrapped(opened: Opened | StorageError) -> Opened:
    if isinstance(opened, StorageError):
        raise opened
    return opened
