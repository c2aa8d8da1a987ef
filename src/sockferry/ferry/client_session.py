"""The client's side of a ferry connection (pure, sans-I/O): it sends HELLO, verifies
the server's proof before proving itself, numbers its requests within the server's
window, and turns the server's answers into events.
"""

from __future__ import annotations

from typing import ClassVar

from sockferry.errors import (
    AuthenticationFailed,
    LocalProtocolError,
    PeerRefused,
    RemoteProtocolError,
)
from sockferry.ferry import auth, codec
from sockferry.ferry import messages as m
from sockferry.ferry.events import (
    OK_EVENTS,
    EntriesReceived,
    FileFinished,
    FileStarted,
    LinkRead,
    Phase,
    PrefixReceived,
    PutCommitted,
    QuickChecked,
    RequestFailed,
    RequestKind,
    RequestState,
    ServerVerified,
    Summed,
)
from sockferry.ferry.session import (
    SOFTWARE,
    ConnState,
    Handler,
    Session,
    TableKey,
    choose_digest,
    handles,
)

MAX_REQUESTS_LIMIT = 65536  # largest window a client accepts from a server
_KEEP_MTIME = int(m.PutFlag.KEEP_MTIME)  # a plain int: no IntFlag arithmetic per file


class ClientSession(Session):
    """The client's side of one connection."""

    def __init__(self, token: bytes, nonce: bytes, *, features: int = m.ALL_FEATURES,
                 channel_binding: bytes | None = None) -> None:
        """``channel_binding``: over TLS, the binding of the certificate the server
        presented (§3.1); offered, and then required, when ``features`` has
        CHANNEL_BINDING."""
        super().__init__(token, nonce)
        if channel_binding is None:
            features &= ~m.Feature.CHANNEL_BINDING
        self._binding = channel_binding
        self._hello = m.Hello(m.VERSION, m.VERSION, features, nonce, SOFTWARE)
        self._emit(self._hello)
        self.state = ConnState.AWAIT_REPLY
        self._next_id = 1
        self.server_software = ""

    def _on_hello_reply(self, reply: m.HelloReply) -> None:
        if reply.version != m.VERSION:
            raise RemoteProtocolError(f"server chose protocol version {reply.version}, "
                                      f"which this client does not speak",
                                      code=m.ErrorCode.UNSUPPORTED_VERSION)
        if not 1 <= reply.max_requests <= MAX_REQUESTS_LIMIT:
            raise RemoteProtocolError(f"server window of {reply.max_requests} requests",
                                      code=m.ErrorCode.BAD_REQUEST)
        if reply.features & ~self._hello.features:
            raise RemoteProtocolError("server chose a feature this client did not offer",
                                      code=m.ErrorCode.BAD_REQUEST)
        digest = choose_digest(reply.features & m.DIGEST_FEATURES)
        binds = bool(self._hello.features & m.Feature.CHANNEL_BINDING)
        if binds and not reply.features & m.Feature.CHANNEL_BINDING:
            raise RemoteProtocolError("the server did not bind authentication to the TLS "
                                      "channel (no CHANNEL_BINDING); refusing it",
                                      code=m.ErrorCode.BAD_REQUEST)
        transcript = auth.transcript_hash(codec.encode(self._hello)[m.HEADER.size :],
                                          codec.hello_reply_signed_part(reply),
                                          self._binding if binds else None)
        expected = auth.proof(self._token, auth.SERVER_LABEL, transcript)
        if not auth.verify(expected, reply.proof):
            # The server does not know our token: never reveal our proof to it.
            raise AuthenticationFailed
        self._agreed(reply.features)
        self.digest_feature = digest
        self.max_requests = reply.max_requests
        self.server_software = reply.software
        self._emit(m.Auth(auth.proof(self._token, auth.CLIENT_LABEL, transcript)))
        self.state = ConnState.READY
        self._events.append(ServerVerified(reply.software, reply.features,
                                           reply.max_requests))

    # -- requests -----------------------------------------------------------------------

    @property
    def window_open(self) -> bool:
        return len(self.requests) < self.max_requests

    def _new_request(self, state: RequestState) -> int:
        if self.state is not ConnState.READY:
            raise LocalProtocolError(f"cannot send requests in state {self.state.name}")
        if not self.window_open:
            raise LocalProtocolError("the server's request window is full")
        while self._next_id in self.requests or self._next_id == 0:
            self._next_id = (self._next_id + 1) & 0xFFFFFFFF
        request = self._next_id
        self._next_id = (self._next_id + 1) & 0xFFFFFFFF
        self.requests[request] = state
        return request

    def put(self, path: str, size: int, mode: int, mtime_ns: int, keep_mtime: bool,
            resumable: bool = False) -> int:
        request = self._new_request(RequestState(RequestKind.PUT, Phase.SENDING, size=size))
        flags = m.PutFlag.KEEP_MTIME if keep_mtime else m.PutFlag.NONE
        if resumable:
            self._local_resume("a resumable PUT")
            flags |= m.PutFlag.RESUMABLE
        self._emit(m.Put(request, path, size, mode, mtime_ns, flags))
        return request

    @property
    def can_stream(self) -> bool:
        return bool(self.features & m.Feature.STREAM)

    def put_streamed(self, path: str, mode: int, mtime_ns: int) -> int:
        """A PUT whose length is known only at ``done`` (§5.2; needs STREAM)."""
        if not self.can_stream:
            raise LocalProtocolError("a streamed PUT needs the STREAM feature")
        request = self._new_request(RequestState(RequestKind.PUT, Phase.SENDING,
                                                 size=m.MAX_FILE_SIZE, streamed=True))
        self._emit(m.Put(request, path, 0, mode, mtime_ns, m.PutFlag.STREAMED))
        return request

    def put_inline(self, path: str, data: bytes, mode: int, mtime_ns: int, keep_mtime: bool,
                   digest: bytes) -> int:
        """A whole small file in one frame (needs INLINE); it then awaits its verdict."""
        if not self.inline:
            raise LocalProtocolError("PUT_INLINE needs the INLINE feature")
        request = self._new_request(RequestState(RequestKind.PUT, Phase.AWAIT_REPLY,
                                                 size=len(data), done=len(data)))
        try:  # the encoder refuses a file that does not fit: then no request stays open
            frame = codec.encode_put_inline(request, path, mode, mtime_ns, data, digest,
                                            _KEEP_MTIME if keep_mtime else 0)
        except LocalProtocolError:
            del self.requests[request]
            raise
        self._out.append(frame)
        self.unsent += len(frame)
        return request

    def _local_resume(self, what: str) -> None:
        self._local_feature(m.Feature.RESUME, what)

    def put_at(self, path: str, offset: int, size: int, mode: int, mtime_ns: int,
               keep_mtime: bool) -> int:
        """PUT_AT: the DATA that follows is the file from ``offset`` on."""
        self._local_resume("PUT_AT")
        if not 0 <= offset <= size:
            raise LocalProtocolError(f"offset {offset} is beyond the size {size}")
        request = self._new_request(RequestState(RequestKind.PUT, Phase.SENDING,
                                                 size=size - offset))
        flags = m.PutFlag.KEEP_MTIME if keep_mtime else m.PutFlag.NONE
        self._emit(m.PutAt(request, path, offset, size, mode, mtime_ns, flags))
        return request

    def partial(self, path: str) -> int:
        """PARTIAL: ask what the server keeps towards ``path``."""
        self._local_resume("PARTIAL")
        request = self._new_request(RequestState(RequestKind.PARTIAL, Phase.AWAIT_REPLY))
        self._emit(m.Partial(request, path))
        return request

    def data_header(self, request: int, length: int) -> None:
        state = self._local(request, Phase.SENDING)
        if state.cancelled:
            raise LocalProtocolError(f"request {request} was cancelled")
        self._emit_data(request, state, length)

    def data(self, request: int, chunk: bytes | memoryview) -> None:
        self.data_header(request, len(chunk))
        self._out.append(chunk)
        self.unsent += len(chunk)

    def hole(self, request: int, length: int) -> None:
        state = self._local(request, Phase.SENDING)
        if state.cancelled:
            raise LocalProtocolError(f"request {request} was cancelled")
        self._emit_hole(request, state, length)

    def done(self, request: int, digest: bytes) -> None:
        state = self._local(request, Phase.SENDING, Phase.DISCARDING)
        if state.left and not state.streamed:
            raise LocalProtocolError(f"request {request} still owes {state.left} bytes")
        self._emit(m.Done(request, digest))
        if state.phase is Phase.DISCARDING:
            del self.requests[request]  # the server already refused it
        else:
            state.phase = Phase.AWAIT_REPLY

    def cancel(self, request: int) -> None:
        """Abandon a PUT being sent, or ask the server to stop a GET."""
        state = self.requests.get(request)
        if state is None or state.cancelled:
            return
        state.cancelled = True
        self._emit(m.Cancel(request))
        if state.kind is RequestKind.PUT and state.phase is Phase.DISCARDING:
            del self.requests[request]

    def get(self, path: str, offset: int = 0, prefix_digest: bytes | None = None) -> int:
        """GET; with RESUME, ``offset`` > 0 comes with the digest of our first bytes."""
        if prefix_digest is not None:
            self._local_resume("a GET with a prefix digest")
            if offset <= 0:
                raise LocalProtocolError("a prefix digest needs an offset of at least 1")
        request = self._new_request(RequestState(RequestKind.GET, Phase.AWAIT_REPLY,
                                            offset=offset if prefix_digest else 0))
        self._emit(m.Get(request, path, offset, prefix_digest))
        return request

    def list(self, path: str, recursive: bool = False) -> int:
        request = self._new_request(RequestState(RequestKind.LIST, Phase.AWAIT_REPLY))
        flags = m.ListFlag.RECURSIVE if recursive else m.ListFlag.NONE
        self._emit(m.ListDir(request, path, flags))
        return request

    def stat(self, path: str) -> int:
        request = self._new_request(RequestState(RequestKind.STAT, Phase.AWAIT_REPLY))
        self._emit(m.Stat(request, path))
        return request

    def mkdir(self, path: str, mode: int) -> int:
        request = self._new_request(RequestState(RequestKind.MKDIR, Phase.AWAIT_REPLY))
        self._emit(m.Mkdir(request, path, mode))
        return request

    # -- replies ------------------------------------------------------------------------


    @property
    def can_sync(self) -> bool:
        return bool(self.features & m.Feature.SYNC)

    def delete(self, path: str, directory: bool = False) -> int:
        """DELETE (needs SYNC): a non-directory, or (``directory``) an empty directory."""
        self._local_feature(m.Feature.SYNC, "DELETE")
        request = self._new_request(RequestState(RequestKind.DELETE, Phase.AWAIT_REPLY))
        self._emit(m.Delete(request, path, directory))
        return request

    @property
    def can_link(self) -> bool:
        return bool(self.features & m.Feature.LINKS)

    def symlink(self, path: str, target: str) -> int:
        """SYMLINK (needs LINKS): make ``path`` a link to ``target``."""
        self._local_feature(m.Feature.LINKS, "SYMLINK")
        request = self._new_request(RequestState(RequestKind.SYMLINK, Phase.AWAIT_REPLY))
        self._emit(m.Symlink(request, path, target))
        return request

    def readlink(self, path: str) -> int:
        """READLINK (needs LINKS): where the link at ``path`` points."""
        self._local_feature(m.Feature.LINKS, "READLINK")
        request = self._new_request(RequestState(RequestKind.READLINK, Phase.AWAIT_REPLY))
        self._emit(m.Readlink(request, path))
        return request

    def checksum(self, path: str) -> int:
        """CHECKSUM (needs SYNC): ask for the size and digest of a file."""
        self._local_feature(m.Feature.SYNC, "CHECKSUM")
        request = self._new_request(RequestState(RequestKind.CHECKSUM, Phase.AWAIT_REPLY))
        self._emit(m.Checksum(request, path))
        return request

    @property
    def can_quick_check(self) -> bool:
        return bool(self.features & m.Feature.QUICK_CHECK)

    def quick_check(self, path: str, names: tuple[m.NameCheck, ...]) -> int:
        """QUICK_CHECK (needs QUICK_CHECK): which of ``names`` in the directory ``path``
        the server has unchanged."""
        self._local_feature(m.Feature.QUICK_CHECK, "QUICK_CHECK")
        request = self._new_request(RequestState(RequestKind.QUICK_CHECK, Phase.AWAIT_REPLY,
                                                 size=len(names)))
        self._emit(m.QuickCheck(request, path, names))
        return request

    def _local_feature(self, feature: m.Feature, what: str) -> None:
        if not self.features & feature:
            raise LocalProtocolError(f"{what} needs the {feature.name} feature")
    def _expect(self, request: int, kind: RequestKind, *phases: Phase) -> RequestState:
        state = self._request(request, *phases)
        if state.kind is not kind:
            raise RemoteProtocolError(f"reply of the wrong kind for {state.kind.name} "
                                      f"request {request}", code=m.ErrorCode.BAD_REQUEST)
        return state

    def _on_committed(self, message: m.Committed) -> None:
        state = self._expect(message.request, RequestKind.PUT, Phase.AWAIT_REPLY)
        if state.streamed and message.size != state.done:
            raise RemoteProtocolError(
                f"the server committed {message.size} bytes of the {state.done} streamed "
                f"for request {message.request}", code=m.ErrorCode.BAD_REQUEST)
        del self.requests[message.request]
        self._events.append(PutCommitted(message.request, message.size, message.digest))

    def _on_ok(self, message: m.Ok) -> None:
        state = self._request(message.request, Phase.AWAIT_REPLY)
        answered = OK_EVENTS.get(state.kind)
        if answered is None:
            raise RemoteProtocolError(f"OK for {state.kind.name} request {message.request}",
                                      code=m.ErrorCode.BAD_REQUEST)
        del self.requests[message.request]
        self._events.append(answered(message.request))

    def _on_link(self, message: m.Link) -> None:
        self._expect(message.request, RequestKind.READLINK, Phase.AWAIT_REPLY)
        del self.requests[message.request]
        self._events.append(LinkRead(message.request, message.target))

    def _on_sum(self, message: m.Sum) -> None:
        self._expect(message.request, RequestKind.CHECKSUM, Phase.AWAIT_REPLY)
        del self.requests[message.request]
        self._events.append(Summed(message.request, message.size, message.digest))

    def _on_same(self, message: m.Same) -> None:
        state = self._expect(message.request, RequestKind.QUICK_CHECK, Phase.AWAIT_REPLY)
        if message.count != state.size:
            raise RemoteProtocolError(f"SAME for {message.count} names answers a QUICK_CHECK "
                                      f"of {state.size}", code=m.ErrorCode.BAD_REQUEST)
        del self.requests[message.request]
        self._events.append(QuickChecked(message.request, message.bitmap))

    def _on_file(self, message: m.FileHeader) -> None:
        state = self._expect(message.request, RequestKind.GET, Phase.AWAIT_REPLY)
        offset = 0
        if message.resumed:
            if not state.offset or state.offset > message.size:
                raise RemoteProtocolError(
                    f"resumed FILE for request {message.request}, which asked for no "
                    "offset within the file", code=m.ErrorCode.BAD_REQUEST)
            offset = state.offset
        state.phase, state.size = Phase.RECEIVING, message.size - offset
        self._events.append(FileStarted(message.request, message.size, message.mode,
                                        message.mtime_ns, offset))

    def _on_prefix(self, message: m.Prefix) -> None:
        self._expect(message.request, RequestKind.PARTIAL, Phase.AWAIT_REPLY)
        del self.requests[message.request]
        self._events.append(PrefixReceived(message.request, message.length, message.digest))

    def _on_done(self, message: m.Done) -> None:
        state = self._expect(message.request, RequestKind.GET, Phase.RECEIVING)
        self._check_complete(message.request, state)
        del self.requests[message.request]
        self._events.append(FileFinished(message.request, message.digest))

    def _on_entries(self, message: m.Entries) -> None:
        state = self._request(message.request, Phase.AWAIT_REPLY)
        if state.kind not in (RequestKind.LIST, RequestKind.STAT):
            raise RemoteProtocolError(f"ENTRIES for {state.kind.name} request",
                                      code=m.ErrorCode.BAD_REQUEST)
        if state.kind is RequestKind.STAT and (len(message.entries) != 1 or not message.last):
            raise RemoteProtocolError("STAT must be answered with exactly one entry",
                                      code=m.ErrorCode.BAD_REQUEST)
        if message.last:
            del self.requests[message.request]
        self._events.append(EntriesReceived(message.request, message.entries, message.last))

    def _on_error(self, message: m.Error) -> None:
        if message.request == 0:
            self.state = ConnState.FAILED
            if message.code == m.ErrorCode.AUTH_FAILED:
                raise AuthenticationFailed
            raise PeerRefused(f"server closed the connection: {message.message}",
                              code=message.code)
        state = self._request(message.request, Phase.SENDING, Phase.AWAIT_REPLY,
                              Phase.RECEIVING)
        if state.kind is RequestKind.PUT and state.phase is Phase.SENDING:
            # Refused while we still send: the request lives until our DONE or CANCEL.
            state.phase = Phase.DISCARDING
            if state.cancelled:
                del self.requests[message.request]
        else:
            del self.requests[message.request]
        self._events.append(RequestFailed(message.request, message.code, message.message))

    # (state, frame) -> handler; every other pairing is the peer's violation.
    HANDLERS: ClassVar[dict[TableKey, Handler[ClientSession]]] = dict([
        handles(ConnState.AWAIT_REPLY, m.HelloReply, _on_hello_reply),
        handles(ConnState.AWAIT_REPLY, m.Error, _on_error),
        handles(ConnState.READY, m.Committed, _on_committed),
        handles(ConnState.READY, m.Ok, _on_ok),
        handles(ConnState.READY, m.FileHeader, _on_file),
        handles(ConnState.READY, m.Data, Session._on_data),
        handles(ConnState.READY, m.BodyPiece, Session._on_chunk),
        handles(ConnState.READY, m.Hole, Session._on_hole),
        handles(ConnState.READY, m.Done, _on_done),
        handles(ConnState.READY, m.Entries, _on_entries),
        handles(ConnState.READY, m.Error, _on_error),
        handles(ConnState.READY, m.Prefix, _on_prefix),
        handles(ConnState.READY, m.Sum, _on_sum),
        handles(ConnState.READY, m.Link, _on_link),
        handles(ConnState.READY, m.Same, _on_same),
    ])
