"""The client's PUTs: a local file (whole, as one PUT_INLINE frame, or resumed after
the prefix the server proves it keeps) or a stream of unknown length, its body sent
from the caller's task."""

from __future__ import annotations

import asyncio
import errno
import os
import stat as stat_module
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from sockferry.errors import PeerRefused, StorageError
from sockferry.ferry import codec, digests
from sockferry.ferry import events as ev
from sockferry.ferry import messages as m
from sockferry.ferry.bodies import (
    GATHER_BYTES,
    Progress,
    TransferCancelled,
    read_whole,
    send_body,
    send_stream,
    send_tail,
    start_prefix_hash,
)
from sockferry.ferry.inflight import NO_RESUME, ResumeReport
from sockferry.sockets import storage_error
from sockferry.storage.sparse import is_sparse

if TYPE_CHECKING:
    from sockferry.ferry.client_base import ClientConnection

# Files up to this size go as one PUT_INLINE frame where the server offers INLINE: the
# frame's 64 KiB bound would allow more, but past a few pages the saved frames matter
# little and a larger frame is copied once more by the receiver's parser.
INLINE_FILE = 16 * 1024


class Puts:
    """One client's uploads (their futures are kept with every request's)."""

    __slots__ = ("client", "inflight", "session")

    def __init__(self, client: ClientConnection) -> None:
        self.client = client
        self.session = client.session
        self.inflight = client.inflight

    async def start_put(self, local: str, remote: str, *, keep_mtime: bool = False,
                        progress: Progress | None = None,
                        opened: tuple[int, os.stat_result] | None = None,
                        ) -> asyncio.Future[object]:
        """Send one local file (``opened``: already opened with ``open_local_file``; its
        fd is closed here); the future settles with the size when it is committed."""
        fd, st = opened or open_local_file(local)
        try:
            await self.inflight.slot()
            if self._inlines(remote, st.st_size):
                future = self._put_inline(local, remote, fd, st, keep_mtime)
                if self.session.unsent >= GATHER_BYTES:
                    await self.client.send_queued()
                if progress:
                    progress(st.st_size)
                return future
            request = self.session.put(remote, st.st_size, stat_module.S_IMODE(st.st_mode),
                                       st.st_mtime_ns, keep_mtime)
            future = self.inflight.track(request, ev.RequestKind.PUT)
            sparse = bool(self.session.features & m.Feature.SPARSE) and is_sparse(st)
            stream = self.client.stream
            await self._send_upload(request, local, future, lambda refused: send_body(
                self.session, stream, request, fd, st.st_size, sparse, refused, progress))
            return future
        finally:
            os.close(fd)

    async def start_put_stream(self, fd: int, remote: str, *, shown: str = "the stream",
                               progress: Progress | None = None) -> asyncio.Future[object]:
        """Send what ``fd`` (a pipe, or any readable descriptor, left open) yields until
        its end as the file ``remote``, created with the mode ``cat > NAME`` would give;
        needs ``client.can_stream``.  The future settles with the size once it is
        committed."""
        await self.inflight.slot()
        request = self.session.put_streamed(remote, 0o666 & ~self.client.umask,
                                            time.time_ns())
        future = self.inflight.track(request, ev.RequestKind.PUT)
        stream = self.client.stream
        await self._send_upload(request, shown, future, lambda refused: send_stream(
            self.session, stream, request, fd, shown, refused, progress))
        return future

    async def _send_upload(self, request: int, local: str, future: asyncio.Future[object],
                           body: Callable[[Callable[[], bool]], Awaitable[object]]) -> None:
        """Send a PUT's body (``body(refused)`` sends it, stopping once ``refused()``);
        a refusal or a local read error on the way cancels the request on the wire."""
        pending = self.inflight.pending[request]
        try:
            await body(lambda: pending.refused)
            if request not in self.session.requests and pending.refused:
                # Refused while our last bytes were leaving: the DONE closed it.
                self.inflight.drop(request)
        except TransferCancelled:
            await self._cancel(request)
        except StorageError as exc:
            await self._cancel(request)
            if not future.done():
                future.set_exception(StorageError(f"{local}: {exc}", errno=exc.errno,
                                                  path=local))

    async def _cancel(self, request: int) -> None:
        self.session.cancel(request)
        if request not in self.session.requests:
            self.inflight.drop(request)
        await self.client.send_queued()

    # -- small files, one frame each ------------------------------------------------------

    def can_put_at_once(self, remote: str, size: int) -> bool:
        """Whether ``put_at_once`` may send a file of ``size`` bytes to ``remote`` now:
        a PUT_INLINE file, the window open, less than a gather's worth queued."""
        session = self.session
        return (self.inflight.failure is None and session.window_open
                and session.unsent < GATHER_BYTES and self._inlines(remote, size))

    def _inlines(self, remote: str, size: int) -> bool:
        """A file of ``size`` bytes to ``remote`` goes as one PUT_INLINE frame."""
        return size <= INLINE_FILE and self.session.inline and codec.inline_fits(remote, size)

    def put_at_once(self, local: str, remote: str, opened: tuple[int, os.stat_result],
                    keep_mtime: bool = False) -> asyncio.Future[object]:
        """``start_put`` without a wait, where ``can_put_at_once`` said so: the frame is
        queued (sent with the next flush); the fd is closed here."""
        fd, st = opened
        try:
            return self._put_inline(local, remote, fd, st, keep_mtime)
        finally:
            os.close(fd)

    def _put_inline(self, local: str, remote: str, fd: int, st: os.stat_result,
                    keep_mtime: bool) -> asyncio.Future[object]:
        """A small file as one PUT_INLINE frame, to be gathered with others into one
        sendmsg."""
        try:
            data = read_whole(fd, st.st_size)
        except StorageError as exc:
            raise StorageError(f"{local}: {exc}", errno=exc.errno, path=local) from exc
        digest = digests.digest_of(data, self.session.digest_feature)
        request = self.session.put_inline(remote, data, stat_module.S_IMODE(st.st_mode),
                                          st.st_mtime_ns, keep_mtime, digest)
        return self.inflight.track(request, ev.RequestKind.PUT)

    # -- resume (docs/protocol.md §5.1) ---------------------------------------------------

    async def start_put_resumable(self, local: str, remote: str, *, keep_mtime: bool = False,
                                  progress: Progress | None = None,
                                  ) -> tuple[asyncio.Future[object], ResumeReport]:
        """``send --resume``: send only what the server lacks, if it proves its prefix.

        The server states what it keeps (PARTIAL); only if our first bytes have the same
        digest does the rest go as PUT_AT.  Otherwise the whole file goes, resumable.
        """
        report = ResumeReport()
        if not self.client.can_resume:
            report.note = NO_RESUME
            return await self.start_put(local, remote, keep_mtime=keep_mtime,
                                        progress=progress), report
        fd, st = open_local_file(local)
        try:
            hasher = await self._proven_prefix(fd, st.st_size, remote, report)
            await self.inflight.slot()
            mode = stat_module.S_IMODE(st.st_mode)
            if hasher is not None:
                request = self.session.put_at(remote, report.offset, st.st_size, mode,
                                              st.st_mtime_ns, keep_mtime)
            else:
                request = self.session.put(remote, st.st_size, mode, st.st_mtime_ns,
                                           keep_mtime, resumable=True)
            future = self.inflight.track(request, ev.RequestKind.PUT)
            stream = self.client.stream
            if hasher is not None:
                if progress:
                    progress(report.offset)
                tail_hasher = hasher
                await self._send_upload(request, local, future, lambda refused: send_tail(
                    self.session, stream, request, fd, report.offset, st.st_size,
                    tail_hasher, refused, progress))
            else:
                sparse = bool(self.session.features & m.Feature.SPARSE) and is_sparse(st)
                await self._send_upload(request, local, future, lambda refused: send_body(
                    self.session, stream, request, fd, st.st_size, sparse, refused,
                    progress))
            return future, report
        finally:
            os.close(fd)

    async def _proven_prefix(self, fd: int, size: int, remote: str,
                             report: ResumeReport) -> digests.Hasher | None:
        """A hasher over our first bytes if they are what the server keeps, else None."""
        try:
            length, digest = await self.client.partial(remote)
        except PeerRefused as exc:
            report.note = f"the server cannot resume '{remote}' ({exc}); sending all of it"
            return None
        if length == 0:
            return None
        hasher = None
        if length <= size:
            hasher = await start_prefix_hash(fd, length, self.session.digest_feature)
        if hasher is None or hasher.digest() != digest:
            report.note = (f"the {length} bytes the server keeps of '{remote}' differ from "
                           "this file; sending all of it")
            return None
        report.offset = length
        return hasher


def open_local_file(path: str) -> tuple[int, os.stat_result]:
    """Open a regular local file for sending; directories and devices are refused."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise storage_error(exc, path) from exc
    st = os.fstat(fd)
    if not stat_module.S_ISREG(st.st_mode):
        os.close(fd)
        what = "a directory (use -r to copy trees)" if stat_module.S_ISDIR(st.st_mode) \
            else "not a regular file"
        raise StorageError(f"'{path}' is {what}", errno=errno.EISDIR, path=path)
    # O_NONBLOCK kept a FIFO from blocking the open.  Local file systems ignore it on
    # regular files, so a small file (read with one pread) keeps it: two fcntl calls per
    # file saved in a tree of small files.  Bigger files are read blocking, as network
    # and FUSE file systems may honour the flag.
    if st.st_size > INLINE_FILE:
        os.set_blocking(fd, True)
    return fd, st
