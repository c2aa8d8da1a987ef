"""``Store``: what the servers need from a file store, as ``root.Root`` provides it today.

The method names and signatures are Root's own, so Root satisfies the protocol as it
stands (``tests/test_store_conformance.py`` holds any backend to these contracts, and
mypy checks each backend against it at the end of its module).  Every path is a client path
relative to the store's top: ``storage.names.split_client_path`` rules apply, and one
that would lead outside (``..`` past the top, an absolute path, a link out) raises
``PathRefused``.  Every other failure raises ``StorageError`` carrying the errno (ENOENT
for a missing name, EISDIR or ENOTDIR for the wrong kind, EEXIST, EAGAIN, ...).  Both
come from ``sockferry.errors``; ``PathRefused`` is a ``StorageError``.

Backends: ``root.Root`` (a local directory) and ``s3.S3Store`` (a bucket).

Writing is atomic: ``create`` returns an ``AtomicFile`` (for a remote store, a subclass
whose commit goes over the network); nothing is visible under the
name until its ``commit`` (which the servers call only once the digest was verified),
which replaces what was there whole; ``abort`` leaves no trace.  ``create`` with ``kind``
``PartialFile`` writes the partial file resume keeps instead, found again with
``open_partial``.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Generator
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from sockferry.errors import StorageError

if TYPE_CHECKING:
    from sockferry.entries import Entry
    from sockferry.storage.atomic import AtomicFile


class StoreCache(Protocol):
    """What one connection keeps of a store between its requests (``Root``: directory
    fds), told of the changes it makes so that nothing stale is used."""

    def changed(self, path: str) -> None:
        """``path`` was made or replaced (a directory, a link)."""

    def removed(self, path: str) -> None:
        """``path`` was removed."""

    def close(self) -> None:
        """The connection ends."""


@runtime_checkable
class Store(Protocol):
    """A tree of files that client paths cannot leave (see the module's docstring)."""

    # What the store can keep beyond files and directories: symbolic links (SYMLINK,
    # READLINK) and the partial files of resume.  Without them ``symlink`` and ``create``
    # of a partial file raise StorageError EOPNOTSUPP and ``open_partial`` finds none.
    keeps_links: bool
    keeps_partials: bool
    # Whether its calls wait on the network: a server then opens files for reading in a
    # worker thread (``open_read`` and ``open_partial`` of a remote store fetch the whole
    # file).
    remote: bool

    def new_cache(self) -> StoreCache:
        """A fresh cache for one connection, to hand to ``create``."""

    def close(self) -> None:
        """Let go of the store; no method may be called afterwards."""

    def statvfs(self) -> os.statvfs_result:
        """The free and total space of the file system holding the store."""

    def usage(self) -> int:
        """Bytes in the regular files of the store (apparent sizes, links not followed,
        unreadable directories skipped)."""

    def stat(self, path: str | bytes) -> Entry:
        """What ``path`` is, every link on the way (the last one too) followed while it
        stays inside.  ``StorageError`` ENOENT when it does not exist."""

    def open_read(self, path: str | bytes) -> tuple[int, os.stat_result]:
        """A blocking read fd of the regular file ``path``, at offset 0, and its stat
        (size, mode, mtime).  The caller owns the fd and reads any range of it (pread).
        A directory, FIFO or device raises ``StorageError`` EISDIR."""

    def make_dirs(self, path: str | bytes, mode: int) -> None:
        """``mkdir -p``: ``path`` and its missing parents, made with ``mode``; an existing
        directory is fine, an existing non-directory raises ``StorageError`` EEXIST."""

    def create(self, path: str | bytes, dirs: StoreCache | None = None,
               kind: type[AtomicFile] | None = None, mode: int = 0o600) -> AtomicFile:
        """Start writing ``path`` (its directory must exist): nothing appears under the
        name until the returned file's ``commit``, which replaces an existing file
        whole (or, with ``clobber=False``, refuses with ``StorageError`` EEXIST);
        ``abort`` removes what was written.  A directory or other non-regular file in
        the way raises ``StorageError`` EISDIR.  ``dirs`` (from ``new_cache``) may
        supply the directory;
        ``kind`` ``PartialFile`` writes ``path``'s partial file, which an abort keeps
        (exclusively locked while open).  ``mode`` is the file's mode while written."""

    def open_partial(self, path: str | bytes) -> tuple[int, os.stat_result] | None:
        """A read fd (shared-locked) and stat of the partial file kept towards ``path``,
        or None when there is none.  ``StorageError`` EAGAIN while a transfer is
        writing it."""

    def sweep_temporaries(self, keep_s: float, max_partial_bytes: int,
                          now: float | None = None) -> list[tuple[str, int]]:
        """Remove temporaries older than ``keep_s``, then the oldest partial files over
        ``max_partial_bytes`` in all, never one a transfer holds; (path, size) of each
        removed."""

    def symlink(self, path: str | bytes, target: str, *, clobber: bool = True) -> None:
        """Make ``path`` a symbolic link to ``target``, which must be relative and stay
        inside (else ``PathRefused``); an existing non-directory is replaced atomically
        with ``clobber``, else ``StorageError`` EEXIST; a directory raises EISDIR."""

    def readlink(self, path: str | bytes) -> str:
        """The target of the link ``path`` (not followed).  ``StorageError`` EINVAL when
        it is no link; ``PathRefused`` when its target leads outside (not revealed)."""

    def remove(self, path: str | bytes, *, directory: bool = False) -> int:
        """Remove the name ``path`` (a link itself, never what it points to): a
        non-directory, or with ``directory`` an empty directory (partial files in it
        that no transfer holds go with it).  The wrong kind raises ``StorageError``
        EISDIR or ENOTDIR, a non-empty directory ENOTEMPTY.  Returns the bytes freed."""

    def exists(self, path: str | bytes) -> bool:
        """Whether ``stat(path)`` would find something (other errors still raise)."""

    def list(self, path: str | bytes, *, recursive: bool = False,
             limit: int = 1_000_000) -> Generator[Entry, None, None]:
        """The entries below the directory ``path``, paths relative to it, sorted by
        name within each directory, temporaries and partial files hidden; links
        reported, not followed.  A file lists itself.  More than ``limit`` entries
        raise ``StorageError`` E2BIG once ``limit`` were yielded."""


def stat_finds(store: Store, path: str | bytes) -> bool:
    """``exists`` for any store: whether ``stat`` finds ``path`` (other errors raise)."""
    try:
        store.stat(path)
    except StorageError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True

