"""The library: a sockferry client and server for asyncio programs.

``async with sockferry.connect(host, token=...) as client`` gives a ``Client`` whose
methods each wait for the server's verdict (files are digest-checked and committed
atomically, as with the command line); ``await sockferry.serve(root, ...)`` gives a
``Server`` with the lifecycle of ``asyncio.Server``.  Errors are the classes of
``sockferry.errors``, rooted at ``SockferryError``; ``str()`` of each is a sentence fit
for a user.  The command line is built on the same pieces (``sockferry.ferry``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from sockferry.addresses import Address, HostPort, UnixPath, format_sockaddr, parse_address
from sockferry.entries import Entry
from sockferry.errors import SockferryError, UsageError
from sockferry.ferry import DEFAULT_PORT
from sockferry.ferry.client import FerryClient
from sockferry.ferry.server import FerryServer
from sockferry.ferry.server_config import FerryServerConfig
from sockferry.ferry.tokens import check_token, client_token, server_token
from sockferry.ferry.trust import client_trust, server_identity
from sockferry.library import ProgressCallback, Server, Transfer
from sockferry.storage.durability import Durability
from sockferry.storage.names import DEFAULT_UMASK

if TYPE_CHECKING:
    from sockferry.ferry.bodies import Progress
    from sockferry.ferry.secure import ClientTLS
    from sockferry.tls import ServerTLS

__all__ = ["DEFAULT_PORT", "Client", "Connecting", "ProgressCallback", "Server", "Transfer",
           "connect", "serve", "start_server"]

class Client:
    """An authenticated connection to a sockferry server (made by ``connect``).

    Each method sends its request and waits for the answer; several coroutines may use
    one client at once: their requests (and upload bodies) go one after another on the
    connection, and the answers are awaited together (pipelined).  Use it as an
    ``async with`` block, or call ``close()``.
    """

    def __init__(self, ferry: FerryClient) -> None:
        self._ferry = ferry
        self._closed = False
        # one sender at a time: a request's frames (an upload's whole body) are never
        # interleaved with another's; waiting for verdicts needs no turn
        self._sending = asyncio.Lock()

    async def put(self, local: str | os.PathLike[str], remote: str, *,
                  keep_mtime: bool = False,
                  progress: ProgressCallback | None = None) -> Transfer:
        """Upload the regular file ``local`` as the remote path ``remote`` (its parent
        must exist); returns once the server has checked the digest and committed it.
        ``keep_mtime``: give it the local file's modification time."""
        async with self._sending:
            future = await self._ferry.puts.start_put(os.fspath(local), remote,
                                                 keep_mtime=keep_mtime,
                                                 progress=_progress(progress))
            await self._ferry.flush()
        return Transfer(os.fspath(local), remote, _size(await future))

    async def get(self, remote: str, local: str | os.PathLike[str], *,
                  keep_mtime: bool = True,
                  progress: ProgressCallback | None = None) -> Transfer:
        """Download the remote file ``remote`` to the local path ``local`` (replaced
        atomically once its digest matched; nothing is left there on failure)."""
        async with self._sending:
            future = await self._ferry.gets.start_get(remote, os.fspath(local),
                                                 keep_mtime=keep_mtime,
                                                 progress=_progress(progress))
            await self._ferry.flush()
        return Transfer(remote, os.fspath(local), _size(await future))

    async def list(self, path: str = "", *, recursive: bool = False) -> list[Entry]:
        """The entries of a remote directory (paths relative to it; with ``recursive``,
        everything below it), or the one entry of a file."""
        async with self._sending:
            listing = await self._ferry.start_list(path, recursive)
        entries = await listing
        assert isinstance(entries, list)
        return entries

    async def stat(self, path: str) -> Entry:
        """The remote path's kind, mode, size and modification time."""
        async with self._sending:
            asked = await self._ferry.start_stat(path)
        entries = await asked
        assert isinstance(entries, list) and len(entries) == 1
        entry: Entry = entries[0]
        return entry

    async def mkdir(self, path: str, mode: int = 0o755) -> None:
        """Make a remote directory (and its missing parents); one that exists is fine."""
        async with self._sending:
            future = await self._ferry.start_mkdir(path, mode)
        await future

    async def close(self) -> None:
        """End the connection cleanly: every answer awaited, then closed."""
        if self._closed:
            return
        self._closed = True
        async with self._sending:
            await self._ferry.finish()

    def abort(self) -> None:
        """Drop the connection at once; requests in flight fail."""
        self._closed = True
        self._ferry.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if exc is None:
            await self.close()
        else:
            self.abort()


