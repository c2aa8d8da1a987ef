"""The ferry client: asyncio driver around ``ClientSession``: connecting, the
handshake, the reader, and the requests that carry no file (PUTs: ferry/puts.py; GETs:
ferry/gets.py; the futures: ferry/inflight.py).

One reader task feeds the core and settles each request's future; the caller's task
sends.  Requests pipeline: ``start_*`` returns as soon as a request (and, for PUT, its
body) is on the wire, up to the window the server granted; their futures settle as the
verdicts arrive.  ``finish`` half-closes the connection (shutdown(SHUT_WR)) and waits
for every verdict and the server's end of stream.
"""

from __future__ import annotations

import asyncio
import os
import random
from typing import TYPE_CHECKING

from sockferry.addresses import Address
from sockferry.entries import Entry
from sockferry.errors import (
    AuthenticationFailed,
    NetworkError,
    PeerRefused,
    RemoteProtocolError,
    SockferryError,
    TransferTimeout,
)
from sockferry.ferry import events as ev
from sockferry.ferry import messages as m
from sockferry.ferry.bodies import GATHER_BYTES, receive_bodies
from sockferry.ferry.client_session import ClientSession
from sockferry.ferry.gets import Gets
from sockferry.ferry.inflight import InFlight
from sockferry.ferry.puts import Puts
from sockferry.ferry.session import ConnState
from sockferry.sockets import connect
from sockferry.streams import SocketStream, Stream

if TYPE_CHECKING:
    from sockferry.ferry.secure import ClientTLS

# A server busy with handshakes (BUSY before authentication) is retried for this long.
BUSY_RETRY_S = 10.0
BUSY_FIRST_DELAY_S = 0.05
BUSY_MAX_DELAY_S = 1.0


