"""The server's answers to the requests that read or name things: GET (whole or its
tail), LIST, STAT, PARTIAL, CHECKSUM, MKDIR, and SYNC's and LINKS' DELETE, SYMLINK and
READLINK.

The connection's writer sends the bodies (GET, LIST, PARTIAL, CHECKSUM) in request
order; the others are answered by the reader at once, DELETE and SYMLINK each once
every PUT sent before it is answered.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, TypeVar

from sockferry.entries import Entry
from sockferry.errors import StorageError
from sockferry.ferry import codec, digests
from sockferry.ferry import events as ev
from sockferry.ferry import messages as m
from sockferry.ferry.bodies import (
    SMALL_FILE,
    TransferCancelled,
    read_whole,
    send_body,
    send_tail,
    start_prefix_hash,
)
from sockferry.ferry.codes import attempt, code_for
from sockferry.ferry.digests import digest_of
from sockferry.ferry.sync import same_bitmap
from sockferry.records import replace
from sockferry.sockets import storage_error
from sockferry.storage.names import capped_mode
from sockferry.storage.root import Root
from sockferry.storage.sparse import is_sparse
from sockferry.units import format_bytes

if TYPE_CHECKING:
    from sockferry.ferry.connection_base import ServerConnection

T = TypeVar("T")

log = logging.getLogger("sockferry.ferry")

LISTING_CHUNK = 1024  # entries read ahead of what the client has taken (LIST -R)


class Answers:
    """One connection's answers; ``cancelled``: GETs the client cancelled."""

    __slots__ = ("cancelled", "connection", "name_changes")

    def __init__(self, connection: ServerConnection) -> None:
        self.connection = connection
        self.cancelled: set[int] = set()
        # DELETEs and SYMLINKs, each waiting for the PUTs sent before it (§5.3).
        self.name_changes: deque[ev.DeleteRequested | ev.SymlinkRequested] = deque()

    # -- answered by the reader at once -------------------------------------------------

    # Each as the store call it waits for and what is done with its result, so that a
    # remote store's call can run in a worker thread while the reader waits (connection.py
    # WAITING_HANDLERS); a local one is made here, at once.

    def on_stat(self, event: ev.StatRequested,
                found: Entry | StorageError | None = None) -> None:
        if found is None:
            found = attempt(self.connection.root.stat, event.path)
        if isinstance(found, StorageError):
            self.connection.session.refuse(event.request, code_for(found), str(found))
            return
        self.connection.session.entries(event.request, [found], last=True)

    def on_quick_check(self, event: ev.QuickCheckRequested) -> None:
        """QUICK_CHECK, offered for a local directory only (server.py): one lstat per
        name, answered at once as a STAT is."""
        c = self.connection
        root = c.root
        assert isinstance(root, Root)
        try:
            found = root.lstat_names(event.path, [name for *_, name in event.names])
        except StorageError as exc:
            c.refuse(event.request, "QUICK_CHECK", event.path, code_for(exc), str(exc))
            return
        c.session.same(event.request, same_bitmap(event.names, found))

    def make_dirs(self, event: ev.MkdirRequested) -> bool:
        c = self.connection
        c.root.make_dirs(event.path, capped_mode(event.mode, c.config.umask))
        return True

    def on_mkdir(self, event: ev.MkdirRequested, made: bool | StorageError = False) -> None:
        """``made``: what ``make_dirs`` gave (False: make them here)."""
        c = self.connection
        if made is False:
            made = attempt(self.make_dirs, event)
        if isinstance(made, StorageError):
            c.refuse(event.request, "MKDIR", event.path, code_for(made), str(made))
            return
        c.dirs.changed(event.path)
        c.session.ok(event.request)

    def on_readlink(self, event: ev.ReadlinkRequested,
                    target: str | StorageError | None = None) -> None:
        c = self.connection
        if target is None:
            target = attempt(c.root.readlink, event.path)
        if isinstance(target, StorageError):
            c.refuse(event.request, "READLINK", event.path, code_for(target), str(target))
            return
        c.session.link(event.request, target)

    # -- incremental copies (docs/protocol.md §5.3) --------------------------------------

    def on_name_change(self, event: ev.DeleteRequested | ev.SymlinkRequested) -> None:
        self.name_changes.append(event)
        self.run_name_changes()

    def run_name_changes(self) -> None:
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
        for open_request, state in self.connection.session.requests.items():
            if open_request == request:
                return False
            if state.kind is ev.RequestKind.PUT and state.phase is not ev.Phase.DISCARDING:
                return True
        return False

    def _delete_now(self, event: ev.DeleteRequested) -> None:
        c = self.connection
        try:
            freed = c.root.remove(event.path, directory=event.directory)
        except StorageError as exc:
            c.refuse(event.request, "DELETE", event.path, code_for(exc), str(exc))
            return
        c.dirs.removed(event.path)
        if c.quota is not None:
            c.quota.freed(freed)
        c.session.ok(event.request)
        c.log_file("DELETE", event.path, freed, None, "ok", logging.DEBUG)

    def _symlink_now(self, event: ev.SymlinkRequested) -> None:
        c = self.connection
        try:
            c.root.symlink(event.path, event.target, clobber=c.config.clobber)
        except StorageError as exc:
            c.refuse(event.request, "SYMLINK", event.path, code_for(exc), str(exc))
            return
        c.dirs.changed(event.path)
        c.session.ok(event.request)
        c.log_file("SYMLINK", event.path, 0, None, f"ok (-> {event.target})",
                   logging.DEBUG)

    # -- sent by the writer, in request order ---------------------------------------------

    async def _open_read(self, path: str) -> tuple[int, os.stat_result]:
        return await self._opened(self.connection.root.open_read, path)

    async def _opened(self, opener: Callable[[str], T], path: str) -> T:
        """What the store's ``opener`` gives for ``path``; a remote store fetches the
        whole file, so it waits in a worker thread; a local open is done here."""
        if self.connection.root.remote:
            return await asyncio.to_thread(opener, path)
        return opener(path)

    async def send_sum(self, job: ev.ChecksumRequested) -> None:
        """CHECKSUM: the digest of a file, counted against the limits as a GET."""
        c = self.connection
        try:
            fd, st = await self._open_read(job.path)
        except StorageError as exc:
            c.refuse(job.request, "CHECKSUM", job.path, code_for(exc), str(exc))
            return
        try:
            if not c.within_budget(job.request, "CHECKSUM", job.path, st.st_size):
                return
            feature = c.session.digest_feature
            if st.st_size <= SMALL_FILE:
                digest = digest_of(read_whole(fd, st.st_size), feature)
            else:  # hashing a large file takes long: off the event loop
                digest = await asyncio.to_thread(digests.hash_fd, fd, st.st_size, feature)
        except (StorageError, OSError) as exc:
            error = exc if isinstance(exc, StorageError) else storage_error(exc, job.path)
            c.refuse(job.request, "CHECKSUM", job.path, m.ErrorCode.IO_ERROR, str(error))
            return
        finally:
            os.close(fd)
        c.session.sum(job.request, st.st_size, digest)

    async def send_file(self, job: ev.GetRequested) -> None:
        c = self.connection
        c.metrics.transfer_started(c.transport, "download")
        if job.prefix_digest is not None:
            if await self._send_tail(job):
                return
            job = replace(job, offset=0, prefix_digest=None)
        started = time.monotonic()
        if job.offset:
            c.refuse(job.request, "GET", job.path, m.ErrorCode.BAD_REQUEST,
                     "this server does not resume transfers (GET offset must be 0)")
            return
        if job.request in self.cancelled:
            self.cancelled.discard(job.request)
            c.refuse(job.request, "GET", job.path, m.ErrorCode.CANCELLED,
                     "cancelled by the client")
            return
        try:
            fd, st = await self._open_read(job.path)
        except StorageError as exc:
            c.refuse(job.request, "GET", job.path, code_for(exc), str(exc))
            return
        if not c.within_budget(job.request, "GET", job.path, st.st_size):
            os.close(fd)
            return
        try:
            c.session.file_header(job.request, st.st_size, st.st_mode & 0o7777,
                                  st.st_mtime_ns)
            sparse = bool(c.session.features & m.Feature.SPARSE) and is_sparse(st)
            await self._send_job_body(job, started, st.st_size, "ok", logging.DEBUG,
                                      lambda: send_body(c.session, c.stream, job.request,
                                                        fd, st.st_size, sparse,
                                                        lambda: job.request in self.cancelled))
        finally:
            os.close(fd)

    async def _send_job_body(self, job: ev.GetRequested, started: float, nbytes: int,
                             result: str, level: int,
                             body: Callable[[], Awaitable[object]]) -> None:
        """Send a GET's body; cancellation or a read error ends it with ERROR."""
        c = self.connection
        try:
            await body()
        except TransferCancelled:
            c.refuse(job.request, "GET", job.path, m.ErrorCode.CANCELLED,
                     "cancelled by the client", started)
        except StorageError as exc:
            c.refuse(job.request, "GET", job.path, m.ErrorCode.IO_ERROR, str(exc), started)
        else:
            c.files += 1
            c.log_file("GET", job.path, nbytes, started, result, level)
        finally:
            self.cancelled.discard(job.request)

    async def send_listing(self, job: ev.ListRequested) -> None:
        """ENTRIES frames as the walk goes: a thread of this listing's own reads
        LISTING_CHUNK entries at a time, the next chunk while this one is encoded (its
        system calls let go of the GIL), and a chunk is read only once the one before it
        has left, so a huge tree or a client that stops reading holds at most two chunks
        (and the socket buffers)."""
        c = self.connection
        walk = c.root.list(job.path, recursive=job.recursive,
                           limit=c.config.max_list_entries)
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
                    c.session.refuse(job.request, code_for(exc), str(exc))
                    return
                if len(chunk) == LISTING_CHUNK:
                    ahead = loop.run_in_executor(lane, _next_entries, walk, LISTING_CHUNK)
                for entry in chunk:
                    entry_size = codec.entry_wire_size(entry)
                    if (size + entry_size > m.MAX_CONTROL_BODY
                            or len(batch) == m.MAX_ENTRIES_PER_FRAME):
                        c.session.entries(job.request, batch, last=False)
                        batch, size = [], 2
                    batch.append(entry)
                    size += entry_size
                if len(chunk) < LISTING_CHUNK:
                    break
                await c.flush()  # waits while the client does not read
        finally:
            ahead.cancel()  # a chunk nobody will take (and an error nobody will see)
            lane.submit(walk.close)
            lane.shutdown(wait=False)
        c.session.entries(job.request, batch, last=True)

    # -- resume (docs/protocol.md §5.1) ---------------------------------------------------

    async def send_prefix(self, job: ev.PartialRequested) -> None:
        """PARTIAL: the length of what is kept towards the path, and its digest."""
        c = self.connection
        feature = c.session.digest_feature
        try:
            found = await self._opened(c.root.open_partial, job.path)
        except StorageError as exc:
            code = m.ErrorCode.BUSY if exc.errno == errno.EAGAIN else code_for(exc)
            c.refuse(job.request, "PARTIAL", job.path, code, str(exc))
            return
        length, hasher = 0, None
        if found is not None:
            fd, st = found
            try:
                if time.time() - st.st_mtime_ns / 1e9 <= c.config.partial_keep_s:
                    hasher = await start_prefix_hash(fd, st.st_size, feature)
                    length = st.st_size
            finally:
                os.close(fd)
        if hasher is None:
            length, hasher = 0, digests.new_hasher(feature)
        c.session.prefix(job.request, length, hasher.digest())
        log.debug("%s: PARTIAL '%s': %s kept", c.peer, job.path, format_bytes(length))

    async def _send_tail(self, job: ev.GetRequested) -> bool:
        """GET with a prefix digest: if our first ``offset`` bytes have that digest, send
        the rest (True); otherwise False, and the whole file goes as for a plain GET."""
        assert job.prefix_digest is not None
        if job.request in self.cancelled:
            return False
        c = self.connection
        started = time.monotonic()
        try:
            fd, st = await self._open_read(job.path)
        except StorageError:
            return False  # the plain path refuses it with the same error
        try:
            hasher = None
            if job.offset <= st.st_size:
                hasher = await start_prefix_hash(fd, job.offset, c.session.digest_feature)
            if hasher is None or hasher.digest() != job.prefix_digest:
                log.info("%s: GET '%s': the client's %s differ from this file; sending all "
                         "of it", c.peer, job.path, format_bytes(job.offset))
                return False
            if not c.within_budget(job.request, "GET", job.path, st.st_size - job.offset):
                return True
            c.session.resumed_file_header(job.request, st.st_size, st.st_mode & 0o7777,
                                          st.st_mtime_ns)
            prefix = hasher
            await self._send_job_body(job, started, st.st_size - job.offset,
                                      f"ok (resumed at byte {job.offset})", logging.INFO,
                                      lambda: send_tail(c.session, c.stream, job.request, fd,
                                                        job.offset, st.st_size, prefix,
                                                        lambda: job.request in self.cancelled))
        finally:
            os.close(fd)
        return True


def _next_entries(walk: Iterator[Entry], count: int) -> list[Entry]:
    return list(itertools.islice(walk, count))
