"""``sockferry send``, ``get`` and ``ls``: an authenticated client, the copy, and what
the user reads about it."""

from __future__ import annotations

import argparse
import contextlib
import os
import stat
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from sockferry.addresses import Address, HostPort, UnixPath
from sockferry.cli.console import Console, TransferProgress
from sockferry.cli.remotes import Remote, parse_remote, split_remote
from sockferry.cli.runtime import ExitCode, exit_code_for, run_async
from sockferry.entries import Entry, Kind
from sockferry.errors import AuthenticationFailed, SockferryError, UsageError
from sockferry.ferry.bodies import Progress
from sockferry.ferry.client import FerryClient
from sockferry.ferry.copy_get import get_paths
from sockferry.ferry.copy_send import (
    remote_is_directory,
    send_file_as,
    send_paths,
    send_stream_as,
)
from sockferry.ferry.copying import Outcome, Reporter, SyncOptions
from sockferry.ferry.inflight import NO_RESUME
from sockferry.ferry.trust import client_trust
from sockferry.sockets import storage_error
from sockferry.units import format_bytes, format_rate

if TYPE_CHECKING:
    from sockferry.ferry.secure import ClientTLS


def _server_address(args: argparse.Namespace, host: str) -> Address:
    if args.unix:
        if args.transport == "sctp":
            raise UsageError("--unix and --transport sctp do not go together: SCTP runs "
                             "over IP")
        return UnixPath(args.unix)
    return HostPort(host, args.port, args.family)


def _client_tls(args: argparse.Namespace) -> ClientTLS | None:
    """The TLS trust the options ask for (``--ca`` and ``--fingerprint`` imply --tls)."""
    if not (args.tls or args.ca or args.fingerprint):
        if args.known_hosts:
            raise UsageError("--known-hosts applies to --tls connections only: add --tls")
        return None
    if args.transport == "sctp":
        raise UsageError("--tls runs over TCP only; drop --transport sctp or --tls")
    if args.ca and args.fingerprint:
        raise UsageError("--ca and --fingerprint are two ways to trust a server: give one")
    return client_trust(ca=args.ca, fingerprint=args.fingerprint,
                        known_hosts=args.known_hosts)


@asynccontextmanager
async def _connected(args: argparse.Namespace, address: Address,
                     token: bytes) -> AsyncIterator[FerryClient]:
    """An authenticated client over TCP (or AF_UNIX), or over an SCTP association."""
    tls = _client_tls(args)
    if args.transport == "sctp" and args.mptcp:
        raise UsageError("--mptcp and --transport sctp do not go together: SCTP has "
                         "its own multihoming")
    if args.transport == "sctp":
        # The SCTP stacks take a while to import; plain TCP never loads them.
        from sockferry.ferry.over_sctp import sctp_client  # noqa: PLC0415

        async with sctp_client(address, token, stack=args.sctp_stack,
                               udp_port=args.udp_port, timeout_s=args.timeout) as client:
            if getattr(args, "limit_rate", None):
                client.limit_rate(args.limit_rate)
            yield client
        return
    client = await FerryClient.connect(address, token, timeout_s=args.timeout,
                                       mptcp=args.mptcp, tls=tls)
    if getattr(args, "limit_rate", None):
        client.limit_rate(args.limit_rate)
    try:
        yield client
    finally:
        client.close()


class _ConsoleReporter(Reporter):
    def __init__(self, progress: TransferProgress) -> None:
        self.bar = progress

    def progress_for(self, key: str, label: str, size: int | None) -> Progress:
        self.bar.start(key, label, size)
        return lambda n, hole=False: self.bar.advance(key, n, hole)

    def done(self, key: str) -> None:
        self.bar.finish(key)

    def all_started(self) -> None:
        self.bar.all_started()


def _remote_sources(args: argparse.Namespace, texts: list[str]) -> tuple[str, list[str]]:
    remotes = [_remote_or_fail(args, text, "a remote path — write HOST:PATH")
               for text in texts]
    if len({(r.host, r.port) for r in remotes}) > 1:
        raise UsageError("all sources must be on the same server")
    return remotes[0].host, [r.path for r in remotes]


