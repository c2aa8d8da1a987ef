"""``send``: local files and trees (``-r``, the tree walk) to the server, with
--update, --checksum, --delete, -l and -n; and one file or a stream as exactly a remote
name (``send -``)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import posixpath
import stat
from collections.abc import Callable, Container, Iterable, Iterator

from sockferry.entries import Entry, Kind
from sockferry.errors import (
    NetworkError,
    PeerRefused,
    StorageError,
    TransferTimeout,
    UsageError,
)
from sockferry.ferry.client import FerryClient
from sockferry.ferry.copying import (
    NO_SYNC,
    Outcome,
    Reporter,
    SyncOptions,
    Waiting,
    checksum_candidates,
    identical,
    left_alone,
    local_entries,
    settled,
    skipped,
)
from sockferry.ferry.messages import ErrorCode
from sockferry.ferry.puts import open_local_file
from sockferry.ferry.quick_check import Directory, QuickCheck, tree_dir
from sockferry.ferry.sync import (
    Filters,
    extraneous,
)
from sockferry.sockets import storage_error
from sockferry.storage.names import link_target_problem


async def remote_is_directory(client: FerryClient, path: str) -> bool:
    """Whether ``send`` puts its sources under ``path`` by their own names."""
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
                     sync: SyncOptions = NO_SYNC,
                     into_directory: bool | None = None) -> list[Outcome]:
    """``into_directory``: as in ``get_paths``, decided on the server when None."""
    reporter = reporter or Reporter()
    if into_directory is None:
        into_directory = await remote_is_directory(client, dest)
    if len(sources) > 1 and not into_directory:
        raise UsageError(f"'{dest}' is not a directory on the server — several sources "
                         "need a directory as destination")
    waiting: list[Waiting] = []
    failed: list[Outcome] = []
    try:
        for source in sources:
            target = posixpath.join(dest, _local_name(source)) if into_directory else dest
            await _send_source(client, source, target, recursive, keep_mtime, reporter,
                               waiting, failed, resume, sync)
    except (NetworkError, TransferTimeout) as exc:
        # The server was lost: what it answered before stands (a --retry leaves those
        # files alone), and the loss is this copy's one error, not one per file.
        failed.append(Outcome(dest, dest, 0, exc))
        return await settled(client, waiting, failed, reporter, lost=True)
    return await settled(client, waiting, failed, reporter)


async def _send_source(client: FerryClient, source: str, target: str, recursive: bool,
                       keep_mtime: bool, reporter: Reporter, waiting: list[Waiting],
                       failed: list[Outcome], resume: bool, sync: SyncOptions) -> None:
    """Start sending one source given on the command line: a file, or a tree with -r."""
    try:
        st = os.stat(source)
    except OSError as exc:
        failed.append(Outcome(source, target, 0, storage_error(exc, source)))
        return
    if stat.S_ISDIR(st.st_mode):
        if not recursive:
            failed.append(Outcome(source, target, 0, StorageError(
                f"'{source}' is a directory (use -r to copy trees)", errno=errno.EISDIR)))
            return
        await _send_tree(client, source, target, keep_mtime, reporter, waiting, failed,
                         resume, sync)
    elif (sync.dry_run or sync.update or sync.checksum) and await _single_skipped(
            client, source, target, st, sync, failed):
        return
    else:
        await _send_one(client, source, target, keep_mtime, reporter, waiting, failed,
                        resume)


async def send_file_as(client: FerryClient, source: str, label: str, dest: str, *,
                       reporter: Reporter | None = None) -> list[Outcome]:
    """Send the one file ``source`` to exactly the remote path ``dest`` (never into a
    directory of that name): ``send -`` sends its spooled standard input so."""
    reporter = reporter or Reporter()
    if await remote_is_directory(client, dest):
        raise UsageError(f"'{dest or '.'}' is a directory on the server — give the file a "
                         "name: HOST:DIR/NAME")
    waiting: list[Waiting] = []
    failed: list[Outcome] = []
    await _send_one(client, source, dest, False, reporter, waiting, failed)
    outcomes = await settled(client, waiting, failed, reporter)
    return [Outcome(label, o.target, o.size, o.error, o.is_directory, o.skipped, o.resumed,
                    o.resume_note) for o in outcomes]


async def send_stream_as(client: FerryClient, fd: int, label: str, dest: str, *,
                         reporter: Reporter | None = None) -> list[Outcome]:
    """Send what ``fd`` yields until its end as exactly the remote file ``dest``, as a
    streamed PUT (the server must take STREAM: ``client.can_stream``): ``send -``."""
    reporter = reporter or Reporter()
    if await remote_is_directory(client, dest):
        raise UsageError(f"'{dest or '.'}' is a directory on the server — give the file a "
                         "name: HOST:DIR/NAME")
    failed: list[Outcome] = []
    waiting: list[Waiting] = []
    progress = reporter.progress_for(dest, label, None)
    try:
        future = await client.puts.start_put_stream(fd, dest, shown=label, progress=progress)
    except StorageError as exc:
        reporter.done(dest)
        failed.append(Outcome(label, dest, 0, exc))
    else:
        waiting.append(Waiting(label, dest, 0, future))
    [outcome] = await settled(client, waiting, failed, reporter)
    if outcome.error is None:  # the size the server committed (it checked it is ours)
        size = waiting[0].future.result()
        assert isinstance(size, int)
        outcome = Outcome(label, dest, size)
    return [outcome]


async def _send_one(client: FerryClient, source: str, target: str, keep_mtime: bool,
                    reporter: Reporter, waiting: list[Waiting],
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
                  waiting: list[Waiting], failed: list[Outcome]) -> bool:
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
    waiting.append(Waiting(source, target, size, future))
    return True


async def _send_opened(client: FerryClient, source: str, target: str,
                       opened: tuple[int, os.stat_result], keep_mtime: bool,
                       reporter: Reporter, waiting: list[Waiting],
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
    waiting.append(Waiting(source, target, size, future, resume=report))


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


async def _single_skipped(client: FerryClient, source: str, target: str,
                          st: os.stat_result, sync: SyncOptions,
                          failed: list[Outcome]) -> bool:
    """--update, --checksum, -n for one file given by name: whether it is left alone."""
    if source in sync.done:
        return True
    local = Entry.from_stat("", st)
    there = await _remote_entries(client, target, recursive=False) \
        if sync.update or sync.checksum else {}
    same = await identical(client, checksum_candidates(
        [local], there, lambda _rel: source, lambda _rel: target)) if sync.checksum else set()
    return skipped(local.size, local.mtime_ns, there.get(""), source, target, sync, failed,
                   "" in same)


async def _send_tree(client: FerryClient, source: str, target: str, keep_mtime: bool,
                     reporter: Reporter, waiting: list[Waiting],
                     failed: list[Outcome], resume: bool = False,
                     sync: SyncOptions = NO_SYNC) -> None:
    def on_error(exc: OSError) -> None:
        failed.append(Outcome(exc.filename or source, target, 0,
                              storage_error(exc, exc.filename or source)))

    if sync.links and not client.can_link and not sync.dry_run:
        raise UsageError("this server cannot make symbolic links (it predates -l); run it "
                         "without -l")
    walk: Iterable[Directory] = _walk_tree(source, sync.filters, on_error)
    stats: dict[str, os.stat_result] = {}
    local_tree: list[Entry] = []
    there: dict[str, Entry] = {}
    present: Container[str] = there  # the remote directories there are (relative paths)
    quick: QuickCheck | None = None  # the server's quick check, when it makes one
    checked: dict[str, int] | None = None
    if sync.update and not (sync.delete or sync.checksum) and client.can_quick_check:
        quick = QuickCheck()
        walk = await quick.ask(client, walk, target)
        checked, present = quick.unchanged, quick.present
    elif sync.update or sync.delete or sync.checksum:
        # the server walks its tree while this side walks and stats its own
        listing = await client.start_list(target, recursive=True)
        walk = list(walk)
        stats = _stats_of(walk) if sync.update else {}
        local_tree = sync.filters.select(local_entries(source)) \
            if sync.delete or sync.checksum else []
        there = await _entries_found(listing)
    if sync.delete:
        await _delete_remote(client, target, there, local_tree, sync, waiting, failed)
    same = await _same_digests(client, source, target, local_tree, there, sync) \
        if sync.checksum else set()
    judged = sync.update or sync.dry_run or sync.checksum or bool(sync.filters.rules)
    # the server's quick check answered, and nothing else to judge by: a file it has
    # unchanged is one lookup (the loop's common case in a no-op --update of a tree)
    unchanged = checked if checked is not None and not (sync.filters.rules or sync.done) \
        else {}
    for index, (directory, rel_prefix, subdirs, files) in enumerate(walk):
        if quick is not None:
            await quick.answered(index)
        remote_dir = tree_dir(target, rel_prefix)
        mode = stat.S_IMODE(os.stat(directory).st_mode)
        if not sync.dry_run and (not rel_prefix or rel_prefix[:-1] not in present):
            future = await client.start_mkdir(remote_dir, mode)
            waiting.append(Waiting(directory, remote_dir, 0, future, is_directory=True))
        local_prefix = directory + os.sep if not directory.endswith(os.sep) else directory
        remote_prefix = remote_dir + "/" if remote_dir and not remote_dir.endswith("/") \
            else remote_dir
        plain = await _send_links(client, subdirs, files, (local_prefix, rel_prefix,
                                                           remote_prefix), sync, waiting,
                                  failed)
        for name in plain:  # plain concatenation: path.join per file adds up
            local, remote = local_prefix + name, remote_prefix + name
            size = unchanged.get(local)
            if size is not None:
                failed.append(Outcome(local, remote, size, unchanged=True))
                continue
            if judged and _judged_away(local, rel_prefix + name, remote, there, sync,
                                       failed, rel_prefix + name in same, stats.get(local),
                                       checked):
                continue
            opened = _open(local, remote, reporter, failed)
            if opened is None or (not resume and _sent_at_once(
                    client, local, remote, opened, keep_mtime, reporter, waiting, failed)):
                continue
            await _send_opened(client, local, remote, opened, keep_mtime, reporter, waiting,
                               failed, resume)


async def _same_digests(client: FerryClient, source: str, target: str,
                        local_tree: list[Entry], there: dict[str, Entry],
                        sync: SyncOptions) -> set[str]:
    """--checksum: the relative paths of the tree whose digests match on both sides."""
    def local_path(rel: str) -> str:
        return os.path.join(source, *rel.split("/"))

    unsent = [e for e in local_tree if local_path(e.path) not in sync.done] \
        if sync.done else local_tree
    return await identical(client, checksum_candidates(
        unsent, there, local_path, lambda rel: posixpath.join(target, rel)))


def _walk_tree(top: str, filters: Filters,
               on_error: Callable[[OSError], None]) -> Iterator[Directory]:
    """The directories under ``top``, parents first; excluded ones are not entered."""
    for directory, subdirs, files in os.walk(top, onerror=on_error):
        rel = os.path.relpath(directory, top)
        rel_prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        if filters.rules:
            subdirs[:] = [d for d in subdirs if not filters.excluded(rel_prefix + d, True)]
        subdirs.sort()
        yield directory, rel_prefix, subdirs, files


def _stats_of(walk: list[Directory]) -> dict[str, os.stat_result]:
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
                 st: os.stat_result | None = None,
                 checked: dict[str, int] | None = None) -> bool:
    """Filters, --update, --checksum, -n: whether the file ``local`` is left alone;
    ``st``: its lstat if taken already; ``checked``: the size of each file the server's
    quick check found unchanged (then ``there`` is not looked at)."""
    if sync.filters.rules and sync.filters.excluded(rel, False):
        return True
    if checked is not None:
        size = checked.get(local)
        return left_alone(local, remote, size or 0, size is not None, sync, failed)
    if st is None:
        try:
            st = os.lstat(local)
        except OSError:
            return False  # _open reports it
    size = st.st_size if stat.S_ISREG(st.st_mode) else 0  # as Entry.from_stat says
    return skipped(size, st.st_mtime_ns, there.get(rel), local, remote, sync, failed, same)


async def _delete_remote(client: FerryClient, target: str, there: dict[str, Entry],
                         local_tree: list[Entry], sync: SyncOptions,
                         waiting: list[Waiting], failed: list[Outcome]) -> None:
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
            waiting.append(Waiting(remote, remote, 0, future, is_directory=directory,
                                    deleted=True))


async def _send_links(client: FerryClient, subdirs: list[str], files: list[str],
                      prefixes: tuple[str, str, str], sync: SyncOptions,
                      waiting: list[Waiting], failed: list[Outcome]) -> list[str]:
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
                     sync: SyncOptions, waiting: list[Waiting],
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
    waiting.append(Waiting(local, remote, 0, future))
