"""scp's conventions on top of ``FerryClient``, what both directions share: the
outcome of each file, the sync options, progress reporting, the settling of every
pipelined request, and --update/--checksum judgements.

A destination that ends in ``/`` or names an existing directory receives each source
under its own name; otherwise a single source takes the destination's name.  ``-r``
copies trees (MKDIR before the files inside, empty directories too).  Every request
is pipelined; outcomes are collected once the server has answered them all.  Sending:
ferry/copy_send.py; getting: ferry/copy_get.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from typing import cast

from sockferry.entries import Entry, Kind
from sockferry.errors import PeerRefused, SockferryError, UsageError
from sockferry.ferry import digests
from sockferry.ferry.bodies import SMALL_FILE, Progress
from sockferry.ferry.client import FerryClient
from sockferry.ferry.inflight import ResumeReport
from sockferry.ferry.retrying import worth_retrying
from sockferry.ferry.sync import (
    NO_FILTERS,
    Filters,
    unchanged,
)
from sockferry.records import mutable_record, record


@record
class Outcome:
    source: str
    target: str
    size: int
    error: SockferryError | None = None
    is_directory: bool = False
    skipped: bool = False  # deliberately not copied (links to directories, devices)
    resumed: int = 0  # --resume: bytes kept from an earlier, interrupted transfer
    resume_note: str = ""  # --resume: why it started from 0 (or "")
    unchanged: bool = False  # --update: the receiver already had it
    dry_run: bool = False  # -n: would have been copied (or deleted)
    deleted: bool = False  # --delete: removed from the receiver (source: what it was)


@record
class SyncOptions:
    """rsync's habits: skip unchanged files, filter names, or only say what would go."""

    update: bool = False
    filters: Filters = NO_FILTERS
    dry_run: bool = False
    delete: bool = False  # -r: remove the receiver's names the sender's tree lacks
    checksum: bool = False  # skip files of the same size and digest (rsync's -c)
    links: bool = False  # -l: symbolic links in trees copied as links (inside the tree)
    # --retry: the sources (as each Outcome names them) an earlier attempt copied whole,
    # left alone without a look (not even a digest)
    done: frozenset[str] = frozenset()


NO_SYNC = SyncOptions()


class Reporter:
    """How a copy tells its caller about progress; the default says nothing."""

    def progress_for(self, key: str, label: str, size: int | None) -> Progress | None:
        """``size`` None: not known until the end (a stream)."""
        return None

    def done(self, key: str) -> None:
        return None

    def all_started(self) -> None:
        """Every file of the copy has been started: the totals are final."""
        return None


@mutable_record
class Waiting:
    source: str
    target: str
    size: int
    future: asyncio.Future[object]
    is_directory: bool = False
    resume: ResumeReport | None = None
    deleted: bool = False  # a DELETE of send --delete (target: the remote name)


async def settled(client: FerryClient, waiting: list[Waiting], failed: list[Outcome],
                   reporter: Reporter, lost: bool = False) -> list[Outcome]:
    """Half-close, wait for every answer, and turn them into outcomes in request order.
    Once the server is lost (``lost``: ``failed`` says so; or a request failed for the
    loss), the requests it left unanswered or failed for it get no outcome each: the
    loss is one outcome, and what was answered before stands (a --retry leaves it)."""
    reporter.all_started()
    if lost:
        client.close()  # no half-close: a silent server would hold it for another timeout
    else:
        with contextlib.suppress(SockferryError):  # unanswered futures carry the reason
            await client.finish()
    outcomes = list(failed)
    loss = None if lost else next((item for item in waiting if _lost_by(item)), None)
    dropping = lost or loss is not None
    for item in waiting:
        reporter.done(item.target)
        error: SockferryError | None = None
        if not item.future.done():
            if dropping:
                continue
            error = PeerRefused("the connection ended before the server answered")
        elif (exc := item.future.exception()) is not None:
            if dropping and worth_retrying(exc):
                continue
            error = exc if isinstance(exc, SockferryError) else SockferryError(str(exc))
        report = item.resume
        outcomes.append(Outcome(item.source, item.target, item.size, error,
                                item.is_directory and not item.deleted, False,
                                report.offset if report else 0,
                                report.note if report else "",
                                deleted=item.deleted and error is None))
    if loss is not None:
        outcomes.append(Outcome(loss.source, loss.target, 0,
                                cast(SockferryError, loss.future.exception())))
    return outcomes