class FerryClient:
    """One connection to a ferry server and its reader; files go by ``puts``/``gets``."""

    def __init__(self, stream: Stream, session: ClientSession) -> None:
        self.stream = stream
        self.session = session
        self._reader: asyncio.Task[None] | None = None
        self.umask = _current_umask()
        self.inflight = InFlight(session, self.send_queued)
        self.puts = Puts(self)  # start_put, put_at_once, start_put_stream, ... resumable
        self.gets = Gets(self)  # start_get, start_get_resumable

    @classmethod
    async def connect(cls, address: Address, token: bytes, *, timeout_s: float = 10.0,
                      idle_timeout_s: float = 120.0, mptcp: bool = False,
                      features: int = m.ALL_FEATURES, tls: ClientTLS | None = None,
                      busy_retry_s: float = BUSY_RETRY_S) -> FerryClient:
        """Connect (``mptcp``: with Multipath TCP; ``tls``: inside TLS 1.3, the server
        checked as it says), authenticate both ways, and start reading.  ``features``:
        what to offer (fewer to behave as an older client would).  A server that turns
        the connection away as busy before authentication is tried again, with growing
        pauses, for up to ``busy_retry_s``."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + busy_retry_s
        delay = BUSY_FIRST_DELAY_S
        while True:
            try:
                return await cls._connect_once(address, token, timeout_s, idle_timeout_s,
                                               mptcp, features, tls)
            except PeerRefused as exc:
                # Turned away before authenticating (too many clients handshaking at
                # once, or from this address): that passes, so try again for a while.
                if exc.code != m.ErrorCode.BUSY or loop.time() + delay > give_up:
                    raise
            await asyncio.sleep(delay * (0.5 + random.random()))  # jitter: no herd
            delay = min(delay * 2, BUSY_MAX_DELAY_S)

    @classmethod
    async def _connect_once(cls, address: Address, token: bytes, timeout_s: float,
                            idle_timeout_s: float, mptcp: bool, features: int,
                            tls: ClientTLS | None) -> FerryClient:
        sock = await connect(address, timeout_s, mptcp=mptcp)
        if tls is None:
            return await cls.start(SocketStream(sock, idle_timeout_s), token,
                                   timeout_s=timeout_s, features=features)
        # Only TLS clients load the TLS modules (and through them ``cryptography``).
        from sockferry.ferry import secure  # noqa: PLC0415

        stream = await secure.connect_tls(sock, address, tls, timeout_s, idle_timeout_s)
        client = await cls.start(stream, token, timeout_s=timeout_s, features=features,
                                 channel_binding=stream.binding)
        try:
            secure.remember(tls, address, stream)
        except BaseException:
            client.close()
            raise
        return client

    @classmethod
    async def start(cls, stream: Stream, token: bytes, *, timeout_s: float,
                    features: int = m.ALL_FEATURES, channel_binding: bytes | None = None,
                    ) -> FerryClient:
        """Authenticate both ways over a connected ``stream`` (``channel_binding``: that
        of its TLS channel), and start reading."""
        session = ClientSession(token, os.urandom(m.NONCE_BYTES), features=features,
                                  channel_binding=channel_binding)
        client = cls(stream, session)
        try:
            await stream.send(session.buffers_to_send())
            async with asyncio.timeout(timeout_s):
                while session.state is ConnState.AWAIT_REPLY:
                    data = await stream.receive()
                    if not data:
                        raise NetworkError(f"{stream.peer} closed the connection during the "
                                           "handshake — is it a sockferry server?",
                                           address=stream.peer)
                    session.receive_data(data)
            await stream.send(session.buffers_to_send())  # our AUTH
        except TimeoutError:
            stream.close()
            raise TransferTimeout(f"{stream.peer} did not complete the handshake in "
                                  f"{timeout_s:g} s — is it a sockferry server?") from None
        except BaseException:
            stream.close()
            raise
        while session.next_event() is not None:
            pass
        client._reader = asyncio.get_running_loop().create_task(client._read_loop())
        return client

    def limit_rate(self, bytes_per_second: int) -> None:
        """From now on move at most ``bytes_per_second`` each way (``--limit-rate``)."""
        from sockferry.pacing import PacedStream  # noqa: PLC0415 - only when asked

        self.stream = PacedStream(self.stream, bytes_per_second)

    # -- reading ------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        gets = self.gets
        try:
            while True:
                data = await self.stream.receive()
                try:
                    self.session.receive_data(data)
                except RemoteProtocolError:
                    if data:
                        raise
                    # cut off mid-frame: the server died or was stopped, not a broken peer
                    raise NetworkError(f"{self.stream.peer} closed the connection in the "
                                       "middle of a frame — the other side failed or was "
                                       "stopped", address=self.stream.peer) from None
                self._handle_events()  # consumes every view of ``data``
                if not data:
                    break
                await receive_bodies(self.session, self.stream, gets.sink_of, gets.copied,
                                     gets.copy_failed)
            if gets.commits:  # files received in full are still being fsynced
                await asyncio.gather(*gets.commits)
            if self.inflight.pending:
                raise NetworkError(f"{self.stream.peer} closed the connection with "
                                   f"{len(self.inflight.pending)} request(s) unanswered",
                                   address=self.stream.peer)
        except AuthenticationFailed as exc:
            self.inflight.fail_all(exc)
        except RemoteProtocolError as exc:
            self.inflight.fail_all(RemoteProtocolError(f"{self.stream.peer} broke the "
                                                       f"protocol: {exc}"))
        except SockferryError as exc:
            self.inflight.fail_all(exc)

    def _handle_events(self) -> None:
        inflight, gets = self.inflight, self.gets
        while (event := self.session.next_event()) is not None:
            match event:
                case (ev.PutCommitted(size=result) | ev.LinkRead(target=result)
                      | ev.QuickChecked(bitmap=result)):
                    inflight.settle(event.request, result)
                case ev.MkdirDone() | ev.Deleted() | ev.Linked():
                    inflight.settle(event.request)
                case ev.EntriesReceived():
                    inflight.on_entries(event)
                case ev.FileStarted():
                    gets.on_file_started(event)
                case ev.BodyReceived():
                    gets.on_body(event.request, event.data)
                case ev.HoleReceived():
                    gets.on_body(event.request, event.length)
                case ev.FileFinished():
                    gets.on_file_finished(event)
                case ev.RequestFailed():
                    inflight.on_failed(event)
                case (ev.PrefixReceived(length=size, digest=digest)
                      | ev.Summed(size=size, digest=digest)):
                    inflight.settle(event.request, (size, digest))
                case ev.InputEnded() | ev.ServerVerified():
                    pass
                case _:
                    raise AssertionError(f"client core emitted {event!r}")

    # -- requests -----------------------------------------------------------------------

    async def send_queued(self) -> None:
        """Send what the core has queued (no check: the reader reports failures)."""
        buffers = self.session.buffers_to_send()
        if buffers:
            await self.stream.send(buffers)

    async def flush(self) -> None:
        """Send every request queued so far (requests are gathered into few sends; do
        this before waiting for an answer the caller did not get from a ``start_*``
        wait)."""
        self.inflight.check_alive()
        await self.send_queued()

    async def gathered(self) -> None:
        """Send what waits once there is enough of it (requests pipeline meanwhile)."""
        if self.session.unsent >= GATHER_BYTES:
            await self.send_queued()

    async def stat(self, path: str) -> Entry:
        entries = await (await self.start_stat(path))
        assert isinstance(entries, list) and len(entries) == 1
        entry: Entry = entries[0]
        return entry

    async def start_stat(self, path: str) -> asyncio.Future[object]:
        """Ask for one path's entry and return at once: the future gives ``[Entry]``."""
        await self.inflight.slot()
        future = self.inflight.track(self.session.stat(path), ev.RequestKind.STAT)
        await self.send_queued()
        return future

    async def list(self, path: str, recursive: bool = False) -> list[Entry]:
        entries = await (await self.start_list(path, recursive))
        assert isinstance(entries, list)
        return entries

    async def start_list(self, path: str, recursive: bool = False,
                         ) -> asyncio.Future[object]:
        """Ask for a listing and return at once: its future gives the ``list[Entry]``
        (the caller may work meanwhile while the server walks its tree)."""
        await self.inflight.slot()
        future = self.inflight.track(self.session.list(path, recursive), ev.RequestKind.LIST)
        await self.send_queued()
        return future

    async def start_mkdir(self, path: str, mode: int) -> asyncio.Future[object]:
        await self.inflight.slot()
        future = self.inflight.track(self.session.mkdir(path, mode), ev.RequestKind.MKDIR)
        await self.send_queued()
        return future

    @property
    def can_sync(self) -> bool:
        """Whether the server removes names and computes digests (SYNC, §5.3)."""
        return self.session.can_sync

    async def start_delete(self, path: str, directory: bool = False,
                           ) -> asyncio.Future[object]:
        """Remove the remote ``path``: a non-directory (a link itself), or with
        ``directory`` an empty directory; needs ``can_sync``."""
        await self.inflight.slot()
        future = self.inflight.track(self.session.delete(path, directory), ev.RequestKind.DELETE)
        await self.gathered()
        return future

    @property
    def can_link(self) -> bool:
        """Whether the server copies symbolic links as links (LINKS, §5.4)."""
        return self.session.can_link

    async def start_symlink(self, path: str, target: str) -> asyncio.Future[object]:
        """Make the remote ``path`` a link to ``target`` (relative, inside the root);
        needs ``can_link``."""
        await self.inflight.slot()
        future = self.inflight.track(self.session.symlink(path, target), ev.RequestKind.SYMLINK)
        await self.gathered()
        return future

    async def start_readlink(self, path: str) -> asyncio.Future[object]:
        """Where the remote link ``path`` points (a ``str``); needs ``can_link``."""
        await self.inflight.slot()
        future = self.inflight.track(self.session.readlink(path), ev.RequestKind.READLINK)
        await self.gathered()
        return future

    @property
    def can_quick_check(self) -> bool:
        """Whether the server does rsync's quick check itself (QUICK_CHECK, §5.5)."""
        return self.session.can_quick_check

    async def start_quick_check(self, path: str, names: tuple[m.NameCheck, ...],
                                ) -> asyncio.Future[object]:
        """Which of ``names`` (kind, size, mtime_ns, name) in the remote directory
        ``path`` the server has unchanged: the future gives the answer's bitmap (``bytes``,
        bit i of byte i // 8 for name i).  Sent at once, so the server checks this
        directory while the caller walks the next; needs ``can_quick_check``."""
        await self.inflight.slot()
        future = self.inflight.track(self.session.quick_check(path, names),
                                     ev.RequestKind.QUICK_CHECK)
        await self.send_queued()
        return future

    @property
    def can_stream(self) -> bool:
        """Whether the server takes a body of unknown length (STREAM, §5.2)."""
        return self.session.can_stream

    @property
    def can_resume(self) -> bool:
        return bool(self.session.features & m.Feature.RESUME)

    async def partial(self, path: str) -> tuple[int, bytes]:
        """PARTIAL: how many bytes the server keeps towards ``path``, and their digest."""
        await self.inflight.slot()
        future = self.inflight.track(self.session.partial(path), ev.RequestKind.PARTIAL)
        await self.send_queued()
        result = await future
        assert isinstance(result, tuple)
        return result

    async def start_checksum(self, path: str) -> asyncio.Future[object]:
        """The remote file's (size, digest) in the connection's digest; needs
        ``can_sync``."""
        await self.inflight.slot()
        future = self.inflight.track(self.session.checksum(path), ev.RequestKind.CHECKSUM)
        await self.gathered()
        return future

    async def finish(self) -> None:
        """Half-close, wait for every verdict and for the server to close, then close."""
        try:
            self.inflight.check_alive()
            await self.send_queued()
            self.stream.shutdown_write()
            if self._reader is not None:
                await self._reader
            if self.gets.commits:
                await asyncio.gather(*self.gets.commits)
            self.inflight.check_alive()
        finally:
            self.close()

    def close(self) -> None:
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()
        self.inflight.abort()
        self.stream.close()


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
