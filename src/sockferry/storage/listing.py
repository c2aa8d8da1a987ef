"""Listing a directory tree below an open directory fd, without following links."""

from __future__ import annotations

import operator
import os
from collections.abc import Generator

from sockferry.entries import Entry, Kind
from sockferry.records import mutable_record
from sockferry.storage.names import TEMP_PREFIX, TEMP_SUFFIX

# A directory opened by name, never through a link in its place.
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@mutable_record
class _OpenDir:
    """A directory fd kept open while subdirectories of it wait to be opened."""

    fd: int
    waiting: int = 0

    def release(self) -> None:
        if self.waiting == 0:
            os.close(self.fd)


def walk(fd: int, prefix: str, recursive: bool) -> Generator[Entry, None, None]:
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
                    current = _OpenDir(os.open(name, DIR_FLAGS, dir_fd=parent.fd))
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
