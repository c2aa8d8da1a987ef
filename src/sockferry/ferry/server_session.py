"""The server's side of a ferry connection (pure, sans-I/O): it checks the client's
HELLO and AUTH, opens a request for each frame that asks for one, and emits the answers
its driver gives.
"""

from __future__ import annotations

from typing import ClassVar

from sockferry.entries import Entry
from sockferry.errors import AuthenticationFailed, LocalProtocolError, RemoteProtocolError
from sockferry.ferry import auth, codec
from sockferry.ferry import messages as m
from sockferry.ferry.events import (
    OK_EVENTS,
    ChecksumRequested,
    ClientAuthenticated,
    DeleteRequested,
    GetRequested,
    ListRequested,
    MkdirRequested,
    PartialRequested,
    Phase,
    PutFinished,
    PutRequested,
    QuickCheckRequested,
    ReadlinkRequested,
    RequestCancelled,
    RequestKind,
    RequestState,
    SmallFileReceived,
    SmallFilesReceived,
    StatRequested,
    SymlinkRequested,
)
from sockferry.ferry.session import (
    DEFAULT_MAX_REQUESTS,
    SOFTWARE,
    ConnState,
    Handler,
    Session,
    TableKey,
    choose_digest,
    handles,
    need_feature,
)


class ServerSession(Session):
    """The server's side of one connection."""

    def __init__(self, token: bytes, nonce: bytes, *, max_requests: int = DEFAULT_MAX_REQUESTS,
                 features: int = m.ALL_FEATURES, channel_binding: bytes | None = None,
                 ) -> None:
        """``channel_binding``: over TLS, the server certificate's binding (§3.1); with
        CHANNEL_BINDING in ``features`` a client that does not bind is refused."""
        super().__init__(token, nonce)
        self.state = ConnState.AWAIT_HELLO
        self.max_requests = max_requests
        self._binding = channel_binding
        if channel_binding is None:
            features &= ~m.Feature.CHANNEL_BINDING  # nothing to bind to in plaintext
        self._offered_features = features
        self._transcript = b""
        self._client_software = ""
        self._small_files: SmallFilesReceived | None = None  # the run being gathered

    def _on_hello(self, hello: m.Hello) -> None:
        if not hello.min_version <= m.VERSION <= hello.max_version:
            self._emit(m.Error(0, m.ErrorCode.UNSUPPORTED_VERSION,
                               f"this server speaks protocol version {m.VERSION} only"))
            raise RemoteProtocolError(
                f"client speaks versions {hello.min_version}-{hello.max_version} only",
                code=m.ErrorCode.UNSUPPORTED_VERSION)
        common = hello.features & self._offered_features
        binds = self._offered_features & m.Feature.CHANNEL_BINDING
        if binds and not common & m.Feature.CHANNEL_BINDING:
            message = ("this TLS server binds authentication to the TLS channel and the "
                       "client does not (no CHANNEL_BINDING) — upgrade the client")
            self._emit(m.Error(0, m.ErrorCode.BAD_REQUEST, message))
            raise RemoteProtocolError(message, code=m.ErrorCode.BAD_REQUEST)
        try:
            digest = choose_digest(common)
        except RemoteProtocolError as exc:
            self._emit(m.Error(0, m.ErrorCode.UNSUPPORTED_VERSION, str(exc)))
            raise
        # Reply with the one digest chosen; other bits are the intersection.
        self._agreed((common & ~m.DIGEST_FEATURES) | digest)
        self.digest_feature = digest
        self._client_software = hello.software
        reply = m.HelloReply(m.VERSION, self.features, self.max_requests, self._nonce,
                             SOFTWARE, b"\0" * m.PROOF_BYTES)
        signed = codec.hello_reply_signed_part(reply)
        hello_body = codec.encode(hello)[m.HEADER.size :]
        self._transcript = auth.transcript_hash(hello_body, signed,
                                                self._binding if binds else None)
        proof = auth.proof(self._token, auth.SERVER_LABEL, self._transcript)
        self._emit(m.HelloReply(m.VERSION, self.features, self.max_requests, self._nonce,
                                SOFTWARE, proof))
        self.state = ConnState.AWAIT_AUTH

    def _on_auth(self, message: m.Auth) -> None:
        expected = auth.proof(self._token, auth.CLIENT_LABEL, self._transcript)
        if not auth.verify(expected, message.proof):
            self._emit(m.Error(0, m.ErrorCode.AUTH_FAILED, "authentication failed"))
            raise AuthenticationFailed
        self.state = ConnState.READY
        self._events.append(ClientAuthenticated(self._client_software, self.features))

    def _open(self, request: int, state: RequestState) -> None:
        if request in self.requests:
            raise RemoteProtocolError(f"request id {request} is already in use",
                                      code=m.ErrorCode.BAD_REQUEST)
        if len(self.requests) >= self.max_requests:
            raise RemoteProtocolError(
                f"more than {self.max_requests} requests at once (the window this server "
                "granted)", code=m.ErrorCode.BUSY)
        self.requests[request] = state

    def _on_put(self, message: m.Put) -> None:
        # RESUMABLE is an undefined flag without RESUME: ignored, as §2 says.
        resumable = bool(message.flags & m.PutFlag.RESUMABLE
                         and self.features & m.Feature.RESUME)
        streamed = bool(message.flags & m.PutFlag.STREAMED)
        if streamed:
            self._check_streamed(message, resumable)
        size = m.MAX_FILE_SIZE if streamed else message.size
        self._open(message.request, RequestState(RequestKind.PUT, Phase.RECEIVING, size=size,
                                            streamed=streamed))
        self._events.append(PutRequested(message.request, message.path, message.size,
                                         message.mode, message.mtime_ns,
                                         bool(message.flags & m.PutFlag.KEEP_MTIME),
                                         resumable=resumable, streamed=streamed))

    def _check_streamed(self, message: m.Put, resumable: bool) -> None:
        """§5.2: STREAMED needs STREAM, size 0, and no RESUMABLE."""
        problem = ("without the STREAM feature" if not self.features & m.Feature.STREAM
                   else f"announcing {message.size} bytes" if message.size
                   else "that is also RESUMABLE" if resumable else None)
        if problem is not None:
            raise RemoteProtocolError(f"STREAMED PUT {problem}", code=m.ErrorCode.BAD_REQUEST)

    def _on_put_at(self, message: m.PutAt) -> None:
        need_feature(self.features, m.Feature.RESUME, "PUT_AT")
        self._open(message.request, RequestState(RequestKind.PUT, Phase.RECEIVING,
                                            size=message.size - message.offset))
        self._events.append(PutRequested(message.request, message.path, message.size,
                                         message.mode, message.mtime_ns,
                                         bool(message.flags & m.PutFlag.KEEP_MTIME),
                                         offset=message.offset, resumable=True))

    def _on_partial(self, message: m.Partial) -> None:
        need_feature(self.features, m.Feature.RESUME, "PARTIAL")
        self._open(message.request, RequestState(RequestKind.PARTIAL, Phase.SERVING))
        self._events.append(PartialRequested(message.request, message.path))

    def _on_put_inline(self, message: m.PutInline) -> None:
        if not self.inline:
            raise RemoteProtocolError("PUT_INLINE frame without the INLINE feature",
                                      code=m.ErrorCode.BAD_REQUEST)
        size = len(message.data)
        self._open(message.request, RequestState(RequestKind.PUT, Phase.AWAIT_REPLY, size=size,
                                            done=size))
        received = SmallFileReceived(message.request, message.path, message.mode,
                                     message.mtime_ns, message.flags == m.PutFlag.KEEP_MTIME,
                                     message.data, message.digest)
        # Events are only ever appended: while the run is the last event, this file joins
        # it without changing the order of anything.
        events, run = self._events, self._small_files
        if run is not None and events and events[-1] is run:
            run.files.append(received)
        else:
            self._small_files = run = SmallFilesReceived([received])
            events.append(run)

    def _on_done(self, message: m.Done) -> None:
        state = self._request(message.request, Phase.RECEIVING, Phase.DISCARDING)
        self._check_complete(message.request, state)
        if state.phase is Phase.DISCARDING:
            del self.requests[message.request]  # already answered
            return
        state.phase = Phase.AWAIT_REPLY
        self._events.append(PutFinished(message.request, message.digest,
                                        state.done if state.streamed else state.size))

    def _on_cancel(self, message: m.Cancel) -> None:
        state = self.requests.get(message.request)
        if state is None:
            # A CANCEL may cross our final reply on the wire; that is not an error.
            return
        if state.kind is RequestKind.PUT:
            if state.phase is Phase.AWAIT_REPLY:
                raise RemoteProtocolError(f"CANCEL after DONE for request {message.request}",
                                          code=m.ErrorCode.BAD_REQUEST)
            if state.phase is Phase.RECEIVING:
                self._emit(m.Error(message.request, m.ErrorCode.CANCELLED,
                                   "cancelled by the client"))
                self._events.append(RequestCancelled(message.request))
            del self.requests[message.request]
            return
        if not state.cancelled:
            state.cancelled = True
            self._events.append(RequestCancelled(message.request))

    def _on_get(self, message: m.Get) -> None:
        if message.prefix_digest is not None:
            need_feature(self.features, m.Feature.RESUME, "GET with a prefix digest")
        self._open(message.request, RequestState(RequestKind.GET, Phase.SERVING,
                                            offset=message.offset))
        self._events.append(GetRequested(message.request, message.path, message.offset,
                                         message.prefix_digest))

    def _on_list(self, message: m.ListDir) -> None:
        self._open(message.request, RequestState(RequestKind.LIST, Phase.SERVING))
        self._events.append(ListRequested(message.request, message.path,
                                          bool(message.flags & m.ListFlag.RECURSIVE)))

    def _on_stat(self, message: m.Stat) -> None:
        self._open(message.request, RequestState(RequestKind.STAT, Phase.SERVING))
        self._events.append(StatRequested(message.request, message.path))

    def _on_mkdir(self, message: m.Mkdir) -> None:
        self._open(message.request, RequestState(RequestKind.MKDIR, Phase.SERVING))
        self._events.append(MkdirRequested(message.request, message.path, message.mode))

    def _on_delete(self, message: m.Delete) -> None:
        need_feature(self.features, m.Feature.SYNC, "DELETE")
        self._open(message.request, RequestState(RequestKind.DELETE, Phase.SERVING))
        self._events.append(DeleteRequested(message.request, message.path, message.directory))

    def _on_checksum(self, message: m.Checksum) -> None:
        need_feature(self.features, m.Feature.SYNC, "CHECKSUM")
        self._open(message.request, RequestState(RequestKind.CHECKSUM, Phase.SERVING))
        self._events.append(ChecksumRequested(message.request, message.path))

    def _on_symlink(self, message: m.Symlink) -> None:
        need_feature(self.features, m.Feature.LINKS, "SYMLINK")
        self._open(message.request, RequestState(RequestKind.SYMLINK, Phase.SERVING))
        self._events.append(SymlinkRequested(message.request, message.path, message.target))

    def _on_readlink(self, message: m.Readlink) -> None:
        need_feature(self.features, m.Feature.LINKS, "READLINK")
        self._open(message.request, RequestState(RequestKind.READLINK, Phase.SERVING))
        self._events.append(ReadlinkRequested(message.request, message.path))

    def _on_quick_check(self, message: m.QuickCheck) -> None:
        need_feature(self.features, m.Feature.QUICK_CHECK, "QUICK_CHECK")
        self._open(message.request, RequestState(RequestKind.QUICK_CHECK, Phase.SERVING,
                                                 size=len(message.names)))
        self._events.append(QuickCheckRequested(message.request, message.path,
                                                message.names))

    # -- answers ------------------------------------------------------------------------

    def refuse(self, request: int, code: int, message: str) -> None:
        """Final ERROR for a request (a refused PUT keeps swallowing its DATA)."""
        state = self._local(request, Phase.RECEIVING, Phase.AWAIT_REPLY, Phase.SERVING,
                            Phase.SENDING)
        self._emit(m.Error(request, code, message))
        if state.phase is Phase.RECEIVING:
            state.phase = Phase.DISCARDING
        else:
            del self.requests[request]

    def commit(self, request: int, size: int, digest: bytes) -> None:
        state = self.requests.get(request)  # _local, inlined: this runs once per file
        if state is None or state.phase is not Phase.AWAIT_REPLY:
            self._local(request, Phase.AWAIT_REPLY)  # raises
        frame = codec.encode_committed(request, size, digest)  # one per file: no record
        self._out.append(frame)
        self.unsent += len(frame)
        del self.requests[request]

    def ok(self, request: int) -> None:
        state = self._local(request, Phase.SERVING)
        if state.kind not in OK_EVENTS:
            raise LocalProtocolError("OK answers MKDIR, DELETE and SYMLINK only")
        self._emit(m.Ok(request))
        del self.requests[request]

    def link(self, request: int, target: str) -> None:
        """LINK: the answer to READLINK."""
        state = self._local(request, Phase.SERVING)
        if state.kind is not RequestKind.READLINK:
            raise LocalProtocolError("LINK answers READLINK only")
        self._emit(m.Link(request, target))
        del self.requests[request]

    def sum(self, request: int, size: int, digest: bytes) -> None:
        """SUM: the answer to CHECKSUM."""
        state = self._local(request, Phase.SERVING)
        if state.kind is not RequestKind.CHECKSUM:
            raise LocalProtocolError("SUM answers CHECKSUM only")
        self._emit(m.Sum(request, size, digest))
        del self.requests[request]

    def same(self, request: int, bitmap: bytes) -> None:
        """SAME: the answer to QUICK_CHECK, one bit per name asked."""
        state = self._local(request, Phase.SERVING)
        if state.kind is not RequestKind.QUICK_CHECK:
            raise LocalProtocolError("SAME answers QUICK_CHECK only")
        self._emit(m.Same(request, state.size, bitmap))
        del self.requests[request]

    def entries(self, request: int, entries: list[Entry] | tuple[Entry, ...],
                last: bool) -> None:
        state = self._local(request, Phase.SERVING)
        if state.kind not in (RequestKind.LIST, RequestKind.STAT):
            raise LocalProtocolError("ENTRIES answers LIST and STAT only")
        self._emit(m.Entries(request, tuple(entries), last))
        if last:
            del self.requests[request]

    def file_header(self, request: int, size: int, mode: int, mtime_ns: int) -> None:
        state = self._local(request, Phase.SERVING)
        if state.kind is not RequestKind.GET:
            raise LocalProtocolError("FILE answers GET only")
        state.phase, state.size = Phase.SENDING, size
        self._emit(m.FileHeader(request, size, mode, mtime_ns))

    def resumed_file_header(self, request: int, size: int, mode: int,
                            mtime_ns: int) -> None:
        """FILE with RESUMED: the prefix matched, the body is the file from the offset."""
        state = self._local(request, Phase.SERVING)
        if state.kind is not RequestKind.GET or not state.offset or state.offset > size:
            raise LocalProtocolError("a resumed FILE answers a GET with an offset within "
                                     "the file")
        state.phase, state.size = Phase.SENDING, size - state.offset
        self._emit(m.FileHeader(request, size, mode, mtime_ns, resumed=True))

    def prefix(self, request: int, length: int, digest: bytes) -> None:
        """PREFIX: the answer to PARTIAL."""
        state = self._local(request, Phase.SERVING)
        if state.kind is not RequestKind.PARTIAL:
            raise LocalProtocolError("PREFIX answers PARTIAL only")
        self._emit(m.Prefix(request, length, digest))
        del self.requests[request]

    def data_header(self, request: int, length: int) -> None:
        """Emit a DATA header; the driver sends ``length`` body bytes right after it."""
        self._emit_data(request, self._local(request, Phase.SENDING), length)

    def data(self, request: int, chunk: bytes | memoryview) -> None:
        self.data_header(request, len(chunk))
        self._out.append(chunk)
        self.unsent += len(chunk)

    def hole(self, request: int, length: int) -> None:
        self._emit_hole(request, self._local(request, Phase.SENDING), length)

    def file_done(self, request: int, digest: bytes) -> None:
        state = self._local(request, Phase.SENDING)
        if state.left:
            raise LocalProtocolError(f"request {request} still owes {state.left} bytes")
        self._emit(m.Done(request, digest))
        del self.requests[request]

    def fail_connection(self, code: int, message: str) -> None:
        """A connection-level ERROR (request 0), e.g. when shutting down."""
        self._emit(m.Error(0, code, message))
        self.state = ConnState.FAILED

    # (state, frame) -> handler; every other pairing is the peer's violation.
    HANDLERS: ClassVar[dict[TableKey, Handler[ServerSession]]] = dict([
        handles(ConnState.AWAIT_HELLO, m.Hello, _on_hello),
        handles(ConnState.AWAIT_AUTH, m.Auth, _on_auth),
        handles(ConnState.READY, m.Put, _on_put),
        handles(ConnState.READY, m.PutInline, _on_put_inline),
        handles(ConnState.READY, m.Data, Session._on_data),
        handles(ConnState.READY, m.BodyPiece, Session._on_chunk),
        handles(ConnState.READY, m.Hole, Session._on_hole),
        handles(ConnState.READY, m.Done, _on_done),
        handles(ConnState.READY, m.Cancel, _on_cancel),
        handles(ConnState.READY, m.Get, _on_get),
        handles(ConnState.READY, m.ListDir, _on_list),
        handles(ConnState.READY, m.Stat, _on_stat),
        handles(ConnState.READY, m.Mkdir, _on_mkdir),
        handles(ConnState.READY, m.Partial, _on_partial),
        handles(ConnState.READY, m.PutAt, _on_put_at),
        handles(ConnState.READY, m.Delete, _on_delete),
        handles(ConnState.READY, m.Checksum, _on_checksum),
        handles(ConnState.READY, m.Symlink, _on_symlink),
        handles(ConnState.READY, m.Readlink, _on_readlink),
        handles(ConnState.READY, m.QuickCheck, _on_quick_check),
    ])