def _remote_or_fail(args: argparse.Namespace, text: str, wanted: str) -> Remote:
    """The remote spec ``text``; a port inside it replaces -P for this command."""
    remote = parse_remote(text)
    if remote is None:
        raise UsageError(f"'{text}' is not {wanted}")
    if remote.port is not None:
        args.port = remote.port
    return remote


def run_send(args: argparse.Namespace, console: Console) -> int:
    remote = _remote_or_fail(args, args.dest, "a remote destination — write HOST:DEST "
                             "(:DEST for localhost)")
    if STDIO in args.sources:
        return _send_stdin(args, console, remote.host, remote.path)
    for source in args.sources:
        if split_remote(source) is not None:
            raise UsageError(f"'{source}' looks remote; send copies local files "
                             "(write ./NAME for a local name with a colon)")
    host, dest = remote.host, remote.path

    into: list[bool] = []  # what the first attempt found DEST to be (a retry may have made it)

    def sending(sync: SyncOptions) -> Operation:
        async def send(client: FerryClient, reporter: Reporter) -> list[Outcome]:
            if not into:
                into.append(await remote_is_directory(client, dest))
            return await send_paths(
                client, args.sources, dest, recursive=args.recursive,
                keep_mtime=args.preserve or args.update, reporter=reporter,
                resume=_resuming(args), sync=sync, into_directory=into[0])
        return send

    sync = _sync_options(args)
    return _copy(args, console, host, "sent", sending(sync),
                 again=lambda done: sending(_again(sync, done)))


def run_get(args: argparse.Namespace, console: Console) -> int:
    host, sources = _remote_sources(args, args.sources)
    if args.dest == STDIO or _is_device(args.dest):
        return _get_stream(args, console, host, sources)
    if os.path.islink(args.dest) and os.path.isfile(args.dest):
        # written through the link, as cp and scp do: the link stays (/dev/stdout,
        # redirected to a file, is one), its file is replaced atomically
        args.dest = os.path.realpath(args.dest)
    into = os.path.isdir(args.dest)  # before the first attempt, which may make it

    def getting(sync: SyncOptions) -> Operation:
        return lambda client, reporter: get_paths(
            client, sources, args.dest, recursive=args.recursive,
            keep_mtime=args.preserve or args.update, reporter=reporter,
            resume=_resuming(args), sync=sync, into_directory=into)

    sync = _sync_options(args)
    return _copy(args, console, host, "received", getting(sync),
                 again=lambda done: getting(_again(sync, done)))


Operation = Callable[[FerryClient, Reporter], Any]


def _again(sync: SyncOptions, done: frozenset[str]) -> SyncOptions:
    """What a --retry attempt does after the first: the files ``done`` (those an earlier
    attempt saw committed) are left alone without a look, others the receiver has whole
    (same size and digest: they arrived before the connection was lost, unanswered) too,
    and the rest resume."""
    return SyncOptions(update=sync.update, filters=sync.filters, dry_run=sync.dry_run,
                       delete=sync.delete, checksum=True, links=sync.links, done=done)


def _copied_whole(outcome: Outcome) -> bool:
    return (outcome.error is None and not outcome.is_directory and not outcome.unchanged
            and not outcome.dry_run and not outcome.deleted)


def _resuming(args: argparse.Namespace) -> bool:
    """--resume, or --retry, whose attempts go on where the last one stopped."""
    return bool(args.resume or getattr(args, "retry", 0))


STDIO = "-"  # as a source: standard input; as a destination: standard output


PIPE_CHUNK = 1 << 20


def _pipe_checks(args: argparse.Namespace, what: str) -> None:
    if args.recursive:
        raise UsageError(f"{what} carries one file: drop -r")
    if _resuming(args):
        raise UsageError(f"{what} cannot resume or retry: a pipe cannot be read again")


class _NoStream(Exception):
    """The server does not take streamed PUTs (an older one): spool, then send."""