def _size(answer: object) -> int:
    assert isinstance(answer, int)  # a PUT's and a GET's futures settle with the size
    return answer


def _progress(callback: ProgressCallback | None) -> Progress | None:
    if callback is None:
        return None
    return lambda count, hole=False: callback(count)


class Connecting:
    """What ``connect`` returns: ``await`` it for a ``Client``, or use it in
    ``async with`` (the client is closed at the end, aborted on an exception)."""

    def __init__(self, opening: Callable[[], Any]) -> None:
        self._opening = opening
        self._client: Client | None = None

    def __await__(self) -> Generator[Any, None, Client]:
        return self._opening().__await__()  # type: ignore[no-any-return]

    async def __aenter__(self) -> Client:
        self._client = await self._opening()
        return self._client

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._client is not None:
            await self._client.__aexit__(kind, exc, tb)


def connect(host: str = "localhost", port: int = DEFAULT_PORT, *,
            token: bytes | str | None = None, token_file: str | os.PathLike[str] | None = None,
            unix: str | None = None, tls: bool = False, ca: str | None = None,
            fingerprint: str | None = None,
            known_hosts: str | os.PathLike[str] | None = None, timeout: float = 10.0,
            mptcp: bool = False) -> Connecting:
    """Connect to the sockferry server at ``host``:``port`` (or the unix socket
    ``unix``) and authenticate both ways.

    The token is ``token``, else the file ``token_file``, else ``$SOCKFERRY_TOKEN``,
    else ``~/.config/sockferry/token`` — as the command line looks.  TLS 1.3 with
    ``tls``, ``ca`` (a CA file) or ``fingerprint`` (the certificate's SHA-256, either
    form ``sockferry serve --tls`` logs); without ``ca`` or ``fingerprint`` the server
    is trusted on first use and remembered in ``known_hosts`` (default
    ``~/.config/sockferry/known_hosts``).  ``timeout``: seconds for the connection and
    the handshake.
    """
    address: Address = UnixPath(unix) if unix else HostPort(host, port)
    secret = _client_secret(token, token_file)
    trust = _client_trust(tls, ca, fingerprint, known_hosts)

    async def opening() -> Client:
        return Client(await FerryClient.connect(address, secret, timeout_s=timeout,
                                                mptcp=mptcp, tls=trust))

    return Connecting(opening)


def _client_secret(token: bytes | str | None, token_file: str | os.PathLike[str] | None,
                   ) -> bytes:
    if token is not None:
        return check_token(token.encode() if isinstance(token, str) else token,
                           "the token given to connect()")
    return client_token(os.fspath(token_file) if token_file is not None else None)


def _client_trust(tls: bool, ca: str | None, fingerprint: str | None,
                  known_hosts: str | os.PathLike[str] | None) -> ClientTLS | None:
    if not (tls or ca or fingerprint):
        return None
    return client_trust(ca=ca, fingerprint=fingerprint, known_hosts=known_hosts)


