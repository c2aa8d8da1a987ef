"""Per-file digests: BLAKE3 (preferred) or SHA-256, both 32 bytes."""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from collections.abc import Callable
from typing import Protocol

from sockferry.ferry.messages import Feature

__all__ = ["Feature", "Follower", "Hasher", "digest_of", "hash_fd", "hash_range", "hasher_of",
           "name_of", "new_hasher", "update_zeros"]

HASH_CHUNK = 1024 * 1024
FOLLOW_CHUNK = 8 * 1024 * 1024  # a Follower hashes this much between checks for cancel()
ZERO_SLICE = 64 * 1024 * 1024  # a Follower checks for cancel() this often in a hole
_ZEROS = memoryview(bytes(HASH_CHUNK))


class Hasher(Protocol):
    def update(self, data: bytes | bytearray | memoryview, /) -> object: ...

    def digest(self) -> bytes: ...


def new_hasher(feature: Feature) -> Hasher:
    if feature is Feature.DIGEST_BLAKE3:
        # Imported here, not at the top: only a command that hashes loads the extension.
        import blake3  # noqa: PLC0415

        return blake3.blake3()
    return hashlib.sha256()


def digest_of(data: bytes | bytearray | memoryview, feature: Feature) -> bytes:
    """The digest of a whole small body (once per small file: kept lean)."""
    new = _CONSTRUCTORS.get(feature)
    return (new or hasher_of(feature))(data).digest()


# hasher_of's answers, once each has been asked (digest_of then makes no call of its own)
_CONSTRUCTORS: dict[Feature, Callable[[bytes | bytearray | memoryview], Hasher]] = {}


def hasher_of(feature: Feature) -> Callable[[bytes | bytearray | memoryview], Hasher]:
    """The hasher's constructor, which takes the first data: ``hasher_of(f)(data).digest()``
    is ``digest_of(data, f)``, for a loop over many small bodies to look it up once."""
    new: Callable[[bytes | bytearray | memoryview], Hasher] = hashlib.sha256
    if feature is Feature.DIGEST_BLAKE3:
        import blake3  # noqa: PLC0415 - see new_hasher

        new = blake3.blake3
    _CONSTRUCTORS[feature] = new
    return new


def name_of(feature: Feature) -> str:
    return "blake3" if feature is Feature.DIGEST_BLAKE3 else "sha256"


def update_zeros(hasher: Hasher, count: int) -> None:
    """Hash ``count`` zero bytes (a hole) without allocating them."""
    while count:
        n = min(count, HASH_CHUNK)
        hasher.update(_ZEROS[:n])
        count -= n


def hash_fd(fd: int, size: int, feature: Feature) -> bytes:
    """Digest of the first ``size`` bytes of ``fd`` (the digests --checksum compares),
    in a worker thread: both hashers release the GIL.  A file that shrank meanwhile
    gives the digest of what it still holds, which then differs."""
    hasher = new_hasher(feature)
    hash_range(hasher, fd, 0, size)
    return hasher.digest()


def hash_range(hasher: Hasher, fd: int, start: int, end: int) -> int:
    """Feed bytes ``start`` to ``end`` of ``fd`` into ``hasher`` (pread); how many there
    were (fewer than ``end - start``: the file is shorter).  A resume's kept prefix and a
    Follower's reading back are hashed with it."""
    buffer = bytearray(HASH_CHUNK)
    view = memoryview(buffer)
    offset = start
    while offset < end:
        n = os.preadv(fd, [view[: min(HASH_CHUNK, end - offset)]], offset)
        if n == 0:
            break
        hasher.update(view[:n])
        offset += n
    return offset - start


class Follower:
    """Hashes a file in a thread of its own while it is being written: where the
    receiving thread cannot hash what it writes as it goes — a resumed file whose kept
    part must be read first, or a hole too long to hash on the event loop — the digest
    is still ready moments after the last byte, not after a second pass at the end.

    The writer reports what it appended: ``data(n)`` (bytes now in the file, read back
    from the page cache) and ``hole(n)`` (zeros left unwritten).  ``result`` waits for
    everything reported and returns the digest; ``cancel`` stops early.  The thread reads
    a duplicate of the fd, so closing or aborting the file never leaves it reading a
    reused descriptor.  ``hasher`` continues a digest already fed with the first
    ``start`` bytes; without one those bytes are hashed from the file first.
    """

    def __init__(self, fd: int, feature: Feature, *, start: int = 0,
                 hasher: Hasher | None = None) -> None:
        self._fd = os.dup(fd)
        self._hasher = hasher or new_hasher(feature)
        self._offset = start if hasher is not None else 0
        self._pending: list[int] = [start] if hasher is None and start else []
        self._cond = threading.Condition()
        self._closed = False  # no more will be reported
        self._stopped = False
        self._error: OSError | None = None
        self._digest: bytes | None = None
        self._thread = threading.Thread(target=self._run, name="sockferry-hash", daemon=True)
        self._thread.start()

    def data(self, count: int) -> None:
        self._report(count)

    def hole(self, count: int) -> None:
        self._report(-count)

    def _report(self, amount: int) -> None:
        with self._cond:
            if self._pending and (self._pending[-1] > 0) == (amount > 0):
                self._pending[-1] += amount  # runs of the same kind merge
            else:
                self._pending.append(amount)
            self._cond.notify()

    def result(self) -> bytes:
        """The digest of everything reported (blocks: call it from a worker thread)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()
        if self._error is not None:
            raise self._error
        if self._digest is None:
            raise OSError(errno.ECANCELED, "hashing was cancelled")
        return self._digest

    def cancel(self) -> None:
        with self._cond:
            self._stopped = self._closed = True
            self._cond.notify()

    def stop(self) -> None:
        """Cancel, and wait for the thread to let go of its fd (at most one chunk's
        hashing): a removed file's space is free once this returns."""
        self.cancel()
        self._thread.join()

    def _next(self) -> int | None:
        with self._cond:
            while not self._pending and not self._closed and not self._stopped:
                self._cond.wait()
            if self._stopped or not self._pending:
                return None
            return self._pending.pop(0)

    def _zeros(self, count: int) -> None:
        """A hole, in slices: cancel() stops even one the sender made terabytes long."""
        while count and not self._stopped:
            n = min(count, ZERO_SLICE)
            update_zeros(self._hasher, n)
            self._offset += n
            count -= n

    def _run(self) -> None:
        try:
            while (amount := self._next()) is not None:
                if amount < 0:
                    self._zeros(-amount)
                    continue
                end = self._offset + amount
                while self._offset < end and not self._stopped:
                    step = min(end, self._offset + FOLLOW_CHUNK)
                    got = hash_range(self._hasher, self._fd, self._offset, step)
                    if got < step - self._offset:
                        raise OSError(errno.EIO, "the file being hashed shrank")
                    self._offset = step
            if not self._stopped:
                self._digest = self._hasher.digest()
        except OSError as exc:
            self._error = exc
        finally:
            os.close(self._fd)