def _send_stdin(args: argparse.Namespace, console: Console, host: str, dest: str) -> int:
    """``send - HOST:NAME``: standard input sent as it is read, as a streamed PUT
    (docs/protocol.md §5.2), digest-verified and atomic.  A server without STREAM gets
    it spooled into a private file first and sent as an ordinary PUT, on a new
    connection so that a slow pipe never holds one idle."""
    _pipe_checks(args, "send -")
    if args.sources != [STDIO]:
        raise UsageError("send - reads one stream: give '-' as the only source "
                         "(./- names a local file called '-')")
    if not dest or dest.endswith("/"):
        raise UsageError("send - needs the name of the file to create: HOST:NAME")
    import sys  # noqa: PLC0415 - pipes only

    fd = sys.stdin.fileno()
    try:
        os.set_blocking(fd, True)  # an inherited O_NONBLOCK would fail the reads
    except OSError as exc:
        raise storage_error(exc, "standard input") from exc

    async def streamed(client: FerryClient, reporter: Reporter) -> list[Outcome]:
        if not client.can_stream:
            raise _NoStream
        return await send_stream_as(client, fd, "standard input", dest, reporter=reporter)

    try:
        return _copy(args, console, host, "sent", streamed)
    except _NoStream:
        return _send_spooled(args, console, host, dest)


def _send_spooled(args: argparse.Namespace, console: Console, host: str, dest: str) -> int:
    """``send -`` to a server without STREAM: standard input read to its end into a
    private file, which is then sent."""
    import shutil  # noqa: PLC0415 - pipes only
    import sys  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    if args.verbose:
        console.notice("the server does not take streams; reading standard input to its "
                       "end first")
    with tempfile.TemporaryDirectory(prefix="sockferry-stdin-") as spool_dir:  # mode 0700
        spool = os.path.join(spool_dir, "stdin")
        try:
            with open(spool, "wb") as out:
                shutil.copyfileobj(sys.stdin.buffer, out, PIPE_CHUNK)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(spool, 0o666 & ~umask)  # what `cat > NAME` would make
        except OSError as exc:
            raise storage_error(exc, spool) from exc
        return _copy(args, console, host, "sent", lambda client, reporter: send_file_as(
            client, spool, "standard input", dest, reporter=reporter))


