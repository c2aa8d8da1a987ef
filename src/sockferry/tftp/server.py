"""The TFTP server: listening sockets, request checks, one fresh socket per transfer.

Requests arrive on the listening sockets (port 69 by default); each accepted request gets
its own socket on an ephemeral port, its TID (RFC 1350 §4), bound to the address the
client wrote to.  Files come from a ``Root`` sandbox; uploads go through ``AtomicFile``
and appear under their name only once complete, fsynced and acknowledged.  Every
transfer, and every refused request, is one log line (floods: a few a second).

The request port cannot be turned into a weapon (see ``admission``): an ERROR is never
answered; other stray packets and refusals are answered through token buckets; a source
has at most ``max_unconfirmed_per_source`` transfers whose peer has not yet answered on
the TID, and those expire after ``unconfirmed_s`` (the cores' anti-amplification rule).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

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
from sockferry.safe_text import clip
from sockferry.sockets import (
    enable_destination_address,
    grow_buffers,
    open_listeners,
    recv_with_destination,
)
from sockferry.storage.names import DEFAULT_UMASK, capped_mode
from sockferry.storage.root import Root
from sockferry.storage.store import Store
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


class UploadPolicy(Enum):
    NONE = "none"
    CREATE = "create"        # new files only, never replacing one (atomically, at commit)
    OVERWRITE = "overwrite"  # existing files only
    ANY = "any"              # new files, and existing ones replaced


@dataclass(frozen=True, slots=True)
class TftpServerConfig:
    root: str
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


class TftpServer:
    """Serves a root directory over TFTP until closed."""

    def __init__(self, config: TftpServerConfig) -> None:
        self.config = config
        # A directory only: an S3 store's reads would fetch whole objects on the loop.
        self.root: Store = Root(config.root)
        self._listeners: list[socket.socket] = []
        self._transfers: dict[tuple[SockAddr, bytes], TransferDriver] = {}
        self._per_host: Counter[str] = Counter()
        # Each source's transfers, to count those whose peer has not answered yet.
        self._by_source: dict[str, set[tuple[SockAddr, bytes]]] = {}
        self._replies = ReplyLimiter(config.error_rate, max(1, config.error_rate // 10),
                                     time.monotonic())
        self._notices = NoticeLimiter()
        self._tasks: set[asyncio.Task[None]] = set()
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

    def _listen(self, sock: socket.socket) -> None:
        self._listeners.append(sock)
        enable_destination_address(sock)
        grow_buffers(sock, SOCKET_BUFFER_BYTES)  # absorbs bursts of requests
        asyncio.get_running_loop().add_reader(sock.fileno(), self._on_request, sock)

    async def serve_forever(self) -> None:
        await self._closed.wait()

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
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
        direction = "download" if request.is_read else "upload"
        path = request.filename.decode("utf-8", "surrogateescape")
        if self._unconfirmed_from(source) >= self.config.max_unconfirmed_per_source:
            self.config.metrics.limit_tripped("tftp", "max-unconfirmed-per-source")
            # Likely forged: no answer at all, so no reflection either.
            self._ignore(shown, f"{what} dropped: {self.config.max_unconfirmed_per_source} "
                         f"transfers from {source} are waiting for their peer to answer")
            return
        try:
            self._check_capacity(peer)
            driver = self._open_transfer(listener, request, peer, local, len(data))
        except Refusal as refusal:
            self.config.metrics.transfer_ended("tftp", direction, "refused", 0, 0.0,
                                               refusal.code.name.lower())
            self._refuse(listener, peer, shown, what, refusal)
            return
        self.config.metrics.transfer_started("tftp", direction)
        self._transfers[key] = driver
        self._per_host[_host(peer)] += 1
        self._by_source.setdefault(source, set()).add(key)

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
        task = asyncio.get_running_loop().create_task(self._run(driver, key, shown, what))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
        return sum(1 for key in keys if not self._transfers[key].core.confirmed)

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

    def _open_transfer(self, listener: socket.socket, request: TransferRequest, peer: SockAddr,
                       local: str | None, received: int) -> TransferDriver:
        path = requested_path(request)
        source, sink, size = None, None, None
        try:
            if request.is_read:
                source, size = self._open_source(path)
            else:
                sink = self._open_sink(path)
            options, oack = agree_options(request, file_size=size,
                                          upload_limit=self._upload_limit(),
                                          limits=self.config.limits)
            sock = self._transfer_socket(listener, local)
        except BaseException as exc:
            if source is not None:
                source.close()
            if sink is not None:
                sink.discard()
            if isinstance(exc, StorageError):
                raise Refusal(storage_error_code(exc), str(exc)) from exc
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
        return TransferDriver(sock, core, source=source, sink=sink)

    def _open_source(self, path: bytes) -> tuple[FileSource, int]:
        fd, st = self.root.open_read(path)
        return FileSource(fd, path.decode("utf-8", "replace")), st.st_size

    def _open_sink(self, path: bytes) -> FileSink:
        policy = self.config.allow_upload
        if policy is UploadPolicy.NONE:
            raise Refusal(ErrorCode.ACCESS_VIOLATION, "uploads are not allowed here")
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

    async def _run(self, driver: TransferDriver, key: tuple[SockAddr, bytes], shown: str,
                   what: str) -> None:
        """Run one transfer to its end (dallying included); its log line comes from
        ``on_outcome`` as soon as the outcome is known."""
        try:
            await driver.run()
        except Exception:  # a bug: say so, and keep serving everyone else
            log.exception("%s %s: internal error", shown, what)
        finally:
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


def describe_result(result: TransferResult) -> str:
    outcome = "ok" if result.error is None else f"failed: {result.error}"
    resent = f", {result.retransmissions} retransmitted" if result.retransmissions else ""
    return (f"{result.size} bytes in {result.seconds:.2f} s ({result.rate_mb_s:.1f} MB/s)"
            f"{resent}, {outcome}")


def _host(peer: SockAddr) -> str:
    return peer if isinstance(peer, str) else peer[0]

