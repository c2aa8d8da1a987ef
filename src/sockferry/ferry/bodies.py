"""File bodies on the wire, for both roles: sending (GET on the server, PUT on the
client) and receiving into a temporary file with the digest checked before commit."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable

from sockferry.errors import StorageError
from sockferry.ferry import digests
from sockferry.ferry import session as s
from sockferry.storage import AtomicFile, PartialFile, data_segments
from sockferry.streams import Stream

SEND_CHUNK = 4 * 1024 * 1024  # DATA frame size for large files (one sendfile each)
SMALL_FILE = 256 * 1024  # below this a body is read, hashed and sent in one sendmsg
# Small files' frames are gathered until this much waits, then leave in one sendmsg
# (the caller flushes the rest before it waits for anything).
GATHER_BYTES = 256 * 1024

Core = s.ServerSession | s.ClientSession


class TransferCancelled(Exception):
    """The other side cancelled the body being sent."""


def _finish(core: Core, request: int, digest: bytes) -> None:
    if isinstance(core, s.ServerSession):
        core.file_done(request, digest)
    else:
        core.done(request, digest)


async def send_body(core: Core, stream: Stream, request: int, fd: int, size: int,
                    sparse: bool, is_cancelled: Callable[[], bool] | None = None,
                    progress: Callable[[int], None] | None = None) -> bytes:
    """Send ``size`` bytes of ``fd`` as DATA (and HOLE) frames, then DONE; the digest.

    Small files are read and hashed, their frames queued in the core and sent together
    with those of other small files once ``GATHER_BYTES`` wait (the caller flushes the
    core before it waits for anything); large ones go out with sendfile while a worker
    thread hashes the same bytes.
    """
    if size <= SMALL_FILE and not sparse:
        digest = _send_small(core, request, fd, size)
        if core.unsent >= GATHER_BYTES:
            await stream.send(core.buffers_to_send())
        if progress:
            progress(size)
        return digest
    stop = threading.Event()
    hashing = asyncio.ensure_future(
        asyncio.to_thread(digests.hash_fd, fd, size, core.digest_feature, stop))
    try:
        for offset, length, hole in data_segments(fd, size, sparse=sparse):
            if hole:
                core.hole(request, length)
            else:
                await _send_run(core, stream, request, fd, offset, length, is_cancelled,
                                progress)
                continue
            if progress:
                progress(length)
        digest = await hashing
    except BaseException:
        stop.set()
        with contextlib.suppress(BaseException):
            await asyncio.shield(hashing)  # never close the fd under the hashing thread
        raise
    _finish(core, request, digest)
    await stream.send(core.buffers_to_send())
    return digest


def read_whole(fd: int, size: int) -> bytes:
    """The ``size`` bytes of a small file, read at once."""
    data = os.pread(fd, size, 0) if size else b""
    if len(data) != size:
        raise StorageError("the file shrank while it was being sent")
    return data


def _send_small(core: Core, request: int, fd: int, size: int) -> bytes:
    data = read_whole(fd, size)
    if data:
        core.data(request, data)
    digest = digests.digest_of(data, core.digest_feature)
    _finish(core, request, digest)
    return digest


async def _send_run(core: Core, stream: Stream, request: int, fd: int, offset: int,
                    length: int, is_cancelled: Callable[[], bool] | None,
                    progress: Callable[[int], None] | None) -> None:
    end = offset + length
    while offset < end:
        if is_cancelled and is_cancelled():
            raise TransferCancelled
        n = min(SEND_CHUNK, end - offset)
        core.data_header(request, n)
        await stream.send(core.buffers_to_send())
        await stream.sendfile(fd, offset, n)
        offset += n
        if progress:
            progress(n)


class Sink:
    """A body being received: written to a temporary file and hashed as it comes."""

    def __init__(self, file: AtomicFile, feature: digests.Feature) -> None:
        self.file = file
        self.hasher = digests.new_hasher(feature)

    def receive(self, piece: bytes | memoryview | int) -> int:
        """Take file bytes, or an ``int``: that many zero bytes (a hole); their count."""
        if isinstance(piece, int):
            self.file.skip(piece)
            digests.update_zeros(self.hasher, piece)
            return piece
        self.file.write(piece)
        self.hasher.update(piece)
        return len(piece)

    def matches(self, digest: bytes) -> bool:
        return self.hasher.digest() == digest


# ---- resume (docs/protocol.md §5.1) ---------------------------------------------------


def start_prefix_hash(fd: int, length: int, feature: digests.Feature,
                      ) -> asyncio.Future[digests.Hasher | None]:
    """A hasher fed with the first ``length`` bytes of ``fd`` (None if it is shorter),
    from a worker thread.  The thread reads a duplicate of ``fd``, taken here, so the
    caller may close ``fd`` whenever it likes."""
    own = os.dup(fd)

    def run() -> digests.Hasher | None:
        hasher = digests.new_hasher(feature)
        try:
            got = digests.hash_range(hasher, own, 0, length)
        finally:
            os.close(own)
        return hasher if got == length else None

    return asyncio.ensure_future(asyncio.to_thread(run))


def _continue_hash(hasher: digests.Hasher, fd: int, start: int, end: int,
                   stop: threading.Event | None = None) -> Callable[[], bytes]:
    """A worker-thread job: ``hasher`` continued over bytes ``start``..``end`` of ``fd``
    (a duplicate taken now), then its digest."""
    own = os.dup(fd)

    def run() -> bytes:
        try:
            if os.fstat(own).st_size < end:
                os.ftruncate(own, end)  # a trailing hole not yet given its size
            digests.hash_range(hasher, own, start, end, stop)
        finally:
            os.close(own)
        return hasher.digest()

    return run


async def send_tail(core: Core, stream: Stream, request: int, fd: int, offset: int,
                    size: int, prefix: digests.Hasher,
                    is_cancelled: Callable[[], bool] | None = None,
                    progress: Callable[[int], None] | None = None) -> bytes:
    """Send bytes ``offset`` to ``size`` of ``fd`` as DATA, then DONE with the digest of
    the whole file: ``prefix`` (already fed with the first ``offset`` bytes) continued
    over the tail in a worker thread while sendfile sends it."""
    stop = threading.Event()
    own = os.dup(fd)

    def hash_tail() -> bytes:
        try:
            digests.hash_range(prefix, own, offset, size, stop)
        finally:
            os.close(own)
        return prefix.digest()

    hashing = asyncio.ensure_future(asyncio.to_thread(hash_tail))
    try:
        if size > offset:
            await _send_run(core, stream, request, fd, offset, size - offset, is_cancelled,
                            progress)
        digest = await hashing
    except BaseException:
        stop.set()
        with contextlib.suppress(BaseException):
            await asyncio.shield(hashing)
        raise
    _finish(core, request, digest)
    await stream.send(core.buffers_to_send())
    return digest


class ResumedSink(Sink):
    """The tail of a resumed body, appended to a kept partial file.

    The digest covers the whole file: the kept prefix is hashed in a worker thread
    (``prefix``, started by the caller) while the tail arrives; ``verify`` then continues
    that hasher over the tail as written to disk.
    """

    def __init__(self, file: PartialFile, feature: digests.Feature, offset: int,
                 prefix: asyncio.Future[digests.Hasher | None]) -> None:
        super().__init__(file, feature)
        self.partial = file
        self.offset = offset
        self.prefix = prefix

    def receive(self, piece: bytes | memoryview | int) -> int:
        if isinstance(piece, int):
            self.file.skip(piece)
            return piece
        self.file.write(piece)
        return len(piece)

    def matches(self, digest: bytes) -> bool:
        raise TypeError("a resumed body is checked with verify()")

    async def verify(self, digest: bytes) -> bool:
        """Whether the whole file (kept prefix, then tail) has ``digest``."""
        hasher = await self.prefix
        if hasher is None:
            return False
        job = _continue_hash(hasher, self.file.fd, self.offset, self.file.written)
        return await asyncio.to_thread(job) == digest
