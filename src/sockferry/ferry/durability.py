"""The server's commits of verified uploads, in each path's request order and as
durable as ``--fsync`` says: at once (none), in groups (batch) or one by one (each).

The disk's waits (fsync, rename) run in worker threads here, so a slow disk never
stalls the connection's reader.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from sockferry.errors import StorageError
from sockferry.ferry.codes import code_for
from sockferry.ferry.ordering import PathOrder
from sockferry.ferry.upload_state import Verified
from sockferry.pools import shared_pool
from sockferry.storage.durability import Durability, GroupCommit, flushes_file_systems

if TYPE_CHECKING:
    from sockferry.ferry.connection_base import ServerConnection

MAX_COMMITS_IN_FLIGHT = 16  # fsync+rename threads per connection (--fsync each)
# Threads for the commits that wait, one at a time (--fsync each, a remote store's
# requests), shared by all connections: asyncio's default pool (cores + 4 threads) would
# hold a server's uploads to an object store to a handful at once.  As many as an S3
# store keeps connections for them (storage/s3.py: twice its part threads).
COMMIT_THREADS = 8


class Commits:
    """One connection's verified uploads on their way to being visible and durable,
    and the tasks doing it (verifying, committing) that the writer waits for."""

    __slots__ = (
        "clobber",
        "connection",
        "durability",
        "grouping",
        "order",
        "path_locks",
        "seal_early",
        "slots",
        "tasks",
        "verified",
    )

    def __init__(self, connection: ServerConnection) -> None:
        self.connection = connection
        self.durability = connection.config.durability
        self.clobber = connection.config.clobber
        self.tasks: set[asyncio.Task[None]] = set()
        self.verified: list[Verified] = []  # the next group to commit (--fsync batch)
        self.grouping = False  # a task is committing groups
        self.order: PathOrder[Verified] = PathOrder(self._commit_in_turn)
        # Small files are closed as soon as written where nothing fsyncs them one by one.
        self.seal_early = (self.durability is Durability.NONE
                           or (self.durability is Durability.BATCH
                               and flushes_file_systems()))
        self.slots = asyncio.Semaphore(MAX_COMMITS_IN_FLIGHT)
        self.path_locks: dict[str, asyncio.Lock] = {}

    # -- each path's order (§5: same path, request order) ---------------------------------

    def opened(self, request: int, key: str) -> None:
        """An upload to the path ``key`` started receiving."""
        self.order.opened(request, key)

    def opened_verified(self, request: int, key: str, verified: Verified) -> None:
        """A PUT_INLINE upload, verified as it arrived."""
        self.order.opened_verified(request, key, verified)

    def ended(self, request: int) -> None:
        """An upload refused or cancelled: what waited on it in its path's order goes."""
        self.order.ended(request)

    def commit(self, verified: Verified) -> None:
        """Make a verified upload visible, as durable as --fsync says, once every
        earlier PUT of its path has been (§5: same path, request order)."""
        self.order.verified(verified.request, verified)

    def _commit_in_turn(self, verified: Verified) -> None:
        if verified.upload.file.remote:  # a remote store's commit is a network wait
            self.spawn(self._commit_one(verified))
            return
        match self.durability:
            case Durability.NONE:
                self._commit_now(verified)
            case Durability.BATCH:
                self.verified.append(verified)
                if not self.grouping:
                    self.grouping = True
                    self.spawn(self._commit_groups())
            case Durability.EACH:
                self.spawn(self._commit_one(verified))

    # -- the tasks ------------------------------------------------------------------------

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """A task the writer waits for before it ends the connection."""
        task = asyncio.get_running_loop().create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def leave(self) -> None:
        """The calling task is done: it leaves the set, then wakes the writer (which
        exits once no task is left)."""
        self.tasks.discard(asyncio.current_task())
        self.connection.wake.set()

    # -- --fsync none, batch, each --------------------------------------------------------

    def _commit_now(self, verified: Verified) -> None:
        """--fsync none: rename at once, on the loop (no fsync, so nothing blocks)."""
        upload = verified.upload
        try:
            upload.file.commit(upload.mode, upload.mtime_ns, clobber=self.clobber,
                               durable=False)
        except StorageError as exc:
            self.connection.refuse(verified.request, "PUT", upload.path, code_for(exc),
                                   str(exc), upload.started, upload.size)
        else:
            self._committed(verified)

    async def _commit_groups(self) -> None:
        """--fsync batch: what was verified while a group was being made durable forms
        the next group; one send per group, in request order.  Only the flushes go to a
        worker thread where the other steps never wait for the disk, and nothing does
        where the files are in memory only."""
        connection = self.connection
        while self.verified:
            group, self.verified = self.verified, []
            commit = GroupCommit([(v.upload.file, v.upload.mode, v.upload.mtime_ns)
                                  for v in group], clobber=self.clobber)
            try:
                if not commit.waits_for_disk():  # tmpfs: no flush, so no thread either
                    commit.run_steps()
                elif commit.cheap_steps:
                    commit.seal()
                    await asyncio.to_thread(commit.flush_data)
                    commit.publish()
                    await asyncio.to_thread(commit.flush_names)
                else:
                    await asyncio.to_thread(commit.run_steps)
            except BaseException:
                commit.abandon()
                raise
            for verified, error in zip(group, commit.finish(), strict=True):
                if error is None:
                    self._committed(verified)
                else:
                    upload = verified.upload
                    connection.refuse(verified.request, "PUT", upload.path,
                                      code_for(error), str(error), upload.started,
                                      upload.size)
            connection.wake.set()
        self.grouping = False
        self.leave()

    async def _commit_one(self, verified: Verified) -> None:
        """--fsync each: this file and its directory fsynced on their own."""
        upload = verified.upload
        lock = self.path_locks.setdefault(upload.path, asyncio.Lock())
        async with self.slots, lock:  # same path twice: commit in request order
            try:
                commit = functools.partial(upload.file.commit, upload.mode, upload.mtime_ns,
                                           clobber=self.clobber)
                await asyncio.get_running_loop().run_in_executor(
                    shared_pool("commit", COMMIT_THREADS), commit)
            except StorageError as exc:
                self.connection.refuse(verified.request, "PUT", upload.path,
                                       code_for(exc), str(exc), upload.started,
                                       upload.size)
            else:
                self._committed(verified)
        if not lock.locked():
            self.path_locks.pop(upload.path, None)
        self.leave()

    def _committed(self, verified: Verified) -> None:
        connection, upload = self.connection, verified.upload
        connection.session.commit(verified.request, upload.size, verified.digest)
        connection.answers.run_name_changes()
        if upload.reservation is not None:
            assert connection.quota is not None
            connection.quota.committed(upload.reservation)
        connection.files += 1
        connection.log_file("PUT", upload.path, upload.size, upload.started, "ok",
                            logging.DEBUG)

    def abort(self) -> None:
        """The connection ends: what was verified but not committed is removed."""
        for verified in [*self.verified, *self.order.held()]:
            upload = verified.upload
            upload.file.abort()
            self.connection.log_file("PUT", upload.path, upload.size, upload.started,
                                     "aborted: the connection ended before it was "
                                     "committed")
        self.verified.clear()
        self.order.clear()
        for task in self.tasks:
            task.cancel()
