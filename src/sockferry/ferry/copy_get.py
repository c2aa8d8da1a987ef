"""``get``: remote files, globs and trees (``-r``) into local paths, with --update,
--checksum, --delete, -l and -n; nothing the server lists may climb out of the
destination."""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath

from sockferry.entries import Entry, Kind
from sockferry.errors import PathRefused, PeerRefused, SockferryError, StorageError, UsageError
from sockferry.ferry.client import FerryClient
from sockferry.ferry.copying import (
    NO_SYNC,
    Outcome,
    Reporter,
    SyncOptions,
    Waiting,
    checksum_candidates,
    identical,
    local_entries,
    settled,
    skipped,
)
from sockferry.ferry.messages import ErrorCode
from sockferry.ferry.sync import (
    extraneous,
    has_glob,
    name_matcher,
    unescape,
)
from sockferry.sockets import storage_error
from sockferry.storage.names import link_target_problem, split_client_path


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
                    sync: SyncOptions = NO_SYNC,
                    into_directory: bool | None = None) -> list[Outcome]:
    """``into_directory``: whether the sources go under ``dest`` by their own names
    (None: when ``dest`` is a directory now; a retry passes what the first attempt found,
    since that attempt may have made it)."""
    reporter = reporter or Reporter()
    if into_directory is None:
        into_directory = os.path.isdir(dest)
    if dest.endswith("/") and not into_directory:
        raise UsageError(f"local directory {dest} does not exist")
    if len(sources) > 1 and not into_directory:
        raise UsageError(f"{dest} is not a directory — several sources need a directory "
                         "as destination")
    waiting: list[Waiting] = []
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
            if skipped(entry.size, entry.mtime_ns, _local_entry(target), source, target,
                       sync, failed):
                continue
            try:
                await _get_one(client, source, target, entry.size, keep_mtime, reporter,
                               waiting, resume)
            except StorageError as exc:
                failed.append(Outcome(source, target, 0, exc))
        else:
            failed.append(Outcome(source, target, 0, PeerRefused(
                f"'{source}' is not a regular file on the server")))
    return await settled(client, waiting, failed, reporter)


async def _get_one(client: FerryClient, source: str, target: str, size: int,
                   keep_mtime: bool, reporter: Reporter, waiting: list[Waiting],
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
    waiting.append(Waiting(source, target, size, future, resume=report))


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


def _delete_extraneous(target: str, wanted: list[Entry], sync: SyncOptions,
                       failed: list[Outcome]) -> None:
    """get --delete: remove what the server's (filtered) tree lacks, inside ``target``
    only; links are removed, never followed; -n only says so."""
    plan = extraneous(local_entries(target), {e.path: e.kind is Kind.DIRECTORY for e in wanted},
                      sync.filters)
    for deletion in plan:
        local = os.path.join(target, *deletion.path.split("/"))
        if not sync.dry_run:
            try:
                if deletion.is_directory:
                    import shutil  # noqa: PLC0415 - only --delete needs it (and bz2, lzma)

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
    mine = {e.path: e for e in local_entries(target)} if os.path.isdir(target) else {}
    return await identical(client, checksum_candidates(
        entries, mine, lambda rel: os.path.join(target, *rel.split("/")),
        lambda rel: posixpath.join(source, rel)))


async def _get_tree(client: FerryClient, source: str, top: Entry, target: str,
                    keep_mtime: bool, reporter: Reporter, waiting: list[Waiting],
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
    ungot = [e for e in entries if posixpath.join(source, e.path) not in sync.done] \
        if sync.done else entries
    same = await _identical_in_tree(client, source, target, ungot) if sync.checksum \
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
                if (sync.update or sync.dry_run or sync.checksum) and skipped(
                        entry.size, entry.mtime_ns,
                        _local_entry(local) if sync.update else None, remote, local, sync,
                        failed, entry.path in same):
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
