"""The root sandbox: a directory that client paths cannot leave.

``Root`` resolves every client path beneath one directory the way Linux's
``openat2(RESOLVE_BENEATH)`` would, with one directory file descriptor per step:
``..`` may not climb above the root, absolute paths and NUL bytes are refused, and
symbolic links are followed by hand, only while they stay inside.  Nothing is opened by
name from the top, so a link swapped in during a walk cannot lead outside.

What it writes goes through ``atomic.AtomicFile`` (a temporary name, then a rename), so
nothing is seen half done.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import os
import stat
from collections.abc import Generator, Iterator, Sequence
from typing import TYPE_CHECKING

from sockferry.entries import Entry
from sockferry.errors import PathRefused, StorageError
from sockferry.sockets import storage_error
from sockferry.storage.atomic import AtomicFile, temporary_name
from sockferry.storage.dircache import DirCache, DirHandle
from sockferry.storage.listing import DIR_FLAGS, walk
from sockferry.storage.names import (
    MAX_PATH_DEPTH,
    MAX_SYMLINK_HOPS,
    link_target_problem,
    partial_name,
    plain_name,
    split_client_path,
)
from sockferry.storage.partials import busy, clear_partials, sweep
from sockferry.storage.store import stat_finds

if TYPE_CHECKING:
    from sockferry.storage.store import Store, StoreCache


class Root:
    """A directory that client paths cannot leave."""

    keeps_links = True
    keeps_partials = True
    remote = False

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        try:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise storage_error(exc, self.path) from exc

    def new_cache(self) -> DirCache:
        return DirCache(self)

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
                    raise _refuse_escape(shown)
                os.close(stack.pop())
                continue
            if not pending and not follow_last:
                return name
            link = _readlink(stack[-1], name)
            if link is not None:
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise StorageError(f"too many symbolic links in '{shown}'",
                                       errno=errno.ELOOP, path=shown)
                if link.startswith("/"):
                    raise _refuse_escape(shown)
                pending[:0] = [p for p in link.split("/") if p not in ("", ".")]
                continue
            if not pending:
                return name
            stack.append(_open_dir(stack[-1], name, shown, make_parents, dir_mode))
        return ""

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

    def create(self, path: str | bytes, dirs: StoreCache | None = None,
               kind: type[AtomicFile] | None = None, mode: int = 0o600) -> AtomicFile:
        """Start writing ``path``; the parent directory must exist.  With ``dirs`` the
        parent comes from that cache when it can; ``kind`` PartialFile writes under the
        target's partial name (resume).  ``mode`` is the temporary's mode from the start
        (the final mode, for a file written whole at once)."""
        shown = path if isinstance(path, str) else _shown(path)  # no call per small file
        found = dirs.parent(path) if isinstance(dirs, DirCache) else None
        if found is not None:
            handle, name, listed = found
            if listed:  # absent or a regular file when the directory was listed
                return _start(handle, name, shown, None, kind, mode)
            st = _existing(handle.fd, name, shown)
            if st is None or not stat.S_ISLNK(st.st_mode):
                return _start(handle, name, shown, st, kind, mode)
        dir_fd, name = self.resolve_parent(path)
        handle = DirHandle(dir_fd)
        if not name:
            handle.retire()
            raise StorageError(f"'{shown}' is a directory", errno=errno.EISDIR, path=shown)
        try:
            st = _existing(dir_fd, name, shown)
        except StorageError:
            handle.retire()
            raise
        return _start(handle, name, shown, st, kind, mode)

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
                raise busy(shown) from None
        except BaseException:
            os.close(fd)
            raise
        os.set_blocking(fd, True)
        return fd, st

    def sweep_temporaries(self, keep_s: float, max_partial_bytes: int,
                          now: float | None = None) -> list[tuple[str, int]]:
        """Remove expired temporaries, then the oldest partials over the budget.

        Walks the root without following links; a file some transfer holds locked is
        never removed.  Returns (path, size) of what was removed.  Through a duplicate
        of the root's descriptor: a server closing meanwhile closes its own, and the
        number, reused by the next file opened, never leads this walk elsewhere."""
        fd = os.dup(self._fd)
        try:
            return sweep(fd, keep_s, max_partial_bytes, now)
        finally:
            os.close(fd)

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
        raise _refuse_escape(shown)

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
                existing = _existing(dir_fd, name, shown)
                if existing is not None and stat.S_ISDIR(existing.st_mode):
                    raise StorageError(f"'{shown}' is a directory", errno=errno.EISDIR,
                                       path=shown)
                temporary = temporary_name()
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
                    if exc.errno != errno.ENOTEMPTY or not clear_partials(dir_fd, name):
                        raise
                    os.rmdir(name, dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno == errno.ENOTEMPTY:
                    raise StorageError(f"'{shown}' is not empty", errno=exc.errno,
                                       path=shown) from exc
                raise storage_error(exc, shown) from exc
        return 0

    def exists(self, path: str | bytes) -> bool:
        return stat_finds(self, path)

    def lstat_names(self, path: str | bytes,
                    names: Sequence[str]) -> list[os.stat_result | None]:
        """The lstat of each of ``names`` in the directory ``path`` (a link at the name
        not followed; the quick check of docs/protocol.md §5.5): None for a name it lacks,
        for one that is not a plain component (never looked up: no ``..``, no ``/``, no
        temporary), and for every name when ``path`` is missing or not a directory."""
        shown = _shown(path)
        found: list[os.stat_result | None] = [None] * len(names)
        try:
            with self.parent(path) as (dir_fd, name):
                fd = os.open(name or ".", DIR_FLAGS, dir_fd=dir_fd)
        except (FileNotFoundError, NotADirectoryError):
            return found
        except StorageError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                return found
            raise
        except OSError as exc:
            raise storage_error(exc, shown) from exc
        try:
            lstat = os.stat
            for i, name in enumerate(names):
                if "/" in name or not plain_name(name):
                    continue
                try:
                    found[i] = lstat(name, dir_fd=fd, follow_symlinks=False)
                except OSError:
                    continue
        finally:
            os.close(fd)
        return found

    def list(self, path: str | bytes, *, recursive: bool = False,
             limit: int = 1_000_000) -> Generator[Entry, None, None]:
        """Entries below ``path`` (relative to it); temporaries are hidden.

        A recursive listing does not follow symbolic links: it reports them as such.
        """
        shown = _shown(path)
        with self.parent(path) as (dir_fd, name):
            try:
                fd = os.open(name or ".", DIR_FLAGS, dir_fd=dir_fd)
            except NotADirectoryError:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                yield Entry.from_stat(name, st)
                return
            except OSError as exc:
                raise storage_error(exc, shown) from exc
        entries = walk(fd, "", recursive)
        try:
            yield from itertools.islice(entries, limit)
            if next(entries, None) is not None:
                raise StorageError(f"'{shown}' holds more than {limit} entries",
                                   errno=errno.E2BIG, path=shown)
        finally:
            entries.close()  # its directory fds, also when this listing is closed early


def _shown(path: str | bytes) -> str:
    return path.decode("utf-8", "backslashreplace") if isinstance(path, bytes) else path


def _refuse_escape(shown: str) -> PathRefused:
    return PathRefused(f"'{shown}' leads outside the server's root", path=shown)


def _readlink(dir_fd: int, name: str) -> str | None:
    try:
        return os.readlink(name, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOENT):  # not a link, or absent
            return None
        raise


def _open_dir(dir_fd: int, name: str, shown: str, create: bool, mode: int) -> int:
    try:
        return os.open(name, DIR_FLAGS, dir_fd=dir_fd)
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
    return _open_dir(dir_fd, name, shown, False, mode)


def _existing(dir_fd: int, name: str, shown: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise storage_error(exc, shown) from exc


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


if TYPE_CHECKING:
    def _root_is_a_store(store: Root) -> Store:  # mypy holds the backend to the Store protocol
        return store
