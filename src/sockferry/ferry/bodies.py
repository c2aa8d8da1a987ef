"""File bodies on the wire, for both roles: sending (GET on the server, PUT on the
client) and receiving into a temporary file with the digest checked before commit."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable
from typing import Protocol

from sockferry.errors import StorageError
from sockferry.ferry import digests
from sockferry.ferry.client_session import ClientSession
from sockferry.ferry.server_session import ServerSession
from sockferry.sockets import storage_error
from sockferry.storage.atomic import AtomicFile
from sockferry.storage.sparse import data_segments
from sockferry.streams import Stream

SEND_CHUNK = 16 * 1024 * 1024  # DATA frame size for large files
SMALL_FILE = 256 * 1024  # below this a body is read, hashed and sent in one sendmsg
# Small files' frames are gathered until this much waits, then leave in one sendmsg
# (the caller flushes the rest before it waits for anything).
GATHER_BYTES = 256 * 1024

Core = ServerSession | ClientSession


class TransferCancelled(Exception):
    """The other side cancelled the body being sent."""


def _finish(core: Core, request: int, digest: bytes) -> None:
    if isinstance(core, ServerSession):
        core.file_done(request, digest)
    else:
        core.done(request, digest)



class Progress(Protocol):
    """Told how far a body has got: ``count`` more bytes of the file, which were a hole
    (a run of zeros that crossed the wire as one HOLE frame, or not at all) when ``hole``
    — a progress display rates what really moved, not what was skipped."""

    def __call__(self, count: int, hole: bool = False) -> None: ...


async def send_body(core: Core, stream: Stream, request: int, fd: int, size: int,
                    sparse: bool, is_cancelled: Callable[[], bool] | None = None,
                    progress: Progress | None = None) -> bytes:
    """Send ``size`` bytes of ``fd`` as DATA (and HOLE) frames, then DONE; the digest.

    Small files are read and hashed, their frames queued in the core and sent together
    with those of other small files once ``GATHER_BYTES`` wait (the caller flushes the
    core before it waits for anything); large ones go out by ``stream.send_file``,
    which hashes each piece on its way.
    """
    if size <= SMALL_FILE and not sparse:
        digest = _send_small(core, request, fd, size)
        if core.unsent >= GATHER_BYTES:
            await stream.send(core.buffers_to_send())
        if progress:
            progress(size)
        return digest
    hasher = digests.new_hasher(core.digest_feature)
    for start, length, hole in data_segments(fd, size, sparse=sparse):
        if hole:
            core.hole(request, length)
            if length > INLINE_HOLE:  # a long run of zeros: hashed off the event loop
                await asyncio.to_thread(digests.update_zeros, hasher, length)
            else:
                digests.update_zeros(hasher, length)
            if progress:
                progress(length, hole=True)
            continue
        await _send_run(core, stream, request, fd, start, length, hasher, is_cancelled,
                        progress)
    digest = hasher.digest()
    _finish(core, request, digest)
    await stream.send(core.buffers_to_send())
    return digest


# A streamed body (docs/protocol.md §5.2) is read in pieces of this size: a pipe gives
# at most 64 KiB per read, and a frame per read would cost more than the bytes.
STREAM_CHUNK = 1024 * 1024


def _read_chunk(fd: int, hasher: digests.Hasher, shown: str) -> bytes:
    """Up to STREAM_CHUNK bytes of ``fd`` (fewer only at its end), hashed; blocking, so
    called in a worker thread."""
    parts: list[bytes] = []
    got = 0
    while got < STREAM_CHUNK:
        try:
            data = os.read(fd, STREAM_CHUNK - got)
        except OSError as exc:
            raise storage_error(exc, shown) from exc
        if not data:
            break
        parts.append(data)
        got += len(data)
    chunk = b"".join(parts)
    hasher.update(chunk)
    return chunk


def _read_aside(fd: int, hasher: digests.Hasher, shown: str) -> asyncio.Future[bytes]:
    """``_read_chunk`` in a daemon thread of its own, not the loop's executor: a read
    from a silent pipe may never return, and a failed transfer must still be able to
    end (closing a loop waits for its executor's threads)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[bytes] = loop.create_future()

    def settle(result: bytes | None, error: BaseException | None) -> None:
        if future.cancelled():
            return
        if error is not None:
            future.set_exception(error)
        else:
            assert result is not None
            future.set_result(result)

    def read() -> None:
        result: bytes | None = None
        error: BaseException | None = None
        try:
            result = _read_chunk(fd, hasher, shown)
        except BaseException as exc:
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=read, name="sockferry-stream-reader", daemon=True).start()
    return future


