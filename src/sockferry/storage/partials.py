"""Temporaries and partial files left in the tree: removing them only while no transfer
holds them locked (the sweep of expired ones, an emptied directory's)."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from collections.abc import Iterator

from sockferry.errors import StorageError
from sockferry.storage.names import PARTIAL_PREFIX, is_temporary_name


def busy(shown: str) -> StorageError:
    return StorageError(f"another transfer to '{shown}' is in progress; try again later",
                        errno=errno.EAGAIN, path=shown)


def clear_partials(parent_fd: int, name: str) -> bool:
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



def sweep(root_fd: int, keep_s: float, max_partial_bytes: int,
          now: float | None = None) -> list[tuple[str, int]]:
    """Remove the expired temporaries below the directory ``root_fd``, then the oldest
    partials over the budget (``Root.sweep_temporaries``)."""
    now = time.time() if now is None else now
    removed: list[tuple[str, int]] = []
    kept: list[tuple[int, int, str, str]] = []  # mtime_ns, size, directory, name
    for directory, name, dir_fd, st in _temporaries(root_fd):
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
        for directory, name, dir_fd, st in _temporaries(root_fd):
            if (directory, name) in over and _unlink_unlocked(dir_fd, name, st):
                removed.append((os.path.normpath(os.path.join(directory, name)),
                                st.st_size))
    return removed


def _temporaries(root_fd: int) -> Iterator[tuple[str, str, int, os.stat_result]]:
    """(directory, name, directory fd, stat) of every regular temporary file."""
    for directory, _dirs, files, dir_fd in os.fwalk(".", dir_fd=root_fd):
        for name in files:
            if not is_temporary_name(name):
                continue
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                yield directory, name, dir_fd, st