def _is_device(path: str) -> bool:
    """Whether ``path`` (links followed) is a device or a named pipe: written into, as
    cp and scp do, never replaced by a renamed temporary (``get HOST:F /dev/null``
    would replace the system's /dev/null with a regular file)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode)


def _get_stream(args: argparse.Namespace, console: Console, host: str,
                sources: list[str]) -> int:
    """``get HOST:NAME -`` (or a device or named pipe as the destination): the file is
    received and verified as any other, then copied to standard output (or into the
    device) — no byte that failed its digest check ever reaches the pipe."""
    shown = "standard output" if args.dest == STDIO else args.dest
    _pipe_checks(args, f"get ... {args.dest}")
    if len(sources) != 1:
        raise UsageError(f"get ... {args.dest} writes one file to {shown}: give one source")
    import sys  # noqa: PLC0415 - pipes only
    import tempfile  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="sockferry-stdout-") as spool_dir:
        spool = os.path.join(spool_dir, "file")
        async def received(client: FerryClient, reporter: Reporter) -> list[Outcome]:
            outcomes = await get_paths(client, sources, spool, recursive=False,
                                       keep_mtime=False, reporter=reporter)
            return [Outcome(o.source, shown, o.size, o.error, o.is_directory, o.skipped)
                    for o in outcomes]

        code = _copy(args, console, host, "received", received, results_on_stdout=False)
        if code != ExitCode.OK:
            return code
        sys.stdout.flush()
        try:
            fd = sys.stdout.fileno() if args.dest == STDIO else os.open(args.dest,
                                                                         os.O_WRONLY)
        except OSError as exc:
            raise storage_error(exc, shown) from exc
        try:
            os.set_blocking(fd, True)  # an inherited O_NONBLOCK would split writes
            with open(spool, "rb") as spooled:
                while chunk := spooled.read(PIPE_CHUNK):
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view):]
        except BrokenPipeError as exc:
            if args.dest != STDIO:
                raise storage_error(exc, shown) from None
            # The reader left (`| head`): not an error to report, but not everything
            # was delivered either.  Point stdout at /dev/null so exit does not retry.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
            return ExitCode.STORAGE
        except OSError as exc:
            raise storage_error(exc, shown) from exc
        finally:
            if args.dest != STDIO:
                os.close(fd)
    return ExitCode.OK


def _copy(args: argparse.Namespace, console: Console, host: str, verb: str,
          operation: Operation, *,
          again: Callable[[frozenset[str]], Operation] | None = None,
          results_on_stdout: bool = True) -> int:
    """Connect, run ``operation``, report; with --retry, attempts after the first run
    ``again(done)`` (or ``operation``), ``done`` the sources earlier attempts copied:
    their outcomes are reported with the last attempt's."""
    from sockferry.ferry.tokens import client_token_and_source  # noqa: PLC0415 - not for --help

    token, source = client_token_and_source(args.token_file)
    address = _server_address(args, host)
    started = time.monotonic()

    attempts = 0
    retries = getattr(args, "retry", 0)
    copied: dict[str, Outcome] = {}  # by source: files earlier attempts copied whole

    async def attempt() -> list[Outcome]:
        nonlocal attempts
        attempts += 1
        run = operation if attempts == 1 or again is None else again(frozenset(copied))
        async with _connected(args, address, token) as client:
            with console.progress() as progress:
                # without a bar, the silent Reporter: no calls per file for nothing
                reporter = _ConsoleReporter(progress) if progress.shown else Reporter()
                result: list[Outcome] = await run(client, reporter)
        if not retries:
            return result
        earlier = list(copied.values())
        copied.update((o.source, o) for o in result if _copied_whole(o))
        return earlier + result


    def on_retry(error: SockferryError, wait_s: float, number: int) -> None:
        console.notice(f"{error} (retry {number} of {retries} in {wait_s:g} s)")

    async def go() -> list[Outcome]:
        if not retries:
            return await attempt()
        from sockferry.ferry.retrying import with_retries, worth_retrying  # noqa: PLC0415

        def lost_in(outcomes: list[Outcome]) -> SockferryError | None:
            return next((o.error for o in outcomes
                         if o.error is not None and worth_retrying(o.error)), None)

        return await with_retries(attempt, retries, on_retry, lost_in=lost_in)

    with _auth_hint(source):
        # a copy that only sends runs as fast on asyncio's own loop, which starts sooner
        outcomes = run_async(go(), fastest_receiver=verb == "received")
    return _report(console, args, outcomes, verb, time.monotonic() - started,
                   results_on_stdout)


@contextlib.contextmanager
def _auth_hint(source: str) -> Iterator[None]:
    """A refused token: say which one this client used and what to check."""
    from sockferry.ferry.tokens import auth_failed_hint  # noqa: PLC0415 - not for --help

    try:
        yield
    except AuthenticationFailed as exc:
        raise AuthenticationFailed(auth_failed_hint(source)) from exc


def _report(console: Console, args: argparse.Namespace, outcomes: list[Outcome], verb: str,
            elapsed: float, results_on_stdout: bool = True) -> int:
    """Errors, notices and the summary on stderr; with -v a line per file on stdout
    (stderr when stdout carries the file itself)."""
    say = console.print if results_on_stdout else console.notice
    code = ExitCode.OK
    files = total = deleted = 0
    told = False
    # files left alone as unchanged are only counted (a no-op --update is all of them)
    others = [outcome for outcome in outcomes if not outcome.unchanged]
    kept = len(outcomes) - len(others)
    for outcome in others:
        if outcome.deleted or outcome.dry_run:
            line = _sync_line(outcome, args.verbose)
            if line:
                say(line)
            deleted += outcome.deleted
            if outcome.dry_run and not outcome.deleted:
                files, total = files + 1, total + outcome.size
        elif outcome.error is None:
            if not outcome.is_directory:
                files += 1
                total += outcome.size
                if args.verbose:
                    say(f"{verb} {outcome.source} -> {outcome.target} "
                                  f"({format_bytes(outcome.size)}{_resumed(outcome)}, "
                                  "digest verified)")
                    if outcome.resume_note and outcome.resume_note != NO_RESUME:
                        console.notice(outcome.resume_note)
                if outcome.resume_note == NO_RESUME and not told:
                    console.notice(NO_RESUME)  # once, and even without -v
                    told = True
        elif outcome.skipped:
            console.notice(str(outcome.error))
        else:
            console.error(str(outcome.error))
            if code == ExitCode.OK:
                code = exit_code_for(outcome.error)
    _summarize(console, getattr(args, "dry_run", False), verb, files, total,
               f"{f', {kept} unchanged' if kept else ''}"
               f"{f', {deleted} deleted' if deleted else ''}", elapsed)
    return code