async def send_stream(core: ClientSession, stream: Stream, request: int, fd: int,
                      shown: str, is_cancelled: Callable[[], bool],
                      progress: Progress | None = None) -> bytes:
    """Send what ``fd`` yields until its end as the body of the streamed PUT
    ``request``, then DONE; the digest.  The next piece is read (and hashed) in a thread
    while the one before it leaves."""
    hasher = digests.new_hasher(core.digest_feature)
    reading = _read_aside(fd, hasher, shown)
    try:
        while chunk := await reading:
            reading = _read_aside(fd, hasher, shown)
            if is_cancelled():
                raise TransferCancelled
            core.data(request, chunk)
            await stream.send(core.buffers_to_send())
            if progress:
                progress(len(chunk))
    except BaseException:
        reading.cancel()  # the thread finishes its read; nothing waits for it
        raise
    digest = hasher.digest()
    core.done(request, digest)
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
                    length: int, hasher: digests.Hasher,
                    is_cancelled: Callable[[], bool] | None,
                    progress: Progress | None) -> None:
    """DATA frames for ``length`` bytes of ``fd`` from ``offset``, fed to ``hasher``."""
    end = offset + length
    while offset < end:
        if is_cancelled and is_cancelled():
            raise TransferCancelled
        n = min(SEND_CHUNK, end - offset)
        core.data_header(request, n)
        await stream.send(core.buffers_to_send())
        await stream.send_file(fd, offset, n, hasher)
        offset += n
        if progress:
            progress(n)


# Zeros hashed on the event loop at most at once (a few ms); a longer hole, whose length
# the peer chose, goes to a thread.
INLINE_HOLE = 4 * 1024 * 1024


