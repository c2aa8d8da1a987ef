"""The ferry client: asyncio driver around ``ClientSession``.

One reader task feeds the core and settles each request's future; the caller's task
sends.  Requests pipeline: ``start_*`` returns as soon as a request (and, for PUT, its
body) is on the wire, up to the window the server granted; their futures settle as the
verdicts arrive.  ``finish`` half-closes the connection (shutdown(SHUT_WR)) and waits
for every verdict and the server's end of stream.
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
import stat as stat_module
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from sockferry.addresses import Address
from sockferry.entries import Entry
from sockferry.errors import (
    AuthenticationFailed,
    NetworkError,
    PeerRefused,
    RemoteProtocolError,
    SockferryError,
    StorageError,
    TransferTimeout,
)
from sockferry.ferry import codec, digests
from sockferry.ferry import events as ev
from sockferry.ferry import messages as m
from sockferry.ferry.bodies import (
    GATHER_BYTES,
    Progress,
    Sink,
    TransferCancelled,
    read_whole,
    send_body,
    send_stream,
    send_tail,
    splice_bodies,
    start_prefix_hash,
)
from sockferry.ferry.client_session import ClientSession
from sockferry.ferry.codes import exception_for
from sockferry.ferry.session import ConnState
from sockferry.records import mutable_record
from sockferry.sockets import connect, storage_error
from sockferry.storage.atomic import AtomicFile, PartialFile
from sockferry.storage.sparse import is_sparse
from sockferry.streams import SocketStream, Stream

if TYPE_CHECKING:
    from sockferry.ferry.secure import ClientTLS

# Files up to this size go as one PUT_INLINE frame where the server offers INLINE: the
# frame's 64 KiB bound would allow more, but past a few pages the saved frames matter
# little and a larger frame is copied once more by the receiver's parser.
INLINE_FILE = 16 * 1024
# A server busy with handshakes (BUSY before authentication) is retried for this long.
BUSY_RETRY_S = 10.0
BUSY_FIRST_DELAY_S = 0.05
BUSY_MAX_DELAY_S = 1.0
NO_RESUME = "resume is not available on this server; the whole file is sent"


@mutable_record
class ResumeReport:
    """What ``--resume`` did for one file: bytes kept, or why it started from 0."""

    offset: int = 0
    note: str = ""


@mutable_record
class _Pending:
    """One request in flight: its future, and for GET the file being received."""

    kind: ev.RequestKind
    future: asyncio.Future[object]
    local_path: str = ""
    keep_mtime: bool = False
    umask: int = 0o022
    sink: Sink | None = None
    entries: list[Entry] | None = None  # LIST: what came so far
    progress: Progress | None = None
    mode: int = 0o644
    mtime_ns: int = 0
    refused: bool = False
    prefix: digests.Hasher | None = None  # get --resume: fed with our partial's bytes
    resume: ResumeReport | None = None


class FerryClient:
    def __init__(self, stream: Stream, session: ClientSession) -> None:
        self.stream = stream
        self.session = session
        self._pending: dict[int, _Pending] = {}
        self._slot_freed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._failure: SockferryError | None = None
        self._commits: set[asyncio.Task[None]] = set()
        self._umask = _current_umask()
        self._loop = asyncio.get_running_loop()
        # False for TLS streams (tlsstream.py): bodies are copied, not spliced.
        self._zero_copy: bool = getattr(stream, "zero_copy", True)

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
        try:
            while True:
                data = await self.stream.receive()
                self.session.receive_data(data)
                self._handle_events()  # consumes every view of ``data``
                if not data:
                    break
                await splice_bodies(self.session, self.stream, self._sink_of, self._spliced,
                                    self._splice_failed)
            if self._commits:  # files received in full are still being fsynced
                await asyncio.gather(*self._commits)
            if self._pending:
                raise NetworkError(f"{self.stream.peer} closed the connection with "
                                   f"{len(self._pending)} request(s) unanswered",
                                   address=self.stream.peer)
        except AuthenticationFailed as exc:
            self._fail_all(exc)
        except RemoteProtocolError as exc:
            self._fail_all(RemoteProtocolError(f"{self.stream.peer} broke the protocol: "
                                               f"{exc}"))
        except SockferryError as exc:
            self._fail_all(exc)

    def _fail_all(self, exc: SockferryError) -> None:
        self._failure = exc
        for pending in self._pending.values():
            if pending.sink is not None:
                pending.sink.file.abort()
            if not pending.future.done():
                pending.future.set_exception(exc)
        self._pending.clear()
        self._slot_freed.set()

    def _settle(self, request: int, result: object = None,
                error: BaseException | None = None) -> None:
        pending = self._pending.pop(request, None)
        self._slot_freed.set()
        if pending is None or pending.future.done():
            return
        if error is not None:
            pending.future.set_exception(error)
        else:
            pending.future.set_result(result)

    def _handle_events(self) -> None:
        while (event := self.session.next_event()) is not None:
            match event:
                case ev.PutCommitted(size=result) | ev.LinkRead(target=result):
                    self._settle(event.request, result)
                case ev.MkdirDone() | ev.Deleted() | ev.Linked():
                    self._settle(event.request)
                case ev.EntriesReceived():
                    self._on_entries(event)
                case ev.FileStarted():
                    self._on_file_started(event)
                case ev.BodyReceived():
                    self._on_body(event.request, event.data)
                case ev.HoleReceived():
                    self._on_body(event.request, event.length)
                case ev.FileFinished():
                    self._on_file_finished(event)
                case ev.RequestFailed():
                    self._on_failed(event)
                case (ev.PrefixReceived(length=size, digest=digest)
                      | ev.Summed(size=size, digest=digest)):
                    self._settle(event.request, (size, digest))
                case ev.InputEnded() | ev.ServerVerified():
                    pass
                case _:
                    raise AssertionError(f"client core emitted {event!r}")

    def _on_entries(self, event: ev.EntriesReceived) -> None:
        pending = self._pending[event.request]
        if pending.entries is None:
            pending.entries = []
        pending.entries.extend(event.entries)
        if event.last:
            self._settle(event.request, pending.entries)

    def _on_file_started(self, event: ev.FileStarted) -> None:
        pending = self._pending[event.request]
        pending.mode, pending.mtime_ns = event.mode, event.mtime_ns
        if pending.resume is not None:
            self._on_partial_started(event, pending)
            return
        try:
            pending.sink = Sink(AtomicFile.beside(pending.local_path),
                                self.session.digest_feature, size=event.size,
                                follow=self._zero_copy)
        except StorageError as exc:
            self._give_up(event.request, exc)

    def _sink_of(self, request: int) -> Sink | None:
        pending = self._pending.get(request)
        return pending.sink if pending is not None else None

    def _spliced(self, request: int, count: int) -> None:
        progress = self._pending[request].progress
        if progress:
            progress(count)

    def _splice_failed(self, request: int, exc: StorageError) -> None:
        sink = self._pending[request].sink
        if sink is not None:
            sink.file.abort()
        self._give_up(request, exc)

    def _give_up(self, request: int, exc: SockferryError) -> None:
        """A local failure while receiving: cancel on the wire, fail the future now."""
        self.session.cancel(request)
        pending = self._pending[request]
        pending.sink = None
        if not pending.future.done():
            pending.future.set_exception(exc)

    def _on_body(self, request: int, piece: bytes | memoryview | int) -> None:
        pending = self._pending[request]
        if pending.sink is None:
            return  # cancelled locally; the server's reply will close the request
        try:
            count = pending.sink.receive(piece)
        except StorageError as exc:
            self._give_up(request, exc)
            return
        if pending.progress:
            pending.progress(count, hole=isinstance(piece, int))

    def _on_file_finished(self, event: ev.FileFinished) -> None:
        pending = self._pending[event.request]
        sink, pending.sink = pending.sink, None
        if sink is None:
            self._settle(event.request)
            return
        if not sink.deferred and not sink.matches(event.digest):
            sink.file.abort()
            self._settle(event.request, error=RemoteProtocolError(
                f"digest mismatch for {pending.local_path}: the data was damaged in "
                "transit; the partial file was removed"))
            return
        # (Verify a deferred sink,) fsync and rename off the event loop; the request
        # stays counted until then.
        task = asyncio.get_running_loop().create_task(
            self._commit(event, pending, sink))
        self._commits.add(task)
        task.add_done_callback(self._commits.discard)

    async def _commit(self, event: ev.FileFinished, pending: _Pending, sink: Sink) -> None:
        if sink.deferred and not await self._verified(event, pending, sink):
            return
        mode = pending.mode & 0o777 & ~pending.umask
        mtime = pending.mtime_ns if pending.keep_mtime else None
        try:
            await asyncio.to_thread(sink.file.commit, mode, mtime)
        except StorageError as exc:
            self._settle(event.request, error=exc)
        else:
            self._settle(event.request, sink.file.written)

    async def _verified(self, event: ev.FileFinished, pending: _Pending, sink: Sink) -> bool:
        """A body hashed in a thread: whether it matches DONE (if not, it is settled)."""
        resumed = isinstance(sink.file, PartialFile) and pending.resume is not None \
            and pending.resume.offset > 0
        try:
            matches = await sink.verify(event.digest)
        except StorageError as exc:
            if isinstance(sink.file, PartialFile):
                sink.file.keep = False
            sink.file.abort()
            self._settle(event.request, error=exc)
            return False
        if matches:
            return True
        if isinstance(sink.file, PartialFile):
            sink.file.keep = False
        sink.file.abort()
        what = ("the resumed file does not match the server's digest; the partial file was "
                "removed — get it again") if resumed else \
            "the data was damaged in transit; the partial file was removed"
        self._settle(event.request, error=RemoteProtocolError(
            f"digest mismatch for {pending.local_path}: {what}"))
        return False

    def _on_failed(self, event: ev.RequestFailed) -> None:
        pending = self._pending.get(event.request)
        if pending is None:
            return
        if pending.sink is not None:
            pending.sink.file.abort()
            pending.sink = None
        pending.refused = True
        error = exception_for(event.code, event.message)
        if event.request in self.session.requests:
            # A refused PUT stays open until our CANCEL; fail its future now.
            if not pending.future.done():
                pending.future.set_exception(error)
            return
        self._settle(event.request, error=error)

    # -- requests -----------------------------------------------------------------------

    def _check_alive(self) -> None:
        if self._failure is not None:
            raise self._failure

    async def _slot(self) -> None:
        """Wait until the server's window has room for one more request."""
        if self._failure is None and self.session.window_open:
            return  # the common case, without a loop
        while True:
            self._check_alive()
            if self.session.window_open:
                return
            await self._flush()  # what is gathered must leave before we wait
            self._slot_freed.clear()
            await self._slot_freed.wait()

    def _track(self, request: int, kind: ev.RequestKind,
               **details: object) -> asyncio.Future[object]:
        future: asyncio.Future[object] = self._loop.create_future()
        self._pending[request] = _Pending(kind, future, **details)  # type: ignore[arg-type]
        return future

    async def _flush(self) -> None:
        buffers = self.session.buffers_to_send()
        if buffers:
            await self.stream.send(buffers)

    async def flush(self) -> None:
        """Send every request queued so far (requests are gathered into few sends; do
        this before waiting for an answer the caller did not get from a ``start_*``
        wait)."""
        self._check_alive()
        await self._flush()

    async def _gathered(self) -> None:
        """Send what waits once there is enough of it (requests pipeline meanwhile)."""
        if self.session.unsent >= GATHER_BYTES:
            await self._flush()

    async def stat(self, path: str) -> Entry:
        entries = await (await self.start_stat(path))
        assert isinstance(entries, list) and len(entries) == 1
        entry: Entry = entries[0]
        return entry

    async def start_stat(self, path: str) -> asyncio.Future[object]:
        """Ask for one path's entry and return at once: the future gives ``[Entry]``."""
        await self._slot()
        future = self._track(self.session.stat(path), ev.RequestKind.STAT)
        await self._flush()
        return future

    async def list(self, path: str, recursive: bool = False) -> list[Entry]:
        entries = await (await self.start_list(path, recursive))
        assert isinstance(entries, list)
        return entries

    async def start_list(self, path: str, recursive: bool = False,
                         ) -> asyncio.Future[object]:
        """Ask for a listing and return at once: its future gives the ``list[Entry]``
        (the caller may work meanwhile while the server walks its tree)."""
        await self._slot()
        future = self._track(self.session.list(path, recursive), ev.RequestKind.LIST)
        await self._flush()
        return future

    async def start_mkdir(self, path: str, mode: int) -> asyncio.Future[object]:
        await self._slot()
        future = self._track(self.session.mkdir(path, mode), ev.RequestKind.MKDIR)
        await self._flush()
        return future

    @property
    def can_sync(self) -> bool:
        """Whether the server removes names and computes digests (SYNC, §5.3)."""
        return self.session.can_sync

    async def start_delete(self, path: str, directory: bool = False,
                           ) -> asyncio.Future[object]:
        """Remove the remote ``path``: a non-directory (a link itself), or with
        ``directory`` an empty directory; needs ``can_sync``."""
        await self._slot()
        future = self._track(self.session.delete(path, directory), ev.RequestKind.DELETE)
        await self._gathered()
        return future

    @property
    def can_link(self) -> bool:
        """Whether the server copies symbolic links as links (LINKS, §5.4)."""
        return self.session.can_link

    async def start_symlink(self, path: str, target: str) -> asyncio.Future[object]:
        """Make the remote ``path`` a link to ``target`` (relative, inside the root);
        needs ``can_link``."""
        await self._slot()
        future = self._track(self.session.symlink(path, target), ev.RequestKind.SYMLINK)
        await self._gathered()
        return future

    async def start_readlink(self, path: str) -> asyncio.Future[object]:
        """Where the remote link ``path`` points (a ``str``); needs ``can_link``."""
        await self._slot()
        future = self._track(self.session.readlink(path), ev.RequestKind.READLINK)
        await self._gathered()
        return future

    async def start_checksum(self, path: str) -> asyncio.Future[object]:
        """The remote file's (size, digest) in the connection's digest; needs
        ``can_sync``."""
        await self._slot()
        future = self._track(self.session.checksum(path), ev.RequestKind.CHECKSUM)
        await self._gathered()
        return future

    async def start_get(self, remote: str, local: str, *, keep_mtime: bool = False,
                        progress: Progress | None = None) -> asyncio.Future[object]:
        await self._slot()
        future = self._track(self.session.get(remote), ev.RequestKind.GET, local_path=local,
                             keep_mtime=keep_mtime, umask=self._umask, progress=progress)
        await self._gathered()
        return future

    async def start_put(self, local: str, remote: str, *, keep_mtime: bool = False,
                        progress: Progress | None = None,
                        opened: tuple[int, os.stat_result] | None = None,
                        ) -> asyncio.Future[object]:
        """Send one local file (``opened``: already opened with ``open_local_file``; its
        fd is closed here); the future settles with the size when it is committed."""
        fd, st = opened or open_local_file(local)
        try:
            await self._slot()
            if self._inlines(remote, st.st_size):
                future = self._put_inline(local, remote, fd, st, keep_mtime)
                if self.session.unsent >= GATHER_BYTES:
                    await self._flush()
                if progress:
                    progress(st.st_size)
                return future
            request = self.session.put(remote, st.st_size, stat_module.S_IMODE(st.st_mode),
                                       st.st_mtime_ns, keep_mtime)
            future = self._track(request, ev.RequestKind.PUT)
            sparse = bool(self.session.features & m.Feature.SPARSE) and is_sparse(st)
            await self._send_upload(request, local, future, lambda refused: send_body(
                self.session, self.stream, request, fd, st.st_size, sparse, refused,
                progress))
            return future
        finally:
            os.close(fd)

    @property
    def can_stream(self) -> bool:
        """Whether the server takes a body of unknown length (STREAM, §5.2)."""
        return self.session.can_stream

    async def start_put_stream(self, fd: int, remote: str, *, shown: str = "the stream",
                               progress: Progress | None = None) -> asyncio.Future[object]:
        """Send what ``fd`` (a pipe, or any readable descriptor, left open) yields until
        its end as the file ``remote``, created with the mode ``cat > NAME`` would give;
        needs ``can_stream``.  The future settles with the size once it is committed."""
        await self._slot()
        request = self.session.put_streamed(remote, 0o666 & ~self._umask, time.time_ns())
        future = self._track(request, ev.RequestKind.PUT)
        await self._send_upload(request, shown, future, lambda refused: send_stream(
            self.session, self.stream, request, fd, shown, refused, progress))
        return future

    async def _send_upload(self, request: int, local: str, future: asyncio.Future[object],
                           body: Callable[[Callable[[], bool]], Awaitable[object]]) -> None:
        """Send a PUT's body (``body(refused)`` sends it, stopping once ``refused()``);
        a refusal or a local read error on the way cancels the request on the wire."""
        pending = self._pending[request]
        try:
            await body(lambda: pending.refused)
            if request not in self.session.requests and pending.refused:
                # Refused while our last bytes were leaving: the DONE closed it.
                self._pending.pop(request, None)
                self._slot_freed.set()
        except TransferCancelled:
            await self._cancel(request)
        except StorageError as exc:
            await self._cancel(request)
            if not future.done():
                future.set_exception(StorageError(f"{local}: {exc}", errno=exc.errno,
                                                  path=local))

    def can_put_at_once(self, remote: str, size: int) -> bool:
        """Whether ``put_at_once`` may send a file of ``size`` bytes to ``remote`` now:
        a PUT_INLINE file, the window open, less than a gather's worth queued."""
        session = self.session
        return (self._failure is None and session.window_open
                and session.unsent < GATHER_BYTES and self._inlines(remote, size))

    def _inlines(self, remote: str, size: int) -> bool:
        """A file of ``size`` bytes to ``remote`` goes as one PUT_INLINE frame."""
        return size <= INLINE_FILE and self.session.inline and codec.inline_fits(remote, size)

    def put_at_once(self, local: str, remote: str, opened: tuple[int, os.stat_result],
                    keep_mtime: bool = False) -> asyncio.Future[object]:
        """``start_put`` without a wait, where ``can_put_at_once`` said so: the frame is
        queued (sent with the next flush); the fd is closed here."""
        fd, st = opened
        try:
            return self._put_inline(local, remote, fd, st, keep_mtime)
        finally:
            os.close(fd)

    def _put_inline(self, local: str, remote: str, fd: int, st: os.stat_result,
                    keep_mtime: bool) -> asyncio.Future[object]:
        """A small file as one PUT_INLINE frame, to be gathered with others into one
        sendmsg."""
        try:
            data = read_whole(fd, st.st_size)
        except StorageError as exc:
            raise StorageError(f"{local}: {exc}", errno=exc.errno, path=local) from exc
        digest = digests.digest_of(data, self.session.digest_feature)
        request = self.session.put_inline(remote, data, stat_module.S_IMODE(st.st_mode),
                                          st.st_mtime_ns, keep_mtime, digest)
        return self._track(request, ev.RequestKind.PUT)

    # -- resume (docs/protocol.md §5.1) ---------------------------------------------------

    @property
    def can_resume(self) -> bool:
        return bool(self.session.features & m.Feature.RESUME)

    async def partial(self, path: str) -> tuple[int, bytes]:
        """PARTIAL: how many bytes the server keeps towards ``path``, and their digest."""
        await self._slot()
        future = self._track(self.session.partial(path), ev.RequestKind.PARTIAL)
        await self._flush()
        result = await future
        assert isinstance(result, tuple)
        return result

    async def start_put_resumable(self, local: str, remote: str, *, keep_mtime: bool = False,
                                  progress: Progress | None = None,
                                  ) -> tuple[asyncio.Future[object], ResumeReport]:
        """``send --resume``: send only what the server lacks, if it proves its prefix.

        The server states what it keeps (PARTIAL); only if our first bytes have the same
        digest does the rest go as PUT_AT.  Otherwise the whole file goes, resumable.
        """
        report = ResumeReport()
        if not self.can_resume:
            report.note = NO_RESUME
            return await self.start_put(local, remote, keep_mtime=keep_mtime,
                                        progress=progress), report
        fd, st = open_local_file(local)
        try:
            hasher = await self._proven_prefix(fd, st.st_size, remote, report)
            await self._slot()
            mode = stat_module.S_IMODE(st.st_mode)
            if hasher is not None:
                request = self.session.put_at(remote, report.offset, st.st_size, mode,
                                              st.st_mtime_ns, keep_mtime)
            else:
                request = self.session.put(remote, st.st_size, mode, st.st_mtime_ns,
                                           keep_mtime, resumable=True)
            future = self._track(request, ev.RequestKind.PUT)
            if hasher is not None:
                if progress:
                    progress(report.offset)
                tail_hasher = hasher
                await self._send_upload(request, local, future, lambda refused: send_tail(
                    self.session, self.stream, request, fd, report.offset, st.st_size,
                    tail_hasher, refused, progress))
            else:
                sparse = bool(self.session.features & m.Feature.SPARSE) and is_sparse(st)
                await self._send_upload(request, local, future, lambda refused: send_body(
                    self.session, self.stream, request, fd, st.st_size, sparse, refused,
                    progress))
            return future, report
        finally:
            os.close(fd)

    async def _proven_prefix(self, fd: int, size: int, remote: str,
                             report: ResumeReport) -> digests.Hasher | None:
        """A hasher over our first bytes if they are what the server keeps, else None."""
        try:
            length, digest = await self.partial(remote)
        except PeerRefused as exc:
            report.note = f"the server cannot resume '{remote}' ({exc}); sending all of it"
            return None
        if length == 0:
            return None
        hasher = None
        if length <= size:
            hasher = await start_prefix_hash(fd, length, self.session.digest_feature)
        if hasher is None or hasher.digest() != digest:
            report.note = (f"the {length} bytes the server keeps of '{remote}' differ from "
                           "this file; sending all of it")
            return None
        report.offset = length
        return hasher

    async def start_get_resumable(self, remote: str, local: str, *, keep_mtime: bool = False,
                                  progress: Progress | None = None,
                                  ) -> tuple[asyncio.Future[object], ResumeReport]:
        """``get --resume``: keep the partial beside ``local``; offer its length and
        digest; the server sends the rest only if its own first bytes match."""
        report = ResumeReport(note="" if self.can_resume else NO_RESUME)
        try:
            partial = PartialFile.beside(local)
        except StorageError as exc:
            if exc.errno == errno.EAGAIN:
                raise StorageError(f"another transfer to {local} is in progress; try again "
                                   "later", errno=exc.errno, path=local) from None
            raise
        assert isinstance(partial, PartialFile)
        sink = Sink(partial, self.session.digest_feature)  # replaced once FILE says more
        try:
            prefix = None
            if partial.kept and self.can_resume:
                prefix = await start_prefix_hash(partial.fd, partial.kept,
                                                 self.session.digest_feature)
            await self._slot()
            if prefix is not None:
                request = self.session.get(remote, partial.kept, prefix.digest())
            else:
                request = self.session.get(remote)
        except BaseException:
            partial.abort()
            raise
        future = self._track(request, ev.RequestKind.GET, local_path=local, keep_mtime=keep_mtime,
                             umask=self._umask, progress=progress, sink=sink, prefix=prefix,
                             resume=report)
        await self._flush()
        return future, report

    def _on_partial_started(self, event: ev.FileStarted, pending: _Pending) -> None:
        sink, report = pending.sink, pending.resume
        if sink is None or report is None:
            return  # given up locally already
        partial = sink.file
        assert isinstance(partial, PartialFile)
        try:
            partial.start_at(event.offset)
        except StorageError as exc:
            self._give_up(event.request, exc)
            return
        if event.offset and pending.prefix is not None:
            # The prefix hasher already covers the kept bytes: it goes on over the tail.
            pending.sink = Sink(partial, self.session.digest_feature, size=event.size,
                                kept=event.offset, prefix=pending.prefix)
            report.offset = event.offset
            if pending.progress:
                pending.progress(event.offset)
            return
        pending.sink = Sink(partial, self.session.digest_feature, size=event.size,
                            follow=self._zero_copy)
        if pending.prefix is not None:
            report.note = (f"the server's file differs from the {partial.kept} bytes kept "
                           f"of {pending.local_path}; receiving all of it")

    async def _cancel(self, request: int) -> None:
        self.session.cancel(request)
        if request not in self.session.requests:
            self._pending.pop(request, None)
            self._slot_freed.set()
        await self._flush()

    async def finish(self) -> None:
        """Half-close, wait for every verdict and for the server to close, then close."""
        try:
            self._check_alive()
            await self._flush()
            self.stream.shutdown_write()
            if self._reader is not None:
                await self._reader
            if self._commits:
                await asyncio.gather(*self._commits)
            self._check_alive()
        finally:
            self.close()

    def close(self) -> None:
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()
        for pending in self._pending.values():
            if pending.sink is not None:
                pending.sink.file.abort()
        self.stream.close()


def open_local_file(path: str) -> tuple[int, os.stat_result]:
    """Open a regular local file for sending; directories and devices are refused."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise storage_error(exc, path) from exc
    st = os.fstat(fd)
    if not stat_module.S_ISREG(st.st_mode):
        os.close(fd)
        what = "a directory (use -r to copy trees)" if stat_module.S_ISDIR(st.st_mode) \
            else "not a regular file"
        raise StorageError(f"'{path}' is {what}", errno=errno.EISDIR, path=path)
    # O_NONBLOCK kept a FIFO from blocking the open.  Local file systems ignore it on
    # regular files, so a small file (read with one pread) keeps it: two fcntl calls per
    # file saved in a tree of small files.  Bigger files are read blocking, as network
    # and FUSE file systems may honour the flag.
    if st.st_size > INLINE_FILE:
        os.set_blocking(fd, True)
    return fd, st


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
