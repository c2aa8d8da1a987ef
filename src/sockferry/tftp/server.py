"""The TFTP server: listening sockets, request checks, one fresh socket per transfer.

Requests arrive on the listening sockets (port 69 by default); each accepted request gets
its own socket on an ephemeral port, its TID (RFC 1350 §4), bound to the address the
client wrote to.  Files come from a ``Store``: a ``Root`` sandbox, or a remote store (an
S3 bucket, storage/s3.py) whose files are opened in worker threads, since each open is
network requests and a read fetches the whole object first; uploads go through
``AtomicFile`` and appear under their name only once complete, stored and acknowledged.
Every transfer, and every refused request, is one log line (floods: a few a second).

The request port cannot be turned into a weapon (see ``admission``): an ERROR is never
answered; other stray packets and refusals are answered through token buckets; a source
has at most ``max_unconfirmed_per_source`` transfers whose peer has not yet answered on
the TID, and those expire after ``unconfirmed_s`` (the cores' anti-amplification rule).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import functools
import logging
import socket
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from sockferry.access import AccessRules
from sockferry.addresses import Address, SockAddr, format_sockaddr
from sockferry.errors import (
    NetworkError,
    PathRefused,
    SockferryError,
    StorageError,
)
from sockferry.logfields import fields
from sockferry.metrics import OFF, Metrics
from sockferry.pools import shared_pool
from sockferry.safe_text import clip
from sockferry.sockets import (
    enable_destination_address,
    grow_buffers,
    open_listeners,
    recv_with_destination,
)
from sockferry.storage.names import DEFAULT_UMASK, capped_mode
from sockferry.storage.store import Store
from sockferry.storage.stores import open_store
from sockferry.storage.sweeper import sweep_forever
from sockferry.tftp.accept import Ignored, Refusal, agree_options, judge, requested_path
from sockferry.tftp.admission import ReplyLimiter, source_key
from sockferry.tftp.aio import (
    SOCKET_BUFFER_BYTES,
    FileSink,
    FileSource,
    TransferDriver,
    TransferResult,
    storage_error_code,
    tid_socket,
)
from sockferry.tftp.options import ServerLimits
from sockferry.tftp.packets import (
    MAX_REQUEST_BYTES,
    ErrorCode,
    TransferRequest,
    encode_error,
)
from sockferry.tftp.receiving import ServerWrite
from sockferry.tftp.sending import ServerRead
from sockferry.tftp.transfer import DEFAULT_UNCONFIRMED_S, Timing, Transfer

log = logging.getLogger("sockferry.tftp")
NO_PARTIAL_BUDGET = 1 << 62

DEFAULT_PORT = 69
DEFAULT_MAX_TRANSFERS = 256
DEFAULT_MAX_PER_PEER = 16
# Transfers from one source (IPv4 address, IPv6 /64) whose peer has not yet answered.
DEFAULT_MAX_UNCONFIRMED_PER_SOURCE = 4
# ERROR answers on the request port (refusals, stray packets), a second: all sources
# together; each source gets a tenth of it (at least one).
DEFAULT_ERROR_RATE = 50
# Refusals and garbage are logged, but a flood must not flood the log: this many lines a
# second, then a count of what was left out.
MAX_NOTICES_PER_S = 20
NEW_FILE_MODE = capped_mode(0o666, DEFAULT_UMASK)
# Worker threads opening the files of a remote store (HTTP requests; a read fetches the
# whole object): bounded, so that a burst of requests waits its turn.
OPEN_THREADS = 8

Key = tuple[SockAddr, bytes]  # a transfer: its peer and its request datagram


class UploadPolicy(Enum):
    NONE = "none"
    CREATE = "create"        # new files only, never replacing one (atomically, at commit)
    OVERWRITE = "overwrite"  # existing files only
    ANY = "any"              # new files, and existing ones replaced


@dataclass(frozen=True, slots=True)
class TftpServerConfig:
    # A directory's path, an S3 location (storage/stores.py) or a store; the server
    # closes the store when it closes.
    root: str | Store
    allow_upload: UploadPolicy = UploadPolicy.NONE
    limits: ServerLimits = field(default_factory=ServerLimits)
    timing: Timing = field(default_factory=Timing)
    max_transfers: int = DEFAULT_MAX_TRANSFERS
    max_per_peer: int = DEFAULT_MAX_PER_PEER
    max_upload_bytes: int | None = None
    max_unconfirmed_per_source: int = DEFAULT_MAX_UNCONFIRMED_PER_SOURCE
    unconfirmed_s: float = DEFAULT_UNCONFIRMED_S
    error_rate: int = DEFAULT_ERROR_RATE
    # --allow/--deny: other peers are never answered
    access: AccessRules = field(default_factory=AccessRules)
    metrics: Metrics = OFF  # --metrics: what the server counts (metrics.py)
    # With uploads: the temporaries a crashed server left (a directory's temporary
    # files, a bucket's multipart uploads) are removed once this old, checked at start
    # and every sweep_s.  A day: longer than any upload of this or another server.
    temporary_keep_s: float = 24 * 3600.0
    sweep_s: float = 600.0


class NoticeLimiter:
    """Lets through at most ``per_second`` log lines a second and counts the rest."""

    def __init__(self, per_second: int = MAX_NOTICES_PER_S) -> None:
        self.per_second = per_second
        self._window = 0.0
        self._count = 0
        self._dropped = 0

    def allow(self, now: float) -> bool:
        if now - self._window >= 1.0:
            if self._dropped:
                log.warning("%d more refused or malformed requests were not logged",
                            self._dropped)
            self._window, self._count, self._dropped = now, 0, 0
        if self._count < self.per_second:
            self._count += 1
            return True
        self._dropped += 1
        return False


@dataclass(slots=True)
class _Files:
    """What a request's storage work opened: the file to send and its size, or the sink
    of an upload; and the room left for uploads."""

    source: FileSource | None = None
    size: int | None = None
    sink: FileSink | None = None
    upload_limit: int | None = None

    def close(self) -> None:
        """Let go of what was opened (no transfer took it)."""
        if self.source is not None:
            self.source.close()
        if self.sink is not None:
            self.sink.discard()


class _Opening:
    """A request whose files a worker thread is opening (a remote store).  It holds the
    request's place in ``_transfers``, so that it counts against every limit as a
    transfer whose peer has not answered yet; a repeat of the request meanwhile is
    dropped: its one answer goes out once the file is open."""

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None

    def request_repeated(self, nbytes: int) -> None:
        pass

    def cancel(self, error: SockferryError) -> None:
        if self.task is not None:
            self.task.cancel()


class TftpServer:
    """Serves a store (a root directory, an S3 bucket) over TFTP until closed."""

    def __init__(self, config: TftpServerConfig) -> None:
        self.config = config
        self.root: Store = (open_store(config.root) if isinstance(config.root, str)
                            else config.root)
        self._listeners: list[socket.socket] = []
        self._transfers: dict[Key, TransferDriver | _Opening] = {}
        self._per_host: Counter[str] = Counter()
        # Each source's transfers, to count those whose peer has not answered yet.
        self._by_source: dict[str, set[Key]] = {}
        self._replies = ReplyLimiter(config.error_rate, max(1, config.error_rate // 10),
                                     time.monotonic())
        self._notices = NoticeLimiter()
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()

    @property
    def addresses(self) -> list[SockAddr]:
        return [sock.getsockname() for sock in self._listeners]

    @property
    def active_transfers(self) -> int:
        return len(self._transfers)

    async def start(self, addresses: list[Address],
                    inherited: Sequence[socket.socket] = ()) -> None:
        """Bind every address, and serve the ``inherited`` datagram sockets too (socket
        activation)."""
        try:
            for sock in inherited:
                self._listen(sock)
            for address in addresses:
                for sock in await open_listeners(address, socket.SOCK_DGRAM):
                    self._listen(sock)
        except BaseException:
            await self.close()
            raise
        config = self.config
        if config.allow_upload is not UploadPolicy.NONE:
            # TFTP keeps no partial files: no budget but the store's own limits
            self._sweeper = asyncio.get_running_loop().create_task(sweep_forever(
                self.root, config.temporary_keep_s, NO_PARTIAL_BUDGET, config.sweep_s,
                log))

    def _listen(self, sock: socket.socket) -> None:
        self._listeners.append(sock)
        enable_destination_address(sock)
        grow_buffers(sock, SOCKET_BUFFER_BYTES)  # absorbs bursts of requests
        asyncio.get_running_loop().add_reader(sock.fileno(), self._on_request, sock)

    async def serve_forever(self) -> None:
        await self._closed.wait()

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for sock in self._listeners:
            loop.remove_reader(sock.fileno())
            sock.close()
        self._listeners.clear()
        for driver in list(self._transfers.values()):
            driver.cancel(SockferryError("the server is shutting down"))
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=1.0)
        for task in self._tasks:
            task.cancel()
        if self.root.remote:  # waits for the parts still going up
            await asyncio.to_thread(self.root.close)
        else:
            self.root.close()
        self._closed.set()

    # -- requests -----------------------------------------------------------------------

    def _on_request(self, listener: socket.socket) -> None:
        for _ in range(64):  # bounded, so a flood cannot monopolise the loop
            try:
                data, peer, local, truncated = recv_with_destination(listener,
                                                                     MAX_REQUEST_BYTES)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("receiving on %s failed: %s",
                            format_sockaddr(listener.getsockname()), exc.strerror)
                return
            self._handle(listener, data, peer, local, truncated)

    def _handle(self, listener: socket.socket, data: bytes, peer: SockAddr,
                local: str | None, truncated: bool) -> None:
        shown = format_sockaddr(peer)
        if not self.config.access.admits(_host(peer)):  # never answered: no reflection
            self.config.metrics.limit_tripped("tftp", "access")
            self._ignore(shown, "dropped: not allowed by --allow/--deny")
            return
        request = self._parse(listener, data, peer, shown, truncated)
        if request is not None:
            self._admit(listener, request, data, peer, shown, local)

    def _parse(self, listener: socket.socket, data: bytes, peer: SockAddr, shown: str,
               truncated: bool) -> TransferRequest | None:
        """The request in ``data``; anything else is refused or ignored (None)."""
        judged = judge(data, truncated)
        if isinstance(judged, Ignored):
            self._ignore(shown, judged.why)
            return None
        if isinstance(judged, Refusal):
            self._refuse(listener, peer, shown, "-", judged)
            return None
        return judged

    def _admit(self, listener: socket.socket, request: TransferRequest, data: bytes,
               peer: SockAddr, shown: str, local: str | None) -> None:
        """Start a transfer for ``request``, unless it is a repeat or must be refused."""
        key = (peer, data)
        running = self._transfers.get(key)
        if running is not None:
            # The client repeated its request: its transfer's timer answers, or, while
            # the peer has not answered yet, the transfer sends its first answer again.
            running.request_repeated(len(data))
            return
        what = f"{'read' if request.is_read else 'write'} " \
               f"'{clip(request.filename.decode('utf-8', 'surrogateescape'))}'"
        source = source_key(_host(peer))
        if self._unconfirmed_from(source) >= self.config.max_unconfirmed_per_source:
            self.config.metrics.limit_tripped("tftp", "max-unconfirmed-per-source")
            # Likely forged: no answer at all, so no reflection either.
            self._ignore(shown, f"{what} dropped: {self.config.max_unconfirmed_per_source} "
                         f"transfers from {source} are waiting for their peer to answer")
            return
        try:
            self._check_capacity(peer)
            path = self._check_request(request)
            if self.root.remote:
                self._open_elsewhere(key, listener, request, path, local, shown, what)
                return
            files = self._open_files(request, path)
            driver = self._make_driver(listener, request, peer, local, len(data), files)
        except Refusal as refusal:
            self._refused(listener, peer, shown, what, request, refusal)
            return
        self._register(key, driver)
        self._launch(key, driver, request, shown, what)

    def _open_elsewhere(self, key: Key, listener: socket.socket, request: TransferRequest,
                        path: bytes, local: str | None, shown: str, what: str) -> None:
        """Open a remote store's file in a worker thread, the request's place held."""
        opening = _Opening()
        self._register(key, opening)
        opening.task = self._spawn(self._open_then_run(key, listener, request, path, local,
                                                       shown, what))

    async def _open_then_run(self, key: Key, listener: socket.socket,
                             request: TransferRequest, path: bytes, local: str | None,
                             shown: str, what: str) -> None:
        peer, data = key
        try:
            files = await _in_worker(functools.partial(self._open_files, request, path))
            driver = self._make_driver(listener, request, peer, local, len(data), files)
        except Refusal as refusal:
            self._unregister(key)
            self._refused(listener, peer, shown, what, request, refusal)
            return
        except BaseException as exc:
            self._unregister(key)  # cancelled (the server closes), or a bug
            if not isinstance(exc, Exception):
                raise
            log.exception("%s %s: internal error", shown, what)
            return
        self._transfers[key] = driver
        self._launch(key, driver, request, shown, what, task=False)
        await self._run(driver, key, shown, what)

    def _refused(self, listener: socket.socket, peer: SockAddr, shown: str, what: str,
                 request: TransferRequest, refusal: Refusal) -> None:
        direction = "download" if request.is_read else "upload"
        self.config.metrics.transfer_ended("tftp", direction, "refused", 0, 0.0,
                                           refusal.code.name.lower())
        self._refuse(listener, peer, shown, what, refusal)

    def _register(self, key: Key, entry: TransferDriver | _Opening) -> None:
        self._transfers[key] = entry
        host = _host(key[0])
        self._per_host[host] += 1
        self._by_source.setdefault(source_key(host), set()).add(key)

    def _unregister(self, key: Key) -> None:
        del self._transfers[key]
        host = _host(key[0])
        source = source_key(host)
        keys = self._by_source[source]
        keys.discard(key)
        if not keys:
            del self._by_source[source]
        self._per_host[host] -= 1
        if self._per_host[host] <= 0:
            del self._per_host[host]

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _launch(self, key: Key, driver: TransferDriver, request: TransferRequest, shown: str,
                what: str, *, task: bool = True) -> None:
        """Count the transfer started, log its outcome when known, and (``task``) run it."""
        direction = "download" if request.is_read else "upload"
        path = request.filename.decode("utf-8", "surrogateescape")
        self.config.metrics.transfer_started("tftp", direction)

        def log_outcome(result: TransferResult) -> None:
            self._count(direction, result)
            # A transfer whose peer never answered was likely forged: its line goes
            # through the flood limit like a refusal's.
            if (result.error is not None and not driver.core.confirmed
                    and not self._notices.allow(time.monotonic())):
                return
            log.info("%s %s %s %s: %s", shown, what, request.mode,
                     result.options.describe(), describe_result(result),
                     extra=fields("transfer", transport="tftp", peer=shown, path=path,
                                  direction=direction,
                                  outcome="committed" if result.error is None else "failed",
                                  bytes=result.size, duration=round(result.seconds, 6),
                                  error=None if result.error is None else str(result.error)))

        driver.on_outcome = log_outcome
        if task:
            self._spawn(self._run(driver, key, shown, what))

    def _count(self, direction: str, result: TransferResult) -> None:
        metrics = self.config.metrics
        metrics.transferred("tftp", direction, result.size)
        if result.error is None:
            metrics.transfer_ended("tftp", direction, "committed", result.size,
                                   result.seconds)
        else:
            kind = getattr(result.error, "code", None)
            metrics.transfer_ended("tftp", direction, "failed", result.size, result.seconds,
                                   kind.name.lower() if isinstance(kind, ErrorCode)
                                   else type(result.error).__name__)

    def _unconfirmed_from(self, source: str) -> int:
        keys = self._by_source.get(source, ())
        return sum(1 for key in keys if not _confirmed(self._transfers[key]))

    def _ignore(self, shown: str, why: str) -> None:
        if self._notices.allow(time.monotonic()):
            log.info("%s %s", shown, why)

    def _check_capacity(self, peer: SockAddr) -> None:
        if len(self._transfers) >= self.config.max_transfers:
            self.config.metrics.limit_tripped("tftp", "max-transfers")
            raise Refusal(ErrorCode.NOT_DEFINED, "server busy, try again later")
        if self._per_host[_host(peer)] >= self.config.max_per_peer:
            self.config.metrics.limit_tripped("tftp", "max-per-peer")
            raise Refusal(ErrorCode.NOT_DEFINED,
                          "too many transfers from your address, try again later")

    def _refuse(self, listener: socket.socket, peer: SockAddr, shown: str, what: str,
                refusal: Refusal) -> None:
        now = time.monotonic()
        event = fields("transfer", transport="tftp", peer=shown, outcome="refused",
                       error=refusal.code.name.lower())
        if self._replies.allow(source_key(_host(peer)), now):
            with contextlib.suppress(OSError):
                listener.sendto(encode_error(refusal.code, refusal.message), peer)
        if self._notices.allow(now):
            log.info("%s %s refused: %s", shown, what, clip(refusal.message), extra=event)

    def _check_request(self, request: TransferRequest) -> bytes:
        """The requested path, once the checks that need no storage are passed."""
        path = requested_path(request)
        if not request.is_read and self.config.allow_upload is UploadPolicy.NONE:
            raise Refusal(ErrorCode.ACCESS_VIOLATION, "uploads are not allowed here")
        return path

    def _open_files(self, request: TransferRequest, path: bytes) -> _Files:
        """The storage work of a request (blocking for a remote store: a worker thread
        runs it then); Refusal when the file cannot be used."""
        files = _Files()
        try:
            if request.is_read:
                files.source, files.size = self._open_source(path)
            else:
                files.sink = self._open_sink(path)
            files.upload_limit = self._upload_limit()
        except BaseException as exc:
            files.close()
            if isinstance(exc, StorageError):
                raise Refusal(storage_error_code(exc), str(exc)) from exc
            raise
        return files

    def _make_driver(self, listener: socket.socket, request: TransferRequest,
                     peer: SockAddr, local: str | None, received: int,
                     files: _Files) -> TransferDriver:
        try:
            options, oack = agree_options(request, file_size=files.size,
                                          upload_limit=files.upload_limit,
                                          limits=self.config.limits)
            sock = self._transfer_socket(listener, local)
        except BaseException:
            files.close()
            raise
        assert not isinstance(peer, str)  # UDP peers are (host, port, ...) tuples
        now = asyncio.get_running_loop().time()
        netascii = request.mode == "netascii"
        core: Transfer
        unconfirmed_s = self.config.unconfirmed_s
        if request.is_read:
            core = ServerRead(peer, options, oack, self.config.timing, now,
                              netascii_mode=netascii, received=received,
                              unconfirmed_s=unconfirmed_s)
        else:
            core = ServerWrite(peer, options, oack, self.config.timing, now,
                               netascii_mode=netascii, max_size=self.config.max_upload_bytes,
                               received=received, unconfirmed_s=unconfirmed_s)
        return TransferDriver(sock, core, source=files.source, sink=files.sink)

    def _open_source(self, path: bytes) -> tuple[FileSource, int]:
        fd, st = self.root.open_read(path)
        return FileSource(fd, path.decode("utf-8", "replace")), st.st_size

    def _open_sink(self, path: bytes) -> FileSink:
        policy = self.config.allow_upload
        mode = NEW_FILE_MODE
        try:
            entry = self.root.stat(path)
        except StorageError as exc:
            if exc.errno != errno.ENOENT or isinstance(exc, PathRefused):
                raise
            if policy is UploadPolicy.OVERWRITE:
                raise Refusal(ErrorCode.FILE_NOT_FOUND,
                              "this server only overwrites existing files") from None
        else:
            if policy is UploadPolicy.CREATE:
                raise Refusal(ErrorCode.FILE_EXISTS,
                              "this server only creates new files") from None
            mode = capped_mode(entry.mode, DEFAULT_UMASK)
        # The check above answers early; the link at commit is what makes "create" safe
        # against a file that appears while the upload runs.
        return FileSink(self.root.create(path), mode,
                        clobber=policy is not UploadPolicy.CREATE)

    def _upload_limit(self) -> int | None:
        limit = self.config.max_upload_bytes
        try:
            st = self.root.statvfs()
        except OSError:
            return limit
        free = st.f_bavail * st.f_frsize
        return free if limit is None else min(limit, free)

    @staticmethod
    def _transfer_socket(listener: socket.socket, local: str | None) -> socket.socket:
        """A fresh socket (the TID) on the address the request was sent to."""
        host = local if local is not None else listener.getsockname()[0]
        try:
            return tid_socket(listener.family, host)
        except NetworkError as exc:
            raise Refusal(ErrorCode.NOT_DEFINED, str(exc)) from exc

    async def _run(self, driver: TransferDriver, key: Key, shown: str, what: str) -> None:
        """Run one transfer to its end (dallying included); its log line comes from
        ``on_outcome`` as soon as the outcome is known."""
        try:
            await driver.run()
        except Exception:  # a bug: say so, and keep serving everyone else
            log.exception("%s %s: internal error", shown, what)
        finally:
            self._unregister(key)


async def _in_worker(work: Callable[[], _Files]) -> _Files:
    """``work`` done in a worker thread.  A thread cannot be stopped: if the wait is
    cancelled (the server closes), what it opens is let go once it is done."""
    future = shared_pool("tftp-open", OPEN_THREADS).submit(work)
    try:
        return await asyncio.wrap_future(future)
    except asyncio.CancelledError:
        future.add_done_callback(_let_go)
        raise


def _let_go(future: concurrent.futures.Future[_Files]) -> None:
    """The files of an open nobody waits for any more (on the worker's thread)."""
    if future.cancelled() or future.exception() is not None:
        return
    try:
        future.result().close()
    except Exception:  # the store may be closed by now: nothing more to do
        log.debug("letting go of an abandoned open failed", exc_info=True)


def _confirmed(entry: TransferDriver | _Opening) -> bool:
    """Whether the transfer's peer has answered on its TID (an opening one has not)."""
    return isinstance(entry, TransferDriver) and entry.core.confirmed


def describe_result(result: TransferResult) -> str:
    outcome = "ok" if result.error is None else f"failed: {result.error}"
    resent = f", {result.retransmissions} retransmitted" if result.retransmissions else ""
    return (f"{result.size} bytes in {result.seconds:.2f} s ({result.rate_mb_s:.1f} MB/s)"
            f"{resent}, {outcome}")


def _host(peer: SockAddr) -> str:
    return peer if isinstance(peer, str) else peer[0]