class Sink:
    """A body being received: written to a temporary file and hashed on its way in,
    while it is in the CPU's cache.

    ``kept`` bytes at the start of ``file`` are an earlier transfer's (resume): with
    ``prefix`` (a hasher already fed with them) the digest continues it, otherwise they
    are hashed by a ``digests.Follower`` thread reading the file, which then follows
    what is written.  A long hole also hands the digest to a Follower: the zeros are
    hashed in its thread, never on the event loop.  ``deferred`` sinks (those with a
    Follower) are checked with ``verify``; the others also with ``matches``.
    """

    def __init__(self, file: AtomicFile, feature: digests.Feature, *, kept: int = 0,
                 prefix: digests.Hasher | None = None) -> None:
        self.file = file
        self.feature = feature
        self.follower: digests.Follower | None = None
        self.hasher: digests.Hasher | None = None
        if kept and prefix is None:
            self.follower = digests.Follower(file.fd, feature, start=kept)
            file.on_finish.append(self._stop_following)
        else:
            self.hasher = prefix or digests.new_hasher(feature)

    @property
    def deferred(self) -> bool:
        return self.follower is not None

    def receive(self, piece: bytes | memoryview | int) -> int:
        """Take file bytes, or an ``int``: that many zero bytes (a hole); their count."""
        if isinstance(piece, int):
            if self.follower is None and piece > INLINE_HOLE:
                self._follow_from(self.file.written)
            self.file.skip(piece)
            if self.follower is not None:
                self.follower.hole(piece)
            else:
                assert self.hasher is not None
                digests.update_zeros(self.hasher, piece)
            return piece
        self.file.write(piece)
        if self.follower is not None:
            self.follower.data(len(piece))
        else:
            assert self.hasher is not None
            self.hasher.update(piece)
        return len(piece)

    def _follow_from(self, offset: int) -> None:
        """Hand the digest so far to a Follower thread, which goes on from ``offset``
        (reading what follows back from the file), beyond MAX_FOLLOWERS if need be: a
        sink is never bound to hash a hole of the sender's choosing on the event loop."""
        self.follower = digests.Follower(self.file.fd, self.feature, start=offset,
                                         hasher=self.hasher)
        self.hasher = None
        self.file.on_finish.append(self._stop_following)

    def copied(self, count: int) -> None:
        """``count`` bytes were written into the file through its fd, and fed to
        ``hasher`` if it has one (``Stream.receive_into_file``)."""
        self.file.appended(count)
        if self.follower is not None:
            self.follower.data(count)

    def matches(self, digest: bytes) -> bool:
        assert self.hasher is not None, "a deferred sink is checked with verify()"
        return self.hasher.digest() == digest

    async def verify(self, digest: bytes) -> bool:
        """Whether everything received has ``digest``; reading it back may fail
        (``StorageError``)."""
        if self.follower is None:
            return self.matches(digest)
        try:
            return await asyncio.to_thread(self.follower.result) == digest
        except OSError as exc:
            raise StorageError(f"reading back '{self.file.shown}' failed: {exc.strerror}",
                               errno=exc.errno, path=self.file.shown) from exc

    def _stop_following(self) -> None:
        if self.follower is not None:
            # joined, not only cancelled: its fd would keep an aborted file's space taken
            # (a full disk stays full for the next upload)
            self.follower.stop()


# What is left of one DATA body for it to be copied into its file off the event loop;
# less goes through the receive buffer like any other frame.
COPY_MIN = 512 * 1024


async def receive_bodies(core: Core, stream: Stream, sink_of: Callable[[int], Sink | None],
                         moved: Callable[[int, int], None],
                         failed: Callable[[int, StorageError], None]) -> None:
    """Copy the rest of each large DATA body now arriving into its file, hashed on the
    way, off the event loop (``Stream.receive_into_file``).

    ``sink_of`` gives the request's sink (None: not ours to move); ``moved(request,
    count)`` is told of bytes now in the file, ``failed(request, error)`` of a file
    that could not take them (the request is then to be refused or given up).
    """
    while (pending := core.body_pending()) is not None:
        request, left = pending
        sink = sink_of(request)
        if sink is None or left < COPY_MIN:
            return
        taken, error = await stream.receive_into_file(sink.file.fd, left, sink.hasher)
        if taken == 0 and error is None:
            return  # this stream copies through its own hands, or the peer closed
        if taken:
            core.body_moved(request, taken)
        try:
            if error is not None:
                sink.file.abort()
                raise storage_error(error, sink.file.shown, "the partial file was removed")
            sink.copied(taken)
        except StorageError as exc:
            failed(request, exc)
        else:
            moved(request, taken)
        if taken < left:
            return


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


async def send_tail(core: Core, stream: Stream, request: int, fd: int, offset: int,
                    size: int, prefix: digests.Hasher,
                    is_cancelled: Callable[[], bool] | None = None,
                    progress: Progress | None = None) -> bytes:
    """Send bytes ``offset`` to ``size`` of ``fd`` as DATA, then DONE with the digest of
    the whole file: ``prefix`` (already fed with the first ``offset`` bytes) continued
    over the tail as it is sent."""
    if size > offset:
        await _send_run(core, stream, request, fd, offset, size - offset, prefix,
                        is_cancelled, progress)
    digest = prefix.digest()
    _finish(core, request, digest)
    await stream.send(core.buffers_to_send())
    return digest