def _sync_line(outcome: Outcome, verbose: bool) -> str:
    """What -n (always) or -v says of a file left alone, deleted or not copied."""
    if outcome.deleted:
        return (f"would delete {outcome.source}" if outcome.dry_run
                else f"deleted {outcome.source}" if verbose else "")
    if outcome.dry_run:
        return f"would copy {outcome.source} -> {outcome.target} " \
            f"({format_bytes(outcome.size)})"
    return ""


def _summarize(console: Console, dry_run: bool, verb: str, files: int, total: int,
               unchanged: str, elapsed: float) -> None:
    if dry_run:
        console.summary(f"dry run: would have {verb} {files} file(s), "
                        f"{format_bytes(total)}{unchanged}; nothing was copied")
    else:
        console.summary(f"{verb} {files} file(s), {format_bytes(total)}{unchanged} in "
                        f"{elapsed:.2f} s ({format_rate(total, elapsed)})")


def _resumed(outcome: Outcome) -> str:
    """``-v``: how much of the file an earlier transfer had already moved."""
    if not outcome.resumed:
        return ""
    return (f", resumed at {format_bytes(outcome.resumed)} ({outcome.resumed} bytes): "
            f"{format_bytes(outcome.size - outcome.resumed)} moved")


def run_ls(args: argparse.Namespace, console: Console) -> int:
    remote = _remote_or_fail(args, args.target, "a remote path — write HOST:[PATH]")
    host, path = remote.host, remote.path
    from sockferry.ferry.tokens import client_token_and_source  # noqa: PLC0415 - not for --help

    token, source = client_token_and_source(args.token_file)

    async def go() -> list[Entry]:
        async with _connected(args, _server_address(args, host), token) as client:
            entries = await client.list(path, recursive=args.recursive)
            await client.finish()
            return entries

    with _auth_hint(source):
        listing = run_async(go())
    for entry in listing:
        console.print(format_entry(entry))
    return ExitCode.OK


_TYPE_BITS = {Kind.FILE: stat.S_IFREG, Kind.DIRECTORY: stat.S_IFDIR,
              Kind.SYMLINK: stat.S_IFLNK, Kind.OTHER: 0}


def format_entry(entry: Entry) -> str:
    """``ls -l``-like: mode, size in bytes, modification time (UTC), name."""
    mode = stat.filemode(_TYPE_BITS[entry.kind] | (entry.mode & 0o7777))
    if entry.kind is Kind.OTHER:
        mode = "?" + mode[1:]
    when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(entry.mtime_ns // 1_000_000_000))
    suffix = "/" if entry.kind is Kind.DIRECTORY else ""
    return f"{mode} {entry.size:>12} {when} {entry.path}{suffix}"


def _sync_options(args: argparse.Namespace) -> SyncOptions:
    from sockferry.ferry.sync import Filters  # noqa: PLC0415

    if getattr(args, "delete", False) and not args.recursive:
        raise UsageError("--delete removes names inside a copied tree: add -r")
    if (args.update or args.checksum or args.dry_run or args.filters) and _resuming(args):
        raise UsageError("--resume does not go with --update, --checksum, --dry-run or "
                         "filters (nor does --retry, which resumes)")
    return SyncOptions(update=args.update, filters=Filters.parse(args.filters),
                       dry_run=args.dry_run, delete=getattr(args, "delete", False),
                       checksum=args.checksum, links=args.links)
