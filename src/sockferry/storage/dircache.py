"""Directory fds shared by the files written in them, and a short-lived per-connection
cache of them, so that a tree of small files costs one walk per directory."""

from __future__ import annotations

import os
import time
from typing import Protocol

from sockferry.records import mutable_record
from sockferry.storage.filesystems import lives_in_memory
from sockferry.storage.names import SAFE_PATH_CHARS, plain_name, split_client_path


class ResolvesParents(Protocol):
    """What a cache needs of its root (``root.Root``; named here so that the cache does
    not import the root that holds it)."""

    def resolve_parent(self, path: str | bytes, *, follow_last: bool = True,
                       make_parents: bool = False, dir_mode: int = 0o755) -> tuple[int, str]:
        ...

# A directory entering a DirCache is listed when it holds at most this many names, so that
# files written into it need no stat each; the names one cache keeps are capped too.
LISTED_NAMES_MAX = 128
LISTED_NAMES_PER_CACHE = 1024


class DirHandle:
    """An open directory fd shared by the files being written in it.

    It is closed once nobody uses it: neither a ``DirCache`` nor an unfinished file.
    """

    __slots__ = ("_device", "_memory_only", "cached", "fd", "users")

    def __init__(self, fd: int, *, cached: bool = False) -> None:
        self.fd = fd
        self.users = 0
        self.cached = cached
        self._device = -1
        self._memory_only: bool | None = None

    def device(self) -> int:
        """The file system (st_dev) the directory is on."""
        if self._device < 0:
            self._device = os.fstat(self.fd).st_dev
        return self._device

    def memory_only(self) -> bool:
        """True on tmpfs or ramfs: there is no disk, so nothing to flush."""
        if self._memory_only is None:
            self._memory_only = lives_in_memory(self.fd)
        return self._memory_only

    def acquire(self) -> DirHandle:
        self.users += 1
        return self

    def release(self) -> None:
        self.users -= 1
        if self.users <= 0:  # most releases leave other users: no call then
            self._close_if_unused()

    def retire(self) -> None:
        """The cache lets go; the fd lives on while files still use it."""
        self.cached = False
        self._close_if_unused()

    def _close_if_unused(self) -> None:
        if self.users <= 0 and not self.cached and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@mutable_record
class _Cached:
    handle: DirHandle
    at: float
    # The directory's names when it was cached (True: a regular file), or None where it
    # was too big to list or has changed since: then each name is stat'ed.
    names: dict[str, bool] | None = None


def _listing(fd: int, room: int) -> dict[str, bool] | None:
    """The names in directory ``fd`` and whether each is a regular file (from the
    directory entries, no stat each), or None past ``room`` names or on an error."""
    names: dict[str, bool] = {}
    try:
        with os.scandir(fd) as entries:
            for entry in entries:
                if len(names) >= room:
                    return None
                names[entry.name] = entry.is_file(follow_symlinks=False)
    except OSError:
        return None
    return names


class DirCache:
    """Directories recently resolved for one connection, so that a tree of small files
    costs one walk per directory instead of one per file.

    An entry is reused for at most ``ttl_s``: a cached fd keeps naming the directory it
    was opened on even if that is moved afterwards, so its life stays as short as that of
    the fd an upload in progress holds anyway.  Paths with ``..`` are never cached.

    A small directory is listed as it enters, so a file written into it needs no stat
    to learn whether its name is taken by a directory or a link.  The listing may be up to
    ``ttl_s`` old; that is safe because the rename that publishes a file never follows a
    link and fails on a directory, whatever appeared there meanwhile.
    """

    def __init__(self, root: ResolvesParents, *, limit: int = 64, ttl_s: float = 1.0,
                 ) -> None:
        self.root = root
        self.limit = limit
        self.ttl_s = ttl_s
        self._entries: dict[str, _Cached] = {}
        self._listed = 0  # names held in listings, at most LISTED_NAMES_PER_CACHE

    def parent(self, path: str | bytes) -> tuple[DirHandle, str, bool] | None:
        """The directory holding ``path``'s last name (links in it followed), that name
        unresolved, and True when the directory's listing shows the name absent or a
        regular file; None where the cache does not apply."""
        if isinstance(path, str):
            head, _, name = path.rpartition("/")
            cached = self._entries.get(head)
            if (cached is not None and plain_name(name) and len(path) <= SAFE_PATH_CHARS
                    and time.monotonic() - cached.at <= self.ttl_s):
                # the head was checked when it was cached
                names = cached.names
                return cached.handle, name, names is not None and names.get(name, True)
        parts = split_client_path(path)
        if not parts or ".." in parts:
            return None
        key = "/".join(parts[:-1])
        now = time.monotonic()
        cached = self._entries.pop(key, None)
        if cached is not None and now - cached.at > self.ttl_s:
            self._drop(cached)
            cached = None
        if cached is None:
            fd, _name = self.root.resolve_parent(path, follow_last=False)
            room = min(LISTED_NAMES_MAX, LISTED_NAMES_PER_CACHE - self._listed)
            names = _listing(fd, room) if room > 0 else None
            self._listed += len(names) if names else 0
            cached = _Cached(DirHandle(fd, cached=True), now, names)
            while len(self._entries) >= self.limit:  # the oldest goes first
                self._drop(self._entries.pop(next(iter(self._entries))))
        self._entries[key] = cached
        names = cached.names
        return cached.handle, parts[-1], names is not None and names.get(parts[-1], True)

    def changed(self, path: str) -> None:
        """Directories were made along ``path``: listings it passes through are stale."""
        parts = split_client_path(path)
        for depth in range(len(parts)):
            cached = self._entries.get("/".join(parts[:depth]))
            if cached is not None and cached.names is not None:
                self._listed -= len(cached.names)
                cached.names = None

    def removed(self, path: str) -> None:
        """``path`` was removed: listings along it are stale, and a cached fd of it, or
        of a directory below it, names a directory that is gone."""
        self.changed(path)
        key = "/".join(split_client_path(path))
        for gone in [k for k in self._entries if k == key or k.startswith(key + "/")]:
            self._drop(self._entries.pop(gone))

    def _drop(self, cached: _Cached) -> None:
        if cached.names:
            self._listed -= len(cached.names)
        cached.handle.retire()

    def close(self) -> None:
        for cached in self._entries.values():
            self._drop(cached)
        self._entries.clear()