def _lost_by(item: Waiting) -> bool:
    """Whether the request failed because the server was lost."""
    future = item.future
    return (future.done() and not future.cancelled()
            and worth_retrying(future.exception()))


def skipped(size: int, mtime_ns: int, there: Entry | None, source: str, target: str,
            sync: SyncOptions, failed: list[Outcome], same: bool = False) -> bool:
    """--update, --checksum and -n: whether this file (of ``size`` bytes, modified at
    ``mtime_ns``) is left alone (its outcome recorded); ``there``: what the receiver has
    at its name; ``same``: --checksum found its size and digest equal on both sides.
    One in ``sync.done`` is left alone with no outcome: the earlier one stands."""
    return left_alone(source, target, size,
                      same if sync.checksum else sync.update and unchanged(size, mtime_ns,
                                                                           there),
                      sync, failed)


def left_alone(source: str, target: str, size: int, is_unchanged: bool, sync: SyncOptions,
               failed: list[Outcome]) -> bool:
    """``skipped`` once it is known whether the receiver has the file unchanged (the
    server's quick check says so itself)."""
    if source in sync.done:
        return True
    if is_unchanged:
        failed.append(Outcome(source, target, size, unchanged=True))
        return True
    if sync.dry_run:
        failed.append(Outcome(source, target, size, dry_run=True))
        return True
    return False


def checksum_candidates(sender: list[Entry], receiver: dict[str, Entry],
                         local_path: Callable[[str], str], remote_path: Callable[[str], str],
                         ) -> list[tuple[str, str, str]]:
    """--checksum: (relative path, local path, remote path) of each regular file of the
    sender's tree that the receiver has as a regular file of the same size — the others
    differ anyway."""
    found = []
    for entry in sender:
        other = receiver.get(entry.path)
        if (entry.kind is Kind.FILE and other is not None and other.kind is Kind.FILE
                and other.size == entry.size):
            found.append((entry.path, local_path(entry.path), remote_path(entry.path)))
    return found


async def identical(client: FerryClient, candidates: list[tuple[str, str, str]],
                     ) -> set[str]:
    """--checksum: the relative paths among ``candidates`` whose local and remote digests
    are equal.  Every CHECKSUM is pipelined first, then the local files are hashed while
    the server hashes its own: one round trip in all."""
    if not candidates:
        return set()
    if not client.can_sync:
        raise UsageError("this server cannot compute digests (it predates --checksum); "
                         "use --update, or copy without it")
    asked = [(rel, local, await client.start_checksum(remote))
             for rel, local, remote in candidates]
    await client.flush()
    feature = client.session.digest_feature
    same: set[str] = set()
    for rel, local, future in asked:
        mine = await _local_digest(local, feature)
        with contextlib.suppress(SockferryError):
            answer = await future
            if mine is not None and isinstance(answer, tuple) and answer[1] == mine:
                same.add(rel)
    return same


async def _local_digest(path: str, feature: digests.Feature) -> bytes | None:
    """The digest of a local file, or None where it cannot be read (it is then copied,
    and the copy reports why)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        size = os.fstat(fd).st_size
        if size <= SMALL_FILE:
            return digests.digest_of(os.pread(fd, size, 0), feature)
        return await asyncio.to_thread(digests.hash_fd, fd, size, feature)
    except OSError:
        return None
    finally:
        os.close(fd)


def local_entries(top: str) -> list[Entry]:
    """The names under ``top``, parents first, links not followed (lstat)."""
    found: list[Entry] = []
    for directory, subdirs, files in os.walk(top):
        rel = os.path.relpath(directory, top)
        prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        subdirs.sort()
        for name in sorted(subdirs) + sorted(files):
            with contextlib.suppress(FileNotFoundError):
                found.append(Entry.from_stat(prefix + name,
                                             os.lstat(os.path.join(directory, name))))
    found.sort(key=lambda e: e.path.split("/"))
    return found
