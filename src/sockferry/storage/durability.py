"""When written files are made durable: one at a time, or many together (group commits)
with one flush of each file system."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from enum import Enum
from typing import TYPE_CHECKING

from sockferry.errors import StorageError
from sockferry.sockets import storage_error
from sockferry.storage.atomic import NOT_DURABLE
from sockferry.storage.filesystems import find_syncfs

if TYPE_CHECKING:
    from sockferry.storage.atomic import AtomicFile


class Durability(Enum):
    """When a written file is made durable (``serve --fsync``)."""

    NONE = "none"  # never fsynced: safe from a crash of sockferry, not of the machine
    BATCH = "batch"  # files finished together are fsynced together, then answered
    EACH = "each"  # every file fsynced with its directory on its own, answered at once


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
        self._syncfs = find_syncfs()
        self._published = False
        # asked once per file (both flushes and waits_for_disk need it); lists, not
        # generators, as these run once per file
        self._flushed = [f.flushed_by_file_system() for f, _, _ in files]
        self._remote = any([f.remote for f, _, _ in files])

    @property
    def cheap_steps(self) -> bool:
        return self._syncfs is not None and not self._remote

    def waits_for_disk(self) -> bool:
        """False when every file is on tmpfs or ramfs: then no step can block."""
        return self._syncfs is None or self._remote or any(self._flushed)

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
        for index, error in _flush_file_systems(self.files, self._flushed, self.outcomes,
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
            failures = _flush_file_systems(self.files, self._flushed, self.outcomes,
                                           self._syncfs)
        else:
            failures = _flush_directories(self.files, self.outcomes)
        for index, error in failures.items():
            self.outcomes[index] = storage_error(error, self.files[index][0].shown,
                                                 NOT_DURABLE)

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
    return find_syncfs() is not None


def _flush_file_systems(files: Sequence[tuple[AtomicFile, int, int | None]],
                        flushed: Sequence[bool], outcomes: list[StorageError | None],
                        syncfs: Callable[[int], None]) -> dict[int, OSError]:
    """syncfs once per file system holding a file still in the running whose file
    system needs it (``flushed``: none for those in memory only); the failures."""
    by_device: dict[int, list[int]] = {}
    for index, (file, _, _) in enumerate(files):
        if flushed[index] and outcomes[index] is None:
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

