"""Files on disk: a root-confined sandbox and writes that are never seen half done.

``Root`` resolves every client path beneath one directory the way Linux's
``openat2(RESOLVE_BENEATH)`` would, with one directory file descriptor per step:
``..`` may not climb above the root, absolute paths and NUL bytes are refused, and
symbolic links are followed by hand, only while they stay inside.  Nothing is opened by
name from the top, so a link swapped in during a walk cannot lead outside.

``AtomicFile`` writes under a temporary name in the target directory, then fsyncs and
renames; aborting removes the temporary.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import itertools
import operator
import os
import secrets
import stat
import sys
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from enum import Enum
from typing import TYPE_CHECKING

from sockferry.entries import MAX_NAME_BYTES, MAX_PATH_BYTES, Entry, Kind
from sockferry.errors import PathRefused, StorageError
from sockferry.records import mutable_record
from sockferry.sockets import storage_error

if TYPE_CHECKING:
    import ctypes

# Components of one path: real trees are far shallower; a deeper one costs a directory
# walk per request and trees other tools cannot handle (PATH_MAX).
MAX_PATH_DEPTH = 256
# Symbolic links followed while resolving one path (Linux's own limit is 40).
MAX_SYMLINK_HOPS = 40
# Temporaries carry this prefix and suffix; clients may not name such files.
TEMP_PREFIX = ".sockferry-"
TEMP_SUFFIX = ".part"
# Partial files of resumable transfers: named after their target (docs/protocol.md §5.1).
PARTIAL_PREFIX = TEMP_PREFIX + "resume-"
PARTIAL_LABEL = b"sockferry partial v1\0"
# Written bytes between two requests for early writeback (see AtomicFile.write).
WRITEBACK_STEP = 8 * 1024 * 1024
PERMISSION_BITS = 0o777
DEFAULT_UMASK = 0o022
# A directory entering a DirCache is listed when it holds at most this many names, so that
# files written into it need no stat each; the names one cache keeps are capped too.
LISTED_NAMES_MAX = 128
LISTED_NAMES_PER_CACHE = 1024

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def capped_mode(mode: int, umask: int) -> int:
    """Permission bits only (never setuid, setgid or sticky), capped by ``umask``."""
    return mode & PERMISSION_BITS & ~umask


def is_temporary_name(name: str) -> bool:
    return name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)


def split_client_path(path: str | bytes) -> list[str]:
    """Check a path that came off the wire and split it into components.

    Refuses NUL bytes, absolute paths, invalid UTF-8, over-long names and reserved
    temporary names.  ``..`` stays in the list; ``Root`` resolves it against real
    directories so that a symbolic link cannot smuggle an escape past a textual check.
    """
    raw = path if isinstance(path, bytes) else path.encode("utf-8", "surrogateescape")
    if b"\0" in raw or len(raw) > MAX_PATH_BYTES or raw.startswith(b"/"):
        _refuse_path(raw)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        shown = raw.decode("utf-8", "backslashreplace")
        raise PathRefused(f"path '{shown}' is not valid UTF-8", path=shown) from None
    parts = [p for p in text.split("/") if p and p != "."]
    if len(parts) > MAX_PATH_DEPTH:
        raise PathRefused(f"path of {len(parts)} components is deeper than "
                          f"{MAX_PATH_DEPTH}", path=text[:64] + "…")
    for part in parts:
        if len(part) > MAX_NAME_BYTES // 4 and len(part.encode()) > MAX_NAME_BYTES:
            raise PathRefused(f"name '{part[:32]}…' is longer than {MAX_NAME_BYTES} bytes",
                              path=text)
        if part.startswith(TEMP_PREFIX) and part.endswith(TEMP_SUFFIX):
            raise PathRefused(f"'{part}' is a reserved temporary name", path=text)
    return parts


# Paths of up to this many characters are within MAX_PATH_BYTES however they encode.
_SAFE_PATH_CHARS = MAX_PATH_BYTES // 4


def _plain_name(name: str) -> bool:
    """One path component that ``split_client_path`` would pass unchanged."""
    return (name not in ("", ".", "..") and "\0" not in name
            and (len(name) <= MAX_NAME_BYTES // 4 or len(name.encode()) <= MAX_NAME_BYTES)
            and not (name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)))


def link_target_problem(target: str, depth: int) -> str | None:
    """Why a symbolic link whose directory is ``depth`` levels below a root may not
    point to ``target`` (None: it may).  A target must be relative, its ``..`` all at
    its start and no more of them than ``depth``, then plain names: a ``..`` after a
    name would be resolved against wherever that name (perhaps a link) leads, which no
    textual check can know.  So every link made this way stays inside the root, and so
    does any chain of them."""
    raw = target.encode("utf-8", "surrogateescape")
    if not raw or b"\0" in raw or len(raw) > MAX_PATH_BYTES:
        return "an empty, over-long or NUL-holding link target"
    if raw.startswith(b"/"):
        return f"the absolute link target '{target}'"
    parts = [p for p in target.split("/") if p not in ("", ".")]
    ups = 0
    while ups < len(parts) and parts[ups] == "..":
        ups += 1
    if ".." in parts[ups:]:
        return f"the link target '{target}' climbs after a name"
    if ups > depth:
        return f"the link target '{target}' leads outside the root"
    if any(len(p.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES for p in parts):
        return f"the link target '{target[:32]}…' has a name over {MAX_NAME_BYTES} bytes"
    return None


def _refuse_path(raw: bytes) -> None:
    shown = raw.decode("utf-8", "backslashreplace")
    if b"\0" in raw:
        raise PathRefused(f"path '{shown}' contains a NUL byte", path=shown)
    if len(raw) > MAX_PATH_BYTES:
        raise PathRefused(f"path of {len(raw)} bytes is longer than {MAX_PATH_BYTES}",
                          path=shown[:64] + "…")
    raise PathRefused(f"absolute path '{shown}' refused — paths are relative to the "
                      "server's root", path=shown)


class Root:
    """A directory that client paths cannot leave."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        try:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise storage_error(exc, self.path) from exc

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def statvfs(self) -> os.statvfs_result:
        """The root's file system, through the open descriptor (works after a server
        dropped its privileges, whatever the permissions above the root)."""
        return os.fstatvfs(self._fd)

    def usage(self) -> int:
        """Bytes in the regular files under the root (apparent sizes, links not followed,
        unreadable directories skipped): what ``serve --quota`` counts at start."""
        total = 0
        for _directory, _dirs, files, dir_fd in os.fwalk(".", dir_fd=self._fd):
            for name in files:
                with contextlib.suppress(OSError):
                    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                    if stat.S_ISREG(st.st_mode):
                        total += st.st_size
        return total

    def __enter__(self) -> Root:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- resolution ---------------------------------------------------------------------

    def _refuse_escape(self, shown: str) -> PathRefused:
        return PathRefused(f"'{shown}' leads outside the server's root", path=shown)

    def resolve_parent(self, path: str | bytes, *, follow_last: bool = True,
                       make_parents: bool = False, dir_mode: int = 0o755) -> tuple[int, str]:
        """An open fd of the directory holding ``path``'s last component, and that name.

        The caller owns (and must close) the returned fd.  ``name`` is ``""`` when the
        path resolves to the root itself.
        """
        shown = path.decode("utf-8", "backslashreplace") if isinstance(path, bytes) else path
        pending = split_client_path(path)
        try:
            stack = [os.dup(self._fd)]
        except OSError as exc:  # EMFILE: out of descriptors
            raise storage_error(exc, shown) from exc
        try:
            name = self._walk_to_parent(stack, pending, shown, follow_last=follow_last,
                                        make_parents=make_parents, dir_mode=dir_mode)
        except OSError as exc:  # a readlink that failed otherwise than "not a link"
            for fd in stack:
                os.close(fd)
            raise storage_error(exc, shown) from exc
        except BaseException:
            for fd in stack:
                os.close(fd)
            raise
        for fd in stack[:-1]:
            os.close(fd)
        return stack[-1], name

    def _walk_to_parent(self, stack: list[int], pending: list[str], shown: str, *,
                        follow_last: bool, make_parents: bool, dir_mode: int) -> str:
        """Descend from ``stack[-1]``, pushing one fd per directory; return the last name."""
        hops = 0
        while pending:
            name = pending.pop(0)
            if name == "..":
                if len(stack) == 1:
                    raise self._refuse_escape(shown)
                os.close(stack.pop())
                continue
            if not pending and not follow_last:
                return name
            link = self._readlink(stack[-1], name)
            if link is not None:
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise StorageError(f"too many symbolic links in '{shown}'",
                                       errno=errno.ELOOP, path=shown)
                if link.startswith("/"):
                    raise self._refuse_escape(shown)
                pending[:0] = [p for p in link.split("/") if p not in ("", ".")]
                continue
            if not pending:
                return name
            stack.append(self._open_dir(stack[-1], name, shown, make_parents, dir_mode))
        return ""

    @staticmethod
    def _readlink(dir_fd: int, name: str) -> str | None:
        try:
            return os.readlink(name, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOENT):  # not a link, or absent
                return None
            raise

    def _open_dir(self, dir_fd: int, name: str, shown: str, create: bool, mode: int) -> int:
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            if not create:
                raise StorageError(f"directory '{name}' in '{shown}' does not exist",
                                   errno=errno.ENOENT, path=shown) from None
        except OSError as exc:
            raise storage_error(exc, shown) from exc
        try:
            os.mkdir(name, mode, dir_fd=dir_fd)
        except FileExistsError:
            pass
        except OSError as exc:
            raise storage_error(exc, shown) from exc
        return self._open_dir(dir_fd, name, shown, False, mode)

    @contextlib.contextmanager
    def parent(self, path: str | bytes, **options: bool | int) -> Iterator[tuple[int, str]]:
        fd, name = self.resolve_parent(path, **options)  # type: ignore[arg-type]
        try:
            yield fd, name
        finally:
            os.close(fd)

    # -- operations ---------------------------------------------------------------------

    def stat(self, path: str | bytes) -> Entry:
        shown = _shown(path)
        with self.parent(path) as (dir_fd, name):
            try:
                st = os.stat(name or ".", dir_fd=dir_fd, follow_symlinks=False)
            except OSError as exc:
                raise storage_error(exc, shown) from exc
        return Entry.from_stat(shown, st)

    def open_read(self, path: str | bytes) -> tuple[int, os.stat_result]:
        """An fd of a regular file inside the root; directories and devices are refused."""
        shown = _shown(path)
        with self.parent(path) as (dir_fd, name):
            try:
                # O_NONBLOCK: opening a FIFO must not hang the server; O_NOFOLLOW because
                # resolve_parent already followed every link that stays inside.
                fd = os.open(name or ".", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
                             | os.O_NONBLOCK, dir_fd=dir_fd)
            except OSError as exc:
                raise storage_error(exc, shown) from exc
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            what = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise StorageError(f"'{shown}' is {what}", errno=errno.EISDIR, path=shown)
        os.set_blocking(fd, True)
        return fd, st

    def make_dirs(self, path: str | bytes, mode: int) -> None:
        """``mkdir -p`` inside the root; an existing directory is fine."""
        shown = _shown(path)
        with self.parent(path, make_parents=True, dir_mode=mode) as (dir_fd, name):
            if not name:
                return
            try:
                os.mkdir(name, mode, dir_fd=dir_fd)
            except FileExistsError:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    raise StorageError(f"'{shown}' exists and is not a directory",
                                       errno=errno.EEXIST, path=shown) from None
            except OSError as exc:
                raise storage_error(exc, shown) from exc

    def create(self, path: str | bytes, dirs: DirCache | None = None,
               kind: type[AtomicFile] | None = None, mode: int = 0o600) -> AtomicFile:
        """Start writing ``path``; the parent directory must exist.  With ``dirs`` the
        parent comes from that cache when it can; ``kind`` PartialFile writes under the
        target's partial name (resume).  ``mode`` is the temporary's mode from the start
        (the final mode, for a file written whole at once)."""
        shown = _shown(path)
        found = dirs.parent(path) if dirs is not None else None
        if found is not None:
            handle, name, listed = found
            if listed:  # absent or a regular file when the directory was listed
                return self._start(handle, name, shown, None, kind, mode)
            st = self._existing(handle.fd, name, shown)
            if st is None or not stat.S_ISLNK(st.st_mode):
                return self._start(handle, name, shown, st, kind, mode)
        dir_fd, name = self.resolve_parent(path)
        handle = DirHandle(dir_fd)
        if not name:
            handle.retire()
            raise StorageError(f"'{shown}' is a directory", errno=errno.EISDIR, path=shown)
        try:
            st = self._existing(dir_fd, name, shown)
        except StorageError:
            handle.retire()
            raise
        return self._start(handle, name, shown, st, kind, mode)

    @staticmethod
    def _existing(dir_fd: int, name: str, shown: str) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise storage_error(exc, shown) from exc

    @staticmethod
    def _start(handle: DirHandle, name: str, shown: str, st: os.stat_result | None,
               kind: type[AtomicFile] | None, mode: int) -> AtomicFile:
        if st is not None and not stat.S_ISREG(st.st_mode):
            handle.acquire().release()  # closes a handle nobody else holds
            what = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise StorageError(f"'{shown}' exists and is {what}", errno=errno.EISDIR,
                               path=shown)
        if kind is not None:
            return kind(handle, name, shown)
        return AtomicFile(handle, name, shown, mode)

    def open_partial(self, path: str | bytes) -> tuple[int, os.stat_result] | None:
        """A read fd of the partial file kept towards ``path`` (shared-locked), or None.

        Raises ``StorageError`` with EAGAIN while a transfer is writing it."""
        shown = _shown(path)
        with self.parent(path) as (dir_fd, name):
            if not name:
                raise StorageError(f"'{shown}' is a directory", errno=errno.EISDIR,
                                   path=shown)
            try:
                fd = os.open(partial_name(name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
                             | os.O_NONBLOCK, dir_fd=dir_fd)
            except FileNotFoundError:
                return None
            except OSError as exc:
                raise storage_error(exc, shown) from exc
        st = os.fstat(fd)
        try:
            if not stat.S_ISREG(st.st_mode):
                raise StorageError(f"the partial file of '{shown}' is not a regular file",
                                   errno=errno.EEXIST, path=shown)
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                raise _busy(shown) from None
        except BaseException:
            os.close(fd)
            raise
        os.set_blocking(fd, True)
        return fd, st

    def sweep_temporaries(self, keep_s: float, max_partial_bytes: int,
                          now: float | None = None) -> list[tuple[str, int]]:
        """Remove expired temporaries, then the oldest partials over the budget.

        Walks the root without following links; a file some transfer holds locked is
        never removed.  Returns (path, size) of what was removed."""
        now = time.time() if now is None else now
        removed: list[tuple[str, int]] = []
        kept: list[tuple[int, int, str, str]] = []  # mtime_ns, size, directory, name
        for directory, name, dir_fd, st in self._temporaries():
            if now - st.st_mtime_ns / 1e9 > keep_s:
                if _unlink_unlocked(dir_fd, name, st):
                    removed.append((os.path.normpath(os.path.join(directory, name)),
                                    st.st_size))
            elif name.startswith(PARTIAL_PREFIX):
                kept.append((st.st_mtime_ns, st.st_size, directory, name))
        total = sum(size for _, size, _, _ in kept)
        over: set[tuple[str, str]] = set()
        for _mtime, size, directory, name in sorted(kept):
            if total <= max_partial_bytes:
                break
            over.add((directory, name))
            total -= size
        if over:
            for directory, name, dir_fd, st in self._temporaries():
                if (directory, name) in over and _unlink_unlocked(dir_fd, name, st):
                    removed.append((os.path.normpath(os.path.join(directory, name)),
                                    st.st_size))
        return removed

    def _temporaries(self) -> Iterator[tuple[str, str, int, os.stat_result]]:
        """(directory, name, directory fd, stat) of every regular temporary file."""
        for directory, _dirs, files, dir_fd in os.fwalk(".", dir_fd=self._fd):
            for name in files:
                if not is_temporary_name(name):
                    continue
                try:
                    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    yield directory, name, dir_fd, st

    def _depth_of(self, dir_fd: int, shown: str) -> int:
        """How many levels the directory ``dir_fd`` really is below the root (walking
        ``..`` up to it, whatever links led there)."""
        top = os.fstat(self._fd)
        here = os.dup(dir_fd)
        try:
            for depth in range(MAX_PATH_DEPTH + 2):
                st = os.fstat(here)
                if (st.st_dev, st.st_ino) == (top.st_dev, top.st_ino):
                    return depth
                up = os.open("..", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=here)
                os.close(here)
                here = up
        finally:
            os.close(here)
        raise self._refuse_escape(shown)

    def symlink(self, path: str | bytes, target: str, *, clobber: bool = True) -> None:
        """Make ``path`` a symbolic link to ``target``, which must stay inside the root
        (``link_target_problem``); an existing non-directory is replaced atomically
        (``clobber``) or refused."""
        shown = _shown(path)
        with self.parent(path, follow_last=False) as (dir_fd, name):
            if not name:
                raise PathRefused("the root itself cannot become a link", path=shown)
            problem = link_target_problem(target, self._depth_of(dir_fd, shown))
            if problem is not None:
                raise PathRefused(f"'{shown}': {problem} is refused", path=shown)
            try:
                if not clobber:
                    os.symlink(target, name, dir_fd=dir_fd)  # EEXIST: never replaces
                    return
                existing = self._existing(dir_fd, name, shown)
                if existing is not None and stat.S_ISDIR(existing.st_mode):
                    raise StorageError(f"'{shown}' is a directory", errno=errno.EISDIR,
                                       path=shown)
                temporary = _temporary_name()
                os.symlink(target, temporary, dir_fd=dir_fd)
                try:
                    os.rename(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(temporary, dir_fd=dir_fd)
                    raise
            except OSError as exc:
                raise storage_error(exc, shown) from exc

    def readlink(self, path: str | bytes) -> str:
        """Where the link ``path`` (itself, not followed) points, if that stays inside
        the root; a target that does not is not revealed."""
        shown = _shown(path)
        with self.parent(path, follow_last=False) as (dir_fd, name):
            try:
                target = os.readlink(name or ".", dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno == errno.EINVAL:
                    raise StorageError(f"'{shown}' is not a symbolic link", errno=exc.errno,
                                       path=shown) from exc
                raise storage_error(exc, shown) from exc
            problem = link_target_problem(target, self._depth_of(dir_fd, shown))
        if problem is not None:
            raise PathRefused(f"'{shown}' points outside the server's root", path=shown)
        return target

    def remove(self, path: str | bytes, *, directory: bool = False) -> int:
        """Remove one name inside the root, never what a link points to: a non-directory
        (a link itself), or with ``directory`` an empty directory — partial files of
        interrupted resumable uploads in it go with it unless a transfer is writing
        them.  Returns the bytes freed (a regular file's size, for --quota)."""
        shown = _shown(path)
        with self.parent(path, follow_last=False) as (dir_fd, name):
            if not name:
                raise PathRefused("the root itself cannot be removed", path=shown)
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                is_directory = stat.S_ISDIR(st.st_mode)
                if is_directory != directory:
                    what = "a directory" if is_directory else "not a directory"
                    raise StorageError(f"'{shown}' is {what}", path=shown,
                                       errno=errno.EISDIR if is_directory else errno.ENOTDIR)
                if not directory:
                    os.unlink(name, dir_fd=dir_fd)
                    return st.st_size if stat.S_ISREG(st.st_mode) else 0
                try:
                    os.rmdir(name, dir_fd=dir_fd)
                except OSError as exc:
                    if exc.errno != errno.ENOTEMPTY or not _clear_partials(dir_fd, name):
                        raise
                    os.rmdir(name, dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno == errno.ENOTEMPTY:
                    raise StorageError(f"'{shown}' is not empty", errno=exc.errno,
                                       path=shown) from exc
                raise storage_error(exc, shown) from exc
        return 0

    def exists(self, path: str | bytes) -> bool:
        try:
            self.stat(path)
        except StorageError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise
        return True

    def list(self, path: str | bytes, *, recursive: bool = False,
             limit: int = 1_000_000) -> Generator[Entry, None, None]:
        """Entries below ``path`` (relative to it); temporaries are hidden.

        A recursive listing does not follow symbolic links: it reports them as such.
        """
        shown = _shown(path)
        with self.parent(path) as (dir_fd, name):
            try:
                fd = os.open(name or ".", _DIR_FLAGS, dir_fd=dir_fd)
            except NotADirectoryError:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                yield Entry.from_stat(name, st)
                return
            except OSError as exc:
                raise storage_error(exc, shown) from exc
        walk = _walk(fd, "", recursive)
        try:
            yield from itertools.islice(walk, limit)
            if next(walk, None) is not None:
                raise StorageError(f"'{shown}' holds more than {limit} entries",
                                   errno=errno.E2BIG, path=shown)
        finally:
            walk.close()  # its directory fds, also when this listing is closed early


@mutable_record
class _OpenDir:
    """A directory fd kept open while subdirectories of it wait to be opened."""

    fd: int
    waiting: int = 0

    def release(self) -> None:
        if self.waiting == 0:
            os.close(self.fd)


def _walk(fd: int, prefix: str, recursive: bool) -> Generator[Entry, None, None]:
    """Entries below the directory ``fd`` (closed here), each directory's entries sorted
    and before those of its subdirectories.  Iterative, so no depth is too deep, and it
    holds one fd per level of the path being walked, however wide the tree."""
    top = _OpenDir(fd)
    stack: list[tuple[_OpenDir, str, str]] = []  # (parent, name, path of the subdirectory)
    current: _OpenDir | None = top
    base = prefix
    try:
        while current is not None:
            entries, subdirs = _entries_of(current.fd, base, recursive)
            yield from entries
            current.waiting += len(subdirs)
            stack.extend((current, name, path) for name, path in reversed(subdirs))
            current.release()
            current = None
            while stack and current is None:
                parent, name, base = stack.pop()
                parent.waiting -= 1
                try:
                    current = _OpenDir(os.open(name, _DIR_FLAGS, dir_fd=parent.fd))
                except OSError:
                    pass  # vanished or replaced while listing
                finally:
                    parent.release()
                base += "/"
    finally:
        open_dirs = {id(p): p for p, _, _ in stack}
        for parent in open_dirs.values():
            os.close(parent.fd)
        if current is not None and id(current) not in open_dirs:
            os.close(current.fd)


def _entries_of(dir_fd: int, base: str, recursive: bool,
                ) -> tuple[list[Entry], list[tuple[str, str]]]:
    """One directory's entries, sorted by name, and the (name, path) of its
    subdirectories.  (Per entry: a listing of 10,000 files is this loop's 10,000 turns.)"""
    with os.scandir(dir_fd) as it:
        items = sorted(it, key=_name_of)
    entries: list[Entry] = []
    subdirs: list[tuple[str, str]] = []
    from_stat = Entry.from_stat
    for item in items:
        name = item.name
        if name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX):
            continue  # is_temporary_name, inline
        try:
            st = item.stat(follow_symlinks=False)
        except OSError:
            continue  # vanished while listing
        entry = from_stat(base + name, st)
        entries.append(entry)
        if recursive and entry.kind is Kind.DIRECTORY:
            subdirs.append((name, entry.path))
    return entries, subdirs


_name_of = operator.attrgetter("name")


def _shown(path: str | bytes) -> str:
    return path.decode("utf-8", "backslashreplace") if isinstance(path, bytes) else path


# Temporary names: a random 64-bit start per process, then counting (no getrandom call
# per file); O_EXCL still refuses a name that is somehow taken.
_temp_counter = itertools.count(int.from_bytes(secrets.token_bytes(8), "big"))


def _temporary_name() -> str:
    return f"{TEMP_PREFIX}{next(_temp_counter) & 0xFFFF_FFFF_FFFF_FFFF:016x}{TEMP_SUFFIX}"


@functools.cache
def _process_umask() -> int:
    """This process's umask, read once (sockferry never changes it while serving)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o077)  # elsewhere: set and restore, once, at the first file
    os.umask(mask)
    return mask


class Durability(Enum):
    """When a written file is made durable (``serve --fsync``)."""

    NONE = "none"  # never fsynced: safe from a crash of sockferry, not of the machine
    BATCH = "batch"  # files finished together are fsynced together, then answered
    EACH = "each"  # every file fsynced with its directory on its own, answered at once


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
            self._memory_only = _file_system_type(self.fd) in _MEMORY_FILE_SYSTEMS
        return self._memory_only

    def acquire(self) -> DirHandle:
        self.users += 1
        return self

    def release(self) -> None:
        self.users -= 1
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

    def __init__(self, root: Root, *, limit: int = 64, ttl_s: float = 1.0) -> None:
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
            if (cached is not None and _plain_name(name) and len(path) <= _SAFE_PATH_CHARS
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


class AtomicFile:
    """A file being written under a temporary name in its final directory.

    ``commit`` fsyncs, sets the mode (and mtime), renames over the final name (or links,
    refusing to replace, with ``clobber=False``) and fsyncs the directory; ``seal`` and
    ``publish`` are its first two steps, for callers that make many files durable
    together (``GroupCommit``).  ``abort`` removes the temporary.  Exactly one of
    ``commit``, ``abort`` or a ``GroupCommit`` must finish the file; the directory is
    released then.
    """

    def __init__(self, directory: int | DirHandle, name: str, shown: str,
                 mode: int = 0o600) -> None:
        self.dir = (directory if isinstance(directory, DirHandle)
                    else DirHandle(directory)).acquire()
        self.dir_fd = self.dir.fd
        self.name = name
        self.shown = shown
        self.temp_name = self._temporary_name()
        self._mode = mode  # what the temporary is created with (the umask permitting)
        self.written = 0
        try:
            self.fd = self._open_temporary()
        except OSError as exc:
            self.dir.release()
            raise storage_error(exc, shown) from exc
        self._done = False
        self._holes = False
        self._queued = 0  # bytes already handed to early writeback
        self.on_finish: list[Callable[[], object]] = []  # run once, committed or not

    def _temporary_name(self) -> str:
        return _temporary_name()

    def _open_temporary(self) -> int:
        # O_RDWR: a digests.Follower reads back what is written.
        return os.open(self.temp_name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                       | os.O_CLOEXEC, self._mode, dir_fd=self.dir_fd)

    @classmethod
    def beside(cls, local_path: str) -> AtomicFile:
        """An atomic writer for a local path (the client side, no sandbox)."""
        parent = os.path.dirname(os.path.abspath(local_path))
        try:
            dir_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise storage_error(exc, parent) from exc
        return cls(dir_fd, os.path.basename(local_path), local_path)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        try:
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
                self.written += n
            self._write_back()
        except OSError as exc:
            self.abort()
            raise storage_error(exc, self.shown, "the partial file was removed") from exc

    def spliced(self, count: int) -> None:
        """``count`` bytes were written at the current offset by someone else (splice)."""
        self.written += count
        try:
            self._write_back()
        except OSError as exc:
            self.abort()
            raise storage_error(exc, self.shown, "the partial file was removed") from exc

    def _write_back(self) -> None:
        if self.written - self._queued >= WRITEBACK_STEP:
            # Start writing back what is done now, so the fsync in commit() does not
            # have to push the whole file at the end (on Linux, DONTNEED on dirty
            # pages queues their writeback without waiting for it).
            os.posix_fadvise(self.fd, self._queued, self.written - self._queued,
                             os.POSIX_FADV_DONTNEED)
            self._queued = self.written

    def skip(self, count: int) -> None:
        """Leave ``count`` zero bytes as a hole instead of writing them."""
        try:
            os.lseek(self.fd, count, os.SEEK_CUR)
        except OSError as exc:
            self.abort()
            raise storage_error(exc, self.shown, "the partial file was removed") from exc
        self.written += count
        self._holes = True

    def seal(self, mode: int, mtime_ns: int | None = None, *, durable: bool = True) -> None:
        """Size, mode and mtime set, the data fsynced (when ``durable``), the fd closed.

        A second call does nothing: a file sealed as soon as it was written whole stays
        as it was sealed then."""
        if self.fd < 0 and not self._done:
            return
        self._committing()
        try:
            if self._holes:  # a trailing hole needs the size set explicitly
                os.ftruncate(self.fd, self.written)
            if mode != self._mode or mode & _process_umask():
                os.fchmod(self.fd, mode)
            if mtime_ns is not None:
                os.utime(self.fd, ns=(mtime_ns, mtime_ns))
            if durable:
                os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1
        except OSError as exc:
            self.abort()
            raise storage_error(exc, self.shown, "nothing was written") from exc

    def publish(self, clobber: bool = True) -> None:
        """Give the sealed file its final name (the directory is not fsynced here)."""
        try:
            if clobber:
                os.rename(self.temp_name, self.name, src_dir_fd=self.dir_fd,
                          dst_dir_fd=self.dir_fd)
            else:
                # link() fails with EEXIST instead of replacing: an atomic no-clobber.
                os.link(self.temp_name, self.name, src_dir_fd=self.dir_fd,
                        dst_dir_fd=self.dir_fd, follow_symlinks=False)
                os.unlink(self.temp_name, dir_fd=self.dir_fd)
        except OSError as exc:
            self.abort()
            if exc.errno == errno.EEXIST:
                raise StorageError(f"'{self.shown}' already exists and the server does not "
                                   "overwrite files", errno=exc.errno, path=self.shown) from exc
            raise storage_error(exc, self.shown, "nothing was written") from exc

    def commit(self, mode: int, mtime_ns: int | None = None, *, clobber: bool = True,
               durable: bool = True) -> None:
        self.seal(mode, mtime_ns, durable=durable)
        self.publish(clobber)
        try:
            if durable:
                os.fsync(self.dir_fd)
        except OSError as exc:
            raise storage_error(exc, self.shown, _NOT_DURABLE) from exc
        finally:
            self._finish()

    def _committing(self) -> None:
        """Called as the commit starts (a partial file is no longer kept from then)."""

    def abort(self) -> None:
        if self._done:
            return
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1
        with contextlib.suppress(OSError):
            os.unlink(self.temp_name, dir_fd=self.dir_fd)
        self._finish()

    def _finish(self) -> None:
        if not self._done:
            self._done = True
            self.dir.release()
            for callback in self.on_finish:
                callback()


_NOT_DURABLE = "the file is in place but may not survive a crash"


class GroupCommit:
    """Files made durable together, each with its mode and mtime, and only then visible
    under their names durably: data first, then the renames, then the directories.

    On Linux each file system involved is flushed with one syncfs(2) before the renames
    and one after — a group of any size costs two journal commits, where fsyncing file by
    file costs one each.  Elsewhere every file is fsynced, then each directory once.

    The steps run in order: ``seal``, ``flush_data``, ``publish``, ``flush_names``, then
    ``finish`` gives one outcome per file (None: committed).  Where ``cheap_steps``,
    ``seal`` and ``publish`` never wait for the disk (only the two flushes do), so a
    caller may run them itself and hand only the flushes to a thread.  A file that failed
    was removed, except after a failed flush of its directory, which leaves it in place.
    ``abandon`` ends a group cut short: what was not yet published is removed.
    """

    def __init__(self, files: Sequence[tuple[AtomicFile, int, int | None]], *,
                 clobber: bool = True) -> None:
        self.files = files
        self.clobber = clobber
        self.outcomes: list[StorageError | None] = [None] * len(files)
        self._syncfs = _syncfs()
        self._published = False

    @property
    def cheap_steps(self) -> bool:
        return self._syncfs is not None

    def waits_for_disk(self) -> bool:
        """False when every file is on tmpfs or ramfs: then no step can block."""
        return self._syncfs is None or not all(f.dir.memory_only() for f, _, _ in self.files)

    def seal(self) -> None:
        for index, (file, mode, mtime_ns) in enumerate(self.files):
            try:
                file.seal(mode, mtime_ns, durable=self._syncfs is None)
            except StorageError as exc:
                self.outcomes[index] = exc

    def flush_data(self) -> None:
        """The data of every file, before any rename (Linux; elsewhere seal fsynced)."""
        if self._syncfs is None:
            return
        for index, error in _flush_file_systems(self.files, self.outcomes,
                                                self._syncfs).items():
            self.files[index][0].abort()
            self.outcomes[index] = storage_error(error, self.files[index][0].shown,
                                                 "nothing was written")

    def publish(self) -> None:
        self._published = True
        for index, (file, _, _) in enumerate(self.files):
            if self.outcomes[index] is None:
                try:
                    file.publish(self.clobber)
                except StorageError as exc:
                    self.outcomes[index] = exc

    def flush_names(self) -> None:
        if self._syncfs is not None:
            failures = _flush_file_systems(self.files, self.outcomes, self._syncfs)
        else:
            failures = _flush_directories(self.files, self.outcomes)
        for index, error in failures.items():
            self.outcomes[index] = storage_error(error, self.files[index][0].shown,
                                                 _NOT_DURABLE)

    def run_steps(self) -> None:
        """Every step before ``finish``, in order (in a worker thread where not cheap)."""
        self.seal()
        self.flush_data()
        self.publish()
        self.flush_names()

    def finish(self) -> list[StorageError | None]:
        for file, _, _ in self.files:
            file._finish()
        return self.outcomes

    def abandon(self) -> None:
        for file, _, _ in self.files:
            if self._published:
                file._finish()
            else:
                file.abort()


def flushes_file_systems() -> bool:
    """True where group commits flush whole file systems (syncfs) rather than fsyncing
    each file: there a file need not stay open until its group is committed."""
    return _syncfs() is not None


def _flush_file_systems(files: Sequence[tuple[AtomicFile, int, int | None]],
                        outcomes: list[StorageError | None],
                        syncfs: Callable[[int], None]) -> dict[int, OSError]:
    """syncfs once per file system holding a file still in the running (none for those
    in memory only); the failures."""
    by_device: dict[int, list[int]] = {}
    for index, (file, _, _) in enumerate(files):
        if outcomes[index] is None and not file.dir.memory_only():
            by_device.setdefault(file.dir.device(), []).append(index)
    failures: dict[int, OSError] = {}
    for indexes in by_device.values():
        try:
            syncfs(files[indexes[0]][0].dir_fd)
        except OSError as exc:
            failures.update(dict.fromkeys(indexes, exc))
    return failures


def _flush_directories(files: Sequence[tuple[AtomicFile, int, int | None]],
                       outcomes: list[StorageError | None]) -> dict[int, OSError]:
    synced: dict[int, OSError | None] = {}
    failures: dict[int, OSError] = {}
    for index, (file, _, _) in enumerate(files):
        if outcomes[index] is None:
            key = id(file.dir)
            if key not in synced:
                try:
                    os.fsync(file.dir_fd)
                    synced[key] = None
                except OSError as exc:
                    synced[key] = exc
            if (error := synced[key]) is not None:
                failures[index] = error
    return failures


# statfs(2) f_type of file systems that live in memory only: TMPFS_MAGIC, RAMFS_MAGIC.
_MEMORY_FILE_SYSTEMS = frozenset({0x01021994, 0x858458F6})


def _file_system_type(fd: int) -> int:
    """statfs(2) f_type of the file system holding ``fd`` (Linux), or -1 if unknown."""
    fstatfs = _fstatfs()
    if fstatfs is None:
        return -1
    import ctypes  # noqa: PLC0415 - loaded by the servers only, not every command

    buffer = (ctypes.c_long * 64)()  # struct statfs starts with f_type, a long
    if fstatfs(fd, buffer) != 0:
        return -1
    return buffer[0] & 0xFFFF_FFFF


@functools.cache
def _fstatfs() -> Callable[[int, ctypes.Array[ctypes.c_long]], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    import ctypes  # noqa: PLC0415 - see _file_system_type

    try:
        function = ctypes.CDLL(None, use_errno=True).fstatfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_void_p]
    function.restype = ctypes.c_int
    return function


@functools.cache
def _syncfs() -> Callable[[int], None] | None:
    """Linux's syncfs(2) (flush one file system), or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes  # noqa: PLC0415 - see _file_system_type

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int

    def syncfs(fd: int) -> None:
        if function(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))

    return syncfs


def partial_name(name: str) -> str:
    """The partial file's name for target ``name``: bound to that name in its directory."""
    key = hashlib.sha256(PARTIAL_LABEL + name.encode("utf-8", "surrogateescape"))
    return f"{PARTIAL_PREFIX}{key.hexdigest()[:16]}{TEMP_SUFFIX}"


def _busy(shown: str) -> StorageError:
    return StorageError(f"another transfer to '{shown}' is in progress; try again later",
                        errno=errno.EAGAIN, path=shown)


def _clear_partials(parent_fd: int, name: str) -> bool:
    """Remove the partial files in the directory ``name`` if they are all it holds and
    none is being written; whether it is empty now."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                     dir_fd=parent_fd)
    except OSError:
        return False
    try:
        names = os.listdir(fd)
        if not all(n.startswith(PARTIAL_PREFIX) for n in names):
            return False
        for partial in names:
            st = os.stat(partial, dir_fd=fd, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode) or not _unlink_unlocked(fd, partial, st):
                return False
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _unlink_unlocked(dir_fd: int, name: str, st: os.stat_result) -> bool:
    """Remove ``name`` unless a transfer holds it locked or it was replaced meanwhile."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                     dir_fd=dir_fd)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        now = os.fstat(fd)
        if (now.st_ino, now.st_dev) != (st.st_ino, st.st_dev):
            return False
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


class PartialFile(AtomicFile):
    """An ``AtomicFile`` under its target's partial name, kept when abandoned (resume).

    An exclusive flock on a second open file description guards it from the moment it
    is opened until it is renamed into place or closed (closing ``fd`` in ``commit``
    must not drop the lock before the rename).  ``abort`` keeps what was written, so a
    later transfer can resume; failed writes and commits still remove it.
    """

    def __init__(self, directory: int | DirHandle, name: str, shown: str) -> None:
        self._lock_fd = -1
        self.keep = True
        super().__init__(directory, name, shown)
        self.kept = os.fstat(self.fd).st_size  # what an earlier transfer left

    def _temporary_name(self) -> str:
        return partial_name(self.name)

    def _open_temporary(self) -> int:
        fd = os.open(self.temp_name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
                     | os.O_NONBLOCK, 0o600, dir_fd=self.dir_fd)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EEXIST, "the partial file is not a regular file")
            self._lock_fd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BaseException:
            os.close(fd)
            self._close_lock()
            raise
        os.set_blocking(fd, True)
        return fd

    def start_at(self, offset: int) -> None:
        """Keep the first ``offset`` bytes and write on from there (0: start over)."""
        try:
            os.ftruncate(self.fd, offset)
            os.lseek(self.fd, offset, os.SEEK_SET)
        except OSError as exc:
            self.keep = False
            self.abort()
            raise storage_error(exc, self.shown, "the partial file was removed") from exc
        self.written = self._queued = offset

    def write(self, data: bytes | bytearray | memoryview) -> None:
        keep, self.keep = self.keep, False  # a failed write removes the partial
        super().write(data)
        self.keep = keep

    def skip(self, count: int) -> None:
        keep, self.keep = self.keep, False
        super().skip(count)
        self.keep = keep

    def _committing(self) -> None:
        self.keep = False  # a failed commit leaves nothing behind

    def abort(self) -> None:
        """Close, keeping what was written for a later resume (nothing: remove it)."""
        if self._done or not self.keep or self._empty():
            super().abort()
            return
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1
        self._finish()

    def _finish(self) -> None:
        super()._finish()
        self._close_lock()

    def _empty(self) -> bool:
        try:
            return self.fd < 0 or os.fstat(self.fd).st_size == 0
        except OSError:
            return True

    def _close_lock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


def data_segments(fd: int, size: int, *, sparse: bool) -> Iterator[tuple[int, int, bool]]:
    """``(offset, length, is_hole)`` runs covering ``size`` bytes of ``fd``.

    With ``sparse`` the holes are found with SEEK_DATA/SEEK_HOLE; otherwise (or where
    the file system cannot say) the whole file is one data run.
    """
    if not sparse or size == 0:
        if size:
            yield 0, size, False
        return
    offset = 0
    while offset < size:
        try:
            data_at = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole remains
                yield offset, size - offset, True
                return
            yield offset, size - offset, False  # no SEEK_DATA here: treat as data
            return
        data_at = min(data_at, size)
        if data_at > offset:
            yield offset, data_at - offset, True
        if data_at >= size:
            return
        hole_at = min(os.lseek(fd, data_at, os.SEEK_HOLE), size)
        yield data_at, hole_at - data_at, False
        offset = hole_at


def is_sparse(st: os.stat_result) -> bool:
    """Fewer blocks allocated than the size needs: worth looking for holes."""
    return st.st_blocks * 512 < st.st_size