async def serve(root: str | os.PathLike[str], host: str = "localhost",
                port: int = DEFAULT_PORT, *, token: bytes | str | None = None,
                token_file: str | os.PathLike[str] | None = None,
                listen: list[str] | None = None, unix: str | None = None,
                tls: bool = False, cert: str | None = None, key: str | None = None,
                read_only: bool = False, durability: str = "batch",
                umask: int = DEFAULT_UMASK, max_connections: int = 256,
                idle_timeout: float = 120.0, grace: float = 10.0) -> Server:
    """Serve the directory ``root`` (clients see nothing outside it) on
    ``host``:``port``, or on every ``listen`` address (``HOST:PORT``, ``[V6]:PORT``,
    ``:PORT``, ``unix:PATH``), or on the unix socket ``unix``.

    The token is ``token``, else the file ``token_file``, else
    ``~/.config/sockferry/token`` (made on first use).  TLS 1.3 only with ``tls`` (a
    self-signed certificate beside the token file, made on first use) or ``cert`` and
    ``key``.  ``durability``: ``batch``, ``each`` or ``none``, as ``serve --fsync``.
    The other options are those of ``sockferry serve`` of the same names.
    """
    if token is not None:
        secret = check_token(token.encode() if isinstance(token, str) else token,
                             "the token given to serve()")
        token_path = Path(token_file) if token_file else None
    else:
        secret, token_path, _created = server_token(
            os.fspath(token_file) if token_file is not None else None)
    if unix:
        addresses: list[Address] = [UnixPath(unix)]
    elif listen:
        addresses = [parse_address(a, DEFAULT_PORT) for a in listen]
    else:
        addresses = [HostPort(host, port)]
    try:
        fsync = Durability(durability)
    except ValueError:
        raise UsageError(f"durability '{durability}' is none of batch, each, none") from None
    server_tls, fingerprint = _server_trust(tls, cert, key, token_path)
    config = FerryServerConfig(token=secret, umask=umask, max_connections=max_connections,
                          idle_timeout_s=idle_timeout, durability=fsync,
                          read_only=read_only, tls=server_tls)
    return await start_server(root, addresses, config, grace=grace, fingerprint=fingerprint)


async def start_server(root: str | os.PathLike[str], addresses: Sequence[Address],
                       config: FerryServerConfig, *, grace: float = 10.0,
                       inherited: Sequence[socket.socket] = (),
                       sctp_stack: str | None = None, udp_port: int | None = None,
                       fingerprint: str | None = None) -> Server:
    """The ferry server assembled from a full ``FerryServerConfig`` (what ``serve`` and
    ``sockferry serve`` both run): listening on ``addresses`` and the ``inherited``
    sockets (socket activation) over TCP or unix sockets, or with ``sctp_stack``
    (auto, kernel, udp) over SCTP associations, each file on a stream of its own."""
    return await run_ferry_server(FerryServer(os.fspath(root), config), addresses,
                                  grace=grace, inherited=inherited, sctp_stack=sctp_stack,
                                  udp_port=udp_port, fingerprint=fingerprint)


async def run_ferry_server(ferry: FerryServer, addresses: Sequence[Address], *,
                           grace: float = 10.0, inherited: Sequence[socket.socket] = (),
                           sctp_stack: str | None = None, udp_port: int | None = None,
                           fingerprint: str | None = None) -> Server:
    """``start_server`` for a ``FerryServer`` already made (tests keep a handle on it to
    look inside): listening over TCP and unix sockets, or over SCTP."""
    if sctp_stack is None:
        bound = await ferry.start(addresses, inherited)
        return Server(lambda: ferry.stop(grace), bound, fingerprint)
    # The SCTP stacks take a while to import; TCP servers never load them.
    from sockferry.ferry.over_sctp import (  # noqa: PLC0415
        open_sctp_server_endpoint,
        serve_sctp,
    )

    endpoint = await open_sctp_server_endpoint(addresses, sctp_stack, udp_port)
    reader = asyncio.get_running_loop().create_task(serve_sctp(ferry, endpoint))

    async def stop() -> None:
        await ferry.stop(grace)
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, SockferryError):
            await reader
        await endpoint.close()

    return Server(stop, [f"{format_sockaddr(a)} (SCTP)" for a in endpoint.local_addresses])


def _server_trust(tls: bool, cert: str | None, key: str | None,
                  token_path: Path | None) -> tuple[ServerTLS | None, str | None]:
    if not (tls or cert or key):
        return None, None
    from sockferry.tls import format_fingerprint  # noqa: PLC0415 - TLS servers only

    identity = server_identity(cert=cert, key=key,
                               self_signed_dir=token_path.parent if token_path else None)
    return identity.tls, format_fingerprint(identity.tls.fingerprint)
