"""scp's conventions on top of ``FerryClient``: which file goes where.

A destination that ends in ``/`` or names an existing directory receives each source
under its own name; otherwise a single source takes the destination's name.  ``-r``
copies trees (MKDIR before the files inside, empty directories too).  Every request
is pipelined; outcomes are collected once the server has answered them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import posixpath
import shutil
import stat
from collections.abc import Callable, Iterable, Iterator

from sockferry.entries import Entry, Kind
from sockferry.errors import PathRefused, PeerRefused, SockferryError, StorageError, UsageError
from sockferry.ferry import digests
from sockferry.ferry.bodies import SMALL_FILE, Progress
from sockferry.ferry.client import FerryClient
from sockferry.ferry.inflight import ResumeReport
from sockferry.ferry.messages import ErrorCode
from sockferry.ferry.puts import open_local_file
from sockferry.ferry.sync import (
    NO_FILTERS,
    Filters,
    extraneous,
    has_glob,
    name_matcher,
    unchanged,
    unescape,
)
from sockferry.records import mutable_record, record
from sockferry.sockets import storage_error
from sockferry.storage import link_target_problem, split_client_path


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
class _Waiting:
    source: str
    target: str
    size: int
    future: asyncio.Future[object]
    is_directory: bool = False
    resume: ResumeReport | None = None
    deleted: bool = False  # a DELETE of send --delete (target: the remote name)


async def _settled(client: FerryClient, waiting: list[_Waiting], failed: list[Outcome],
                   reporter: Reporter) -> list[Outcome]:
    """Half-close, wait for every answer, and turn them into outcomes in request order."""
    reporter.all_started()
    with contextlib.suppress(SockferryError):  # unanswered futures carry the reason
        await client.finish()
    outcomes = list(failed)
    for item in waiting:
        reporter.done(item.target)
        error: SockferryError | None = None
        if not item.future.done():
            error = PeerRefused("the connection ended before the server answered")
        elif (exc := item.future.exception()) is not None:
            error = exc if isinstance(exc, SockferryError) else SockferryError(str(exc))
        report = item.resume
        outcomes.append(Outcome(item.source, item.target, item.size, error,
                                item.is_directory and not item.deleted, False,
                                report.offset if report else 0,
                                report.note if report else "",
                                deleted=item.deleted and error is None))
    return outcomes


# ---- send ------------------------------------------------------------------------------


async def _remote_is_directory(client: FerryClient, path: str) -> bool:
    if path in ("", ".") or path.endswith("/"):
        return True
    try:
        return (await client.stat(path)).kind is Kind.DIRECTORY
    except PeerRefused as exc:
        if exc.code == ErrorCode.NOT_FOUND:
            return False
        raise


def _local_name(path: str) -> str:
    return os.path.basename(os.path.abspath(path))


async def send_paths(client: FerryClient, sources: list[str], dest: str, *,
                     recursive: bool, keep_mtime: bool,
                     reporter: Reporter | None = None, resume: bool = False,
                     sync: SyncOptions = NO_SYNC) -> list[Outcome]:
    reporter = reporter or Reporter()
    into_directory = await _remote_is_directory(client, dest)
    if len(sources) > 1 and not into_directory:
        raise UsageError(f"'{dest}' is not a directory on the server — several sources "
                         "need a directory as destination")
    waiting: list[_Waiting] = []
    failed: list[Outcome] = []
    for source in sources:
        target = posixpath.join(dest, _local_name(source)) if into_directory else dest
        try:
            st = os.stat(source)
        except OSError as exc:
            failed.append(Outcome(source, target, 0, storage_error(exc, source)))
            continue
        if stat.S_ISDIR(st.st_mode):
            if not recursive:
                failed.append(Outcome(source, target, 0, StorageError(
                    f"'{source}' is a directory (use -r to copy trees)", errno=errno.EISDIR)))
                continue
            await _send_tree(client, source, target, keep_mtime, reporter, waiting, failed,
                             resume, sync)
        elif sync.dry_run or sync.update or sync.checksum:
            if await _single_skipped(client, source, target, st, sync, failed):
                continue
            await _send_one(client, source, target, keep_mtime, reporter, waiting, failed,
                            resume)
        else:
            await _send_one(client, source, target, keep_mtime, reporter, waiting, failed,
                            resume)
    return await _settled(client, waiting, failed, reporter)


async def send_file_as(client: FerryClient, source: str, label: str, dest: str, *,
                       reporter: Reporter | None = None) -> list[Outcome]:
    """Send the one file ``source`` to exactly the remote path ``dest`` (never into a
    directory of that name): ``send -`` sends its spooled standard input so."""
    reporter = reporter or Reporter()
    if await _remote_is_directory(client, dest):
        raise UsageError(f"'{dest or '.'}' is a directory on the server — give the file a "
                         "name: HOST:DIR/NAME")
    waiting: list[_Waiting] = []
    failed: list[Outcome] = []
    await _send_one(client, source, dest, False, reporter, waiting, failed)
    outcomes = await _settled(client, waiting, failed, reporter)
    return [Outcome(label, o.target, o.size, o.error, o.is_directory, o.skipped, o.resumed,
                    o.resume_note) for o in outcomes]


async def send_stream_as(client: FerryClient, fd: int, label: str, dest: str, *,
                         reporter: Reporter | None = None) -> list[Outcome]:
    """Send what ``fd`` yields until its end as exactly the remote file ``dest``, as a
    streamed PUT (the server must take STREAM: ``client.can_stream``): ``send -``."""
    reporter = reporter or Reporter()
    if await _remote_is_directory(client, dest):
        raise UsageError(f"'{dest or '.'}' is a directory on the server — give the file a "
                         "name: HOST:DIR/NAME")
    failed: list[Outcome] = []
    waiting: list[_Waiting] = []
    progress = reporter.progress_for(dest, label, None)
    try:
        future = await client.puts.start_put_stream(fd, dest, shown=label, progress=progress)
    except StorageError as exc:
        reporter.done(dest)
        failed.append(Outcome(label, dest, 0, exc))
    else:
        waiting.append(_Waiting(label, dest, 0, future))
    [outcome] = await _settled(client, waiting, failed, reporter)
    if outcome.error is None:  # the size the server committed (it checked it is ours)
        size = waiting[0].future.result()
        assert isinstance(size, int)
        outcome = Outcome(label, dest, size)
    return [outcome]


async def _send_one(client: FerryClient, source: str, target: str, keep_mtime: bool,
                    reporter: Reporter, waiting: list[_Waiting],
                    failed: list[Outcome], resume: bool = False) -> None:
    opened = _open(source, target, reporter, failed)
    if opened is not None:
        await _send_opened(client, source, target, opened, keep_mtime, reporter, waiting,
                           failed, resume)


def _open(source: str, target: str, reporter: Reporter,
          failed: list[Outcome]) -> tuple[int, os.stat_result] | None:
    try:
        return open_local_file(source)
    except StorageError as exc:
        reporter.done(target)
        failed.append(Outcome(source, target, 0, exc))
        return None


def _sent_at_once(client: FerryClient, source: str, target: str,
                  opened: tuple[int, os.stat_result], keep_mtime: bool, reporter: Reporter,
                  waiting: list[_Waiting], failed: list[Outcome]) -> bool:
    """A small file queued without waiting for anything (no coroutine per file in a
    tree of small files); False when it needs ``_send_opened`` (nothing done then)."""
    size = opened[1].st_size
    if not client.puts.can_put_at_once(target, size):
        return False
    progress = reporter.progress_for(target, source, size)
    try:
        future = client.puts.put_at_once(source, target, opened, keep_mtime)
    except StorageError as exc:
        reporter.done(target)
        failed.append(Outcome(source, target, 0, exc))
        return True
    if progress:
        progress(size)
    waiting.append(_Waiting(source, target, size, future))
    return True


async def _send_opened(client: FerryClient, source: str, target: str,
                       opened: tuple[int, os.stat_result], keep_mtime: bool,
                       reporter: Reporter, waiting: list[_Waiting],
                       failed: list[Outcome], resume: bool) -> None:
    report = None
    size = opened[1].st_size
    try:
        progress = reporter.progress_for(target, source, size)
        if resume:
            os.close(opened[0])
            future, report = await client.puts.start_put_resumable(
                source, target, keep_mtime=keep_mtime, progress=progress)
        else:
            future = await client.puts.start_put(source, target, keep_mtime=keep_mtime,
                                            progress=progress, opened=opened)
    except StorageError as exc:
        reporter.done(target)
        failed.append(Outcome(source, target, 0, exc))
        return
    waiting.append(_Waiting(source, target, size, future, resume=report))


async def _remote_entries(client: FerryClient, path: str,
                          recursive: bool = True) -> dict[str, Entry]:
    """What the server has at ``path`` (relative paths; "" for a file itself), or {}."""
    return await _entries_found(await client.start_list(path, recursive), recursive)


async def _entries_found(listing: asyncio.Future[object],
                         recursive: bool = True) -> dict[str, Entry]:
    """The answer to a LIST started with ``client.start_list``, as ``_remote_entries``."""
    try:
        entries = await listing
    except PeerRefused as exc:
        if exc.code == ErrorCode.NOT_FOUND:
            return {}
        raise
    assert isinstance(entries, list)
    if len(entries) == 1 and entries[0].kind is not Kind.DIRECTORY and not recursive:
        return {"": entries[0]}
    return {entry.path: entry for entry in entries}


def _skipped(local: Entry, there: Entry | None, source: str, target: str,
             sync: SyncOptions, failed: list[Outcome], same: bool = False) -> bool:
    """--update, --checksum and -n: whether this file is left alone (its outcome
    recorded); ``same``: --checksum found its size and digest equal on both sides."""
    if same if sync.checksum else sync.update and unchanged(local, there):
        failed.append(Outcome(source, target, local.size, unchanged=True))
        return True
    if sync.dry_run:
        failed.append(Outcome(source, target, local.size, dry_run=True))
        return True
    return False


async def _single_skipped(client: FerryClient, source: str, target: str,
                          st: os.stat_result, sync: SyncOptions,
                          failed: list[Outcome]) -> bool:
    """--update, --checksum, -n for one file given by name: whether it is left alone."""
    local = Entry.from_stat("", st)
    there = await _remote_entries(client, target, recursive=False) \
        if sync.update or sync.checksum else {}
    same = await _identical(client, _checksum_candidates(
        [local], there, lambda _rel: source, lambda _rel: target)) if sync.checksum else set()
    return _skipped(local, there.get(""), source, target, sync, failed, "" in same)


async def _send_tree(client: FerryClient, source: str, target: str, keep_mtime: bool,
                     reporter: Reporter, waiting: list[_Waiting],
                     failed: list[Outcome], resume: bool = False,
                     sync: SyncOptions = NO_SYNC) -> None:
    def on_error(exc: OSError) -> None:
        failed.append(Outcome(exc.filename or source, target, 0,
                              storage_error(exc, exc.filename or source)))

    if sync.links and not client.can_link and not sync.dry_run:
        raise UsageError("this server cannot make symbolic links (it predates -l); run it "
                         "without -l")
    walk: Iterable[_Directory] = _walk_tree(source, sync.filters, on_error)
    stats: dict[str, os.stat_result] = {}
    local_tree: list[Entry] = []
    there: dict[str, Entry] = {}
    if sync.update or sync.delete or sync.checksum:
        # the server walks its tree while this side walks and stats its own
        listing = await client.start_list(target, recursive=True)
        walk = list(walk)
        stats = _stats_of(walk) if sync.update else {}
        local_tree = sync.filters.select(_local_tree(source)) \
            if sync.delete or sync.checksum else []
        there = await _entries_found(listing)
    same: set[str] = set()
    if sync.delete:
        await _delete_remote(client, target, there, local_tree, sync, waiting, failed)
    if sync.checksum:
        same = await _identical(client, _checksum_candidates(
            local_tree, there, lambda rel: os.path.join(source, *rel.split("/")),
            lambda rel: posixpath.join(target, rel)))
    judged = sync.update or sync.dry_run or sync.checksum or bool(sync.filters.rules)
    for directory, rel_prefix, subdirs, files in walk:
        remote_dir = target if not rel_prefix else posixpath.join(target, rel_prefix[:-1])
        mode = stat.S_IMODE(os.stat(directory).st_mode)
        if not sync.dry_run and (not rel_prefix or rel_prefix[:-1] not in there):
            future = await client.start_mkdir(remote_dir, mode)
            waiting.append(_Waiting(directory, remote_dir, 0, future, is_directory=True))
        local_prefix = directory + os.sep if not directory.endswith(os.sep) else directory
        remote_prefix = remote_dir + "/" if remote_dir and not remote_dir.endswith("/") \
            else remote_dir
        plain = await _send_links(client, subdirs, files, (local_prefix, rel_prefix,
                                                           remote_prefix), sync, waiting,
                                  failed)
        for name in plain:  # plain concatenation: path.join per file adds up
            local, remote = local_prefix + name, remote_prefix + name
            if judged and _judged_away(local, rel_prefix + name, remote, there, sync,
                                       failed, rel_prefix + name in same, stats.get(local)):
                continue
            opened = _open(local, remote, reporter, failed)
            if opened is None or (not resume and _sent_at_once(
                    client, local, remote, opened, keep_mtime, reporter, waiting, failed)):
                continue
            await _send_opened(client, local, remote, opened, keep_mtime, reporter, waiting,
                               failed, resume)


# One directory of a local tree as the walk meets it: its path, its path relative to
# the top ("" or ending in "/"), and its subdirectories (sorted) and other names.
_Directory = tuple[str, str, list[str], list[str]]


def _walk_tree(top: str, filters: Filters,
               on_error: Callable[[OSError], None]) -> Iterator[_Directory]:
    """The directories under ``top``, parents first; excluded ones are not entered."""
    for directory, subdirs, files in os.walk(top, onerror=on_error):
        rel = os.path.relpath(directory, top)
        rel_prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        if filters.rules:
            subdirs[:] = [d for d in subdirs if not filters.excluded(rel_prefix + d, True)]
        subdirs.sort()
        yield directory, rel_prefix, subdirs, files


def _stats_of(walk: list[_Directory]) -> dict[str, os.stat_result]:
    """lstat of every non-directory name of a walked tree, by local path (those that
    vanished are left out: opening them reports it)."""
    stats: dict[str, os.stat_result] = {}
    for directory, _rel, _subdirs, files in walk:
        prefix = directory + os.sep if not directory.endswith(os.sep) else directory
        for name in files:
            with contextlib.suppress(OSError):
                stats[prefix + name] = os.lstat(prefix + name)
    return stats


def _judged_away(local: str, rel: str, remote: str, there: dict[str, Entry],
                 sync: SyncOptions, failed: list[Outcome], same: bool = False,
                 st: os.stat_result | None = None) -> bool:
    """Filters, --update, --checksum, -n: whether the file ``local`` is left alone;
    ``st``: its lstat if taken already."""
    if sync.filters.rules and sync.filters.excluded(rel, False):
        return True
    if st is None:
        try:
            st = os.lstat(local)
        except OSError:
            return False  # _open reports it
    return _skipped(Entry.from_stat(rel, st), there.get(rel), local, remote, sync, failed,
                    same)


async def _delete_remote(client: FerryClient, target: str, there: dict[str, Entry],
                         local_tree: list[Entry], sync: SyncOptions,
                         waiting: list[_Waiting], failed: list[Outcome]) -> None:
    """send --delete: remove what the local (filtered) tree lacks from the server's tree
    at ``target``, before anything is sent (a name that changes kind is replaced); a
    directory goes with everything in it, children first, all in one round trip.
    ``there`` loses what is removed."""
    if not client.can_sync and not sync.dry_run:
        raise UsageError("this server cannot remove files (it predates send --delete); "
                         "run it without --delete")
    plan = extraneous(list(there.values()),
                      {e.path: e.kind is Kind.DIRECTORY for e in local_tree}, sync.filters)
    for deletion in plan:
        below = [path for path in there if path.startswith(deletion.path + "/")] \
            if deletion.is_directory else []
        for path in [*reversed(below), deletion.path]:
            remote = posixpath.join(target, path)
            directory = there[path].kind is Kind.DIRECTORY
            del there[path]
            if sync.dry_run:
                if path == deletion.path:
                    failed.append(Outcome(remote, remote, 0, deleted=True, dry_run=True))
                continue
            future = await client.start_delete(remote, directory)
            waiting.append(_Waiting(remote, remote, 0, future, is_directory=directory,
                                    deleted=True))


async def _send_links(client: FerryClient, subdirs: list[str], files: list[str],
                      prefixes: tuple[str, str, str], sync: SyncOptions,
                      waiting: list[_Waiting], failed: list[Outcome]) -> list[str]:
    """The links among one directory's names: never walked into (no loops), sent as
    links with -l, else skipped if they lead to directories; the files left to send,
    sorted.  ``prefixes``: the directory as a local, relative and remote prefix."""
    local_prefix, rel_prefix, remote_prefix = prefixes
    directory_links = [d for d in subdirs if os.path.islink(local_prefix + d)]
    for name in directory_links:
        subdirs.remove(name)
    if not sync.links:
        failed += [Outcome(local_prefix + name, "", 0, StorageError(
            f"{local_prefix + name} is a link to a directory; skipped (-l copies links as "
            "links)"), skipped=True) for name in directory_links]
        return sorted(files)
    file_links = [n for n in files if os.path.islink(local_prefix + n)]
    for name in sorted(directory_links + file_links):
        await _send_link(client, local_prefix + name, rel_prefix + name,
                         remote_prefix + name, sync, waiting, failed)
    return sorted(set(files) - set(file_links))


async def _send_link(client: FerryClient, local: str, rel: str, remote: str,
                     sync: SyncOptions, waiting: list[_Waiting],
                     failed: list[Outcome]) -> None:
    """send -l: a symbolic link of the tree made a link on the server — when its target
    stays inside the copied tree (else it is skipped, and said so)."""
    if sync.filters.excluded(rel, False):
        return
    try:
        target = os.readlink(local)
    except OSError as exc:
        failed.append(Outcome(local, remote, 0, storage_error(exc, local)))
        return
    problem = link_target_problem(target, rel.count("/"))
    if problem is not None:
        failed.append(Outcome(local, remote, 0, StorageError(
            f"{local}: {problem} is not copied (-l keeps links inside the copied tree "
            "only); skipped"), skipped=True))
        return
    if sync.dry_run:
        failed.append(Outcome(local, remote, 0, dry_run=True))
        return
    future = await client.start_symlink(remote, target)
    waiting.append(_Waiting(local, remote, 0, future))


def _checksum_candidates(sender: list[Entry], receiver: dict[str, Entry],
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


async def _identical(client: FerryClient, candidates: list[tuple[str, str, str]],
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


# ---- get -------------------------------------------------------------------------------


def safe_relative(path: str) -> list[str]:
    """Components of a relative path from the server, refusing anything that climbs.

    A malicious server must not be able to write outside the destination by listing
    ``../x`` or ``/etc/x`` (the scp flaw of CVE-2019-6111).
    """
    parts = split_client_path(path)
    if not parts or ".." in parts:
        raise PathRefused(f"the server listed an unsafe path '{path}'; skipped", path=path)
    return parts


async def get_paths(client: FerryClient, sources: list[str], dest: str, *,
                    recursive: bool, keep_mtime: bool,
                    reporter: Reporter | None = None, resume: bool = False,
                    sync: SyncOptions = NO_SYNC) -> list[Outcome]:
    reporter = reporter or Reporter()
    into_directory = os.path.isdir(dest)
    if dest.endswith("/") and not into_directory:
        raise UsageError(f"local directory {dest} does not exist")
    if len(sources) > 1 and not into_directory:
        raise UsageError(f"{dest} is not a directory — several sources need a directory "
                         "as destination")
    waiting: list[_Waiting] = []
    failed: list[Outcome] = []
    sources = await _expanded(client, sources, failed)
    if len(sources) > 1 and not into_directory:
        raise UsageError(f"{dest} is not a directory — the sources match several files, "
                         "which need a directory as destination")
    for source in sources:
        name = posixpath.basename(source.rstrip("/"))
        target = os.path.join(dest, name) if into_directory else dest
        try:
            entry = await client.stat(source)
        except PeerRefused as exc:
            failed.append(Outcome(source, target, 0, exc))
            continue
        if entry.kind is Kind.DIRECTORY:
            if not recursive:
                failed.append(Outcome(source, target, 0, PeerRefused(
                    f"'{source}' is a directory on the server (use -r to copy trees)")))
                continue
            await _get_tree(client, source, entry, target, keep_mtime, reporter, waiting,
                            failed, resume, sync)
        elif entry.kind is Kind.FILE:
            if _skipped(entry, _local_entry(target), source, target, sync, failed):
                continue
            try:
                await _get_one(client, source, target, entry.size, keep_mtime, reporter,
                               waiting, resume)
            except StorageError as exc:
                failed.append(Outcome(source, target, 0, exc))
        else:
            failed.append(Outcome(source, target, 0, PeerRefused(
                f"'{source}' is not a regular file on the server")))
    return await _settled(client, waiting, failed, reporter)


async def _get_one(client: FerryClient, source: str, target: str, size: int,
                   keep_mtime: bool, reporter: Reporter, waiting: list[_Waiting],
                   resume: bool = False) -> None:
    progress = reporter.progress_for(target, source, size)
    report = None
    try:
        if resume:
            future, report = await client.gets.start_get_resumable(
                source, target, keep_mtime=keep_mtime, progress=progress)
        else:
            future = await client.gets.start_get(source, target, keep_mtime=keep_mtime,
                                            progress=progress)
    except StorageError:
        reporter.done(target)
        raise
    waiting.append(_Waiting(source, target, size, future, resume=report))


async def _expanded(client: FerryClient, sources: list[str],
                    failed: list[Outcome]) -> list[str]:
    """Remote globs (``host:'logs/*.gz'``) replaced by the paths they match, sorted, as a
    shell would; the server's listings are matched here, so the server never needs to
    know glob syntax and still shows nothing outside its root.  A pattern that matches
    nothing is a failed outcome of its own.  ``\\`` escapes a glob character."""
    expanded: list[str] = []
    for source in sources:
        if not has_glob(source):
            expanded.append(unescape(source))
            continue
        matches = await _glob(client, source)
        if not matches:
            failed.append(Outcome(source, source, 0, PeerRefused(
                f"no file on the server matches '{source}'", code=ErrorCode.NOT_FOUND)))
        expanded += matches
    return expanded


async def _glob(client: FerryClient, pattern: str) -> list[str]:
    """The paths matching ``pattern``, one listing per directory a glob component
    looks into (the last component matches any kind, the others directories)."""
    parts = [p for p in pattern.split("/") if p not in ("", ".")]
    paths = [""]
    for depth, part in enumerate(parts):
        if not has_glob(part):
            paths = [posixpath.join(path, unescape(part)) for path in paths]
            continue
        matcher, last = name_matcher(part), depth == len(parts) - 1
        found: list[str] = []
        for path in paths:
            try:
                entries = await client.list(path)
            except PeerRefused:
                continue  # no such directory: nothing matches below it
            found += sorted(posixpath.join(path, e.path) for e in entries
                            if e.path and "/" not in e.path and matcher.fullmatch(e.path)
                            and (last or e.kind is Kind.DIRECTORY))
        paths = found
    return paths


async def _get_links(client: FerryClient, links: list[tuple[str, str, str]],
                     sync: SyncOptions, failed: list[Outcome]) -> None:
    """get -l: every link's target asked for at once (one round trip), then each made a
    local link — when it stays inside the copied tree (a server's word is held to that
    as a path is: CVE-2019-6111)."""
    if not client.can_link:
        failed += [Outcome(remote, local, 0, UsageError(
            f"'{remote}' is a link and this server cannot read links (it predates -l)"))
            for _rel, remote, local in links]
        return
    asked = [(rel, remote, local, await client.start_readlink(remote))
             for rel, remote, local in links]
    await client.flush()
    for rel, remote, local, future in asked:
        try:
            target = await future
        except PeerRefused as exc:  # PERMISSION: it points out of the server's root
            failed.append(Outcome(remote, local, 0, PeerRefused(
                f"{exc}; skipped", code=exc.code), skipped=exc.code == ErrorCode.PERMISSION))
            continue
        except SockferryError as exc:
            failed.append(Outcome(remote, local, 0, exc))
            continue
        assert isinstance(target, str)
        problem = link_target_problem(target, rel.count("/"))
        if problem is not None:
            failed.append(Outcome(remote, local, 0, PeerRefused(
                f"'{remote}': {problem} is not copied (-l keeps links inside the copied "
                "tree only); skipped"), skipped=True))
        elif sync.dry_run:
            failed.append(Outcome(remote, local, 0, dry_run=True))
        else:
            try:
                _make_local_link(local, target)
            except StorageError as exc:
                failed.append(Outcome(remote, local, 0, exc))
            else:
                failed.append(Outcome(remote, local, 0))


def _make_local_link(path: str, target: str) -> None:
    """``path`` made a link to ``target`` at once (a temporary link renamed over it); a
    directory there is not replaced."""
    if os.path.isdir(path) and not os.path.islink(path):
        raise StorageError(f"{path} is a directory; the link is not made", errno=errno.EISDIR,
                           path=path)
    temporary = os.path.join(os.path.dirname(path),
                             f".sockferry-link-{os.urandom(8).hex()}.part")
    try:
        os.symlink(target, temporary)
        os.replace(temporary, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise storage_error(exc, path) from exc


def _make_local_dir(path: str, mode: int) -> None:
    try:
        os.makedirs(path, mode=mode | 0o700, exist_ok=True)
    except OSError as exc:
        raise storage_error(exc, path) from exc


def _local_tree(top: str) -> list[Entry]:
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


def _delete_extraneous(target: str, wanted: list[Entry], sync: SyncOptions,
                       failed: list[Outcome]) -> None:
    """get --delete: remove what the server's (filtered) tree lacks, inside ``target``
    only; links are removed, never followed; -n only says so."""
    plan = extraneous(_local_tree(target), {e.path: e.kind is Kind.DIRECTORY for e in wanted},
                      sync.filters)
    for deletion in plan:
        local = os.path.join(target, *deletion.path.split("/"))
        if not sync.dry_run:
            try:
                if deletion.is_directory:
                    shutil.rmtree(local)  # fd-based: links inside are not followed
                else:
                    os.unlink(local)
            except OSError as exc:
                failed.append(Outcome(local, local, 0, storage_error(exc, local)))
                continue
        failed.append(Outcome(local, local, 0, deleted=True, dry_run=sync.dry_run))


def _local_entry(path: str) -> Entry | None:
    try:
        return Entry.from_stat(path, os.stat(path))
    except OSError:
        return None


async def _identical_in_tree(client: FerryClient, source: str, target: str,
                             entries: list[Entry]) -> set[str]:
    """get --checksum: the names of the server's tree whose local copy is identical."""
    # Only names found in the local tree are candidates: none of them climbs.
    mine = {e.path: e for e in _local_tree(target)} if os.path.isdir(target) else {}
    return await _identical(client, _checksum_candidates(
        entries, mine, lambda rel: os.path.join(target, *rel.split("/")),
        lambda rel: posixpath.join(source, rel)))


