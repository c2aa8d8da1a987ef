"""The TFTP client: get and put one file.

The request goes to the server's port; the answer comes from the transfer's own port
(the server's TID), which the core adopts.  A download is written beside its final name
and renamed only once complete; a server that refuses our options outright (ERROR 8)
gets the request again without them, as RFC 2347 foresees.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass

from sockferry.addresses import HostPort, format_sockaddr
from sockferry.errors import PeerRefused, SockferryError, StorageError
from sockferry.sockets import Resolved, resolve, storage_error
from sockferry.storage.atomic import AtomicFile
from sockferry.storage.names import DEFAULT_UMASK, capped_mode
from sockferry.tftp.aio import (
    FileSink,
    FileSource,
    TransferDriver,
    TransferResult,
    tid_socket,
)
from sockferry.tftp.options import requested_options
from sockferry.tftp.packets import DEFAULT_BLKSIZE, ErrorCode, Opcode, TransferRequest
from sockferry.tftp.receiving import ClientRead
from sockferry.tftp.sending import ClientWrite
from sockferry.tftp.transfer import Timing

DEFAULT_PORT = 69
# A client lingers this many round-trip timeouts after its final ACK, to repeat it if the
# server asks again, and then exits (RFC 1350 §6 leaves the time open).
CLIENT_DALLY_RTOS = 3


@dataclass(frozen=True, slots=True)
class ClientOptions:
    blksize: int = 1468
    windowsize: int = 1
    timeout_s: int | None = None   # sent as the RFC 2349 option when given
    retries: int = 6
    mode: str = "octet"
    tsize: bool = True

    def timing(self) -> Timing:
        if self.timeout_s is not None:
            return Timing(timeout_s=float(self.timeout_s), retries=self.retries,
                          dally_rtos=CLIENT_DALLY_RTOS)
        return Timing(retries=self.retries, dally_rtos=CLIENT_DALLY_RTOS)


ProgressCallback = Callable[[int, int | None], None]  # (bytes so far, total if known)


async def download(server: HostPort, remote: str, local: str, options: ClientOptions,
                   on_progress: ProgressCallback | None = None) -> TransferResult:
    """Fetch ``remote`` into ``local``; ``local`` appears only once complete."""
    target = await _resolve(server)
    existing_mode = _mode_of(local)
    with_options = True
    while True:
        sink = FileSink(AtomicFile.beside(local),
                        existing_mode or capped_mode(0o666, DEFAULT_UMASK))
        request = TransferRequest(Opcode.RRQ, remote.encode("utf-8"), options.mode,
                          _options(options, 0 if options.mode == "octet" else None)
                          if with_options else {})
        sock = _client_socket(target)
        core = ClientRead(_tid(target), request, options.timing(),
                          asyncio.get_running_loop().time())
        result = await _drive(sock, core, sink=sink, on_progress=on_progress)
        if _retry_without_options(result, with_options, request):
            with_options = False
            continue
        return _checked(result, target, remote)


async def upload(local: str, server: HostPort, remote: str, options: ClientOptions,
                 on_progress: ProgressCallback | None = None) -> TransferResult:
    """Send ``local`` to the server as ``remote``."""
    target = await _resolve(server)
    with_options = True
    while True:
        try:
            fd = os.open(local, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise storage_error(exc, local) from exc
        size = os.fstat(fd).st_size
        source = FileSource(fd, local)
        request = TransferRequest(Opcode.WRQ, remote.encode("utf-8"), options.mode,
                          _options(options, size if options.mode == "octet" else None)
                          if with_options else {})
        sock = _client_socket(target)
        core = ClientWrite(_tid(target), request, options.timing(),
                           asyncio.get_running_loop().time())
        result = await _drive(sock, core, source=source, on_progress=on_progress,
                              total=size)
        if _retry_without_options(result, with_options, request):
            with_options = False
            continue
        return _checked(result, target, remote)


def _options(options: ClientOptions, tsize: int | None) -> dict[str, str]:
    return requested_options(
        blksize=options.blksize if options.blksize != DEFAULT_BLKSIZE else None,
        windowsize=options.windowsize, timeout_s=options.timeout_s,
        tsize=tsize if options.tsize else None)


async def _drive(sock: socket.socket, core: ClientRead | ClientWrite, *,
                 sink: FileSink | None = None, source: FileSource | None = None,
                 on_progress: ProgressCallback | None = None,
                 total: int | None = None) -> TransferResult:
    def progress(size: int) -> None:
        if on_progress is not None:
            known = total if total is not None else driver.options.tsize
            on_progress(size, known)

    driver = TransferDriver(sock, core, source=source, sink=sink, on_progress=progress)
    return await driver.run()


def _retry_without_options(result: TransferResult, with_options: bool,
                           request: TransferRequest) -> bool:
    error = result.error
    return (with_options and bool(request.options) and isinstance(error, PeerRefused)
            and error.code == ErrorCode.OPTION_REFUSED)


def _checked(result: TransferResult, target: Resolved, remote: str) -> TransferResult:
    error = result.error
    if error is None:
        return result
    where = format_sockaddr(target.sockaddr)
    if isinstance(error, PeerRefused):
        raise _retold(error, f"{where} refused '{remote}': {error}") from error
    if isinstance(error, StorageError):
        raise error
    raise _retold(error, f"transfer of '{remote}' with {where} failed: {error}") from error


def _retold(error: SockferryError, message: str) -> SockferryError:
    """``error`` told again with ``message``: the same type with the same attributes
    (``code``, ``errno``, ``address``...), which rebuilding it from a message would
    drop; the message, not a note, carries the context, since it is what users see."""
    retold = copy.copy(error)  # the class rebuilt from its args, then its __dict__
    retold.args = (message,)
    return retold


async def _resolve(server: HostPort) -> Resolved:
    return (await resolve(server, socket.SOCK_DGRAM))[0]


def _tid(target: Resolved) -> tuple[str, int] | tuple[str, int, int, int]:
    """The server's request port as the core compares addresses."""
    sockaddr = target.sockaddr
    assert not isinstance(sockaddr, str)  # resolve() returns only IPv4 and IPv6
    return sockaddr


def _client_socket(target: Resolved) -> socket.socket:
    return tid_socket(target.family, "::" if target.family == socket.AF_INET6 else "0.0.0.0")


def _mode_of(path: str) -> int | None:
    """Keep the permissions of a file a download replaces."""
    with contextlib.suppress(OSError):
        return capped_mode(os.stat(path).st_mode, DEFAULT_UMASK)
    return None

