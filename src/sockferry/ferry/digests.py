"""Per-file digests: BLAKE3 (preferred) or SHA-256, both 32 bytes."""

from __future__ import annotations

import hashlib
import os
import threading
from typing import Protocol

from sockferry.ferry.messages import Feature

__all__ = ["Feature", "Hasher", "digest_of", "hash_fd", "hash_range", "name_of", "new_hasher",
           "update_zeros"]

HASH_CHUNK = 1024 * 1024
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
    if feature is Feature.DIGEST_BLAKE3:
        import blake3  # noqa: PLC0415 - see new_hasher; a dict lookup once loaded

        return bytes(blake3.blake3(data).digest())
    return hashlib.sha256(data).digest()


def name_of(feature: Feature) -> str:
    return "blake3" if feature is Feature.DIGEST_BLAKE3 else "sha256"


def update_zeros(hasher: Hasher, count: int) -> None:
    """Hash ``count`` zero bytes (a hole) without allocating them."""
    while count:
        n = min(count, HASH_CHUNK)
        hasher.update(_ZEROS[:n])
        count -= n


def hash_fd(fd: int, size: int, feature: Feature, stop: threading.Event | None = None,
            ) -> bytes:
    """Digest of the first ``size`` bytes of ``fd`` (pread: the offset is untouched).

    Runs in a worker thread beside sendfile; both hashers release the GIL.  A file
    that shrinks meanwhile makes the digest differ, which the receiver then reports.
    """
    hasher = new_hasher(feature)
    buffer = bytearray(HASH_CHUNK)
    view = memoryview(buffer)
    offset = 0
    while offset < size and not (stop and stop.is_set()):
        n = os.preadv(fd, [view[: min(HASH_CHUNK, size - offset)]], offset)
        if n == 0:
            break
        hasher.update(view[:n])
        offset += n
    return hasher.digest()


def hash_range(hasher: Hasher, fd: int, start: int, end: int,
               stop: threading.Event | None = None) -> int:
    """Feed bytes ``start`` to ``end`` of ``fd`` into ``hasher`` (pread); how many there were.

    Resume hashes a kept prefix with it, then continues the same hasher over the tail.
    Fewer than ``end - start`` means the file is shorter (or ``stop`` was set).
    """
    buffer = bytearray(HASH_CHUNK)
    view = memoryview(buffer)
    offset = start
    while offset < end and not (stop and stop.is_set()):
        n = os.preadv(fd, [view[: min(HASH_CHUNK, end - offset)]], offset)
        if n == 0:
            break
        hasher.update(view[:n])
        offset += n
    return offset - start