async def _get_tree(client: FerryClient, source: str, top: Entry, target: str,
                    keep_mtime: bool, reporter: Reporter, waiting: list[_Waiting],
                    failed: list[Outcome], resume: bool = False,
                    sync: SyncOptions = NO_SYNC) -> None:
    try:
        if not sync.dry_run:
            _make_local_dir(target, top.mode & 0o777)
        entries = sync.filters.select(await client.list(source, recursive=True))
        if sync.delete:
            _delete_extraneous(target, entries, sync, failed)
    except (StorageError, PeerRefused) as exc:
        failed.append(Outcome(source, target, 0, exc))
        return
    same = await _identical_in_tree(client, source, target, entries) if sync.checksum \
        else set()
    links: list[tuple[str, str, str]] = []  # -l: (relative path, remote, local)
    for entry in entries:
        remote = posixpath.join(source, entry.path)
        try:
            local = os.path.join(target, *safe_relative(entry.path))
            if entry.kind is Kind.DIRECTORY:
                if not sync.dry_run:
                    _make_local_dir(local, entry.mode & 0o777)
            elif entry.kind is Kind.FILE:
                if (sync.update or sync.dry_run or sync.checksum) and _skipped(
                        entry, _local_entry(local) if sync.update else None, remote, local,
                        sync, failed, entry.path in same):
                    continue
                await _get_one(client, remote, local, entry.size, keep_mtime, reporter,
                               waiting, resume)
            elif entry.kind is Kind.SYMLINK and sync.links:
                links.append((entry.path, remote, local))
            else:
                failed.append(Outcome(remote, local, 0, PeerRefused(
                    f"'{remote}' is a {entry.kind.value} on the server; skipped"
                    f"{' (-l copies links as links)' if entry.kind is Kind.SYMLINK else ''}"),
                    skipped=True))
        except StorageError as exc:
            failed.append(Outcome(remote, target, 0, exc))
    if links:
        await _get_links(client, links, sync, failed)
