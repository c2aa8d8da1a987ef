"""Client and server state machines of the ferry protocol (pure, sans-I/O).

Feed received bytes with ``receive_data`` (``b""`` when the peer closed), drain
``data_to_send()`` and ``next_event()``.  Calls that emit frames (``put``, ``commit``,
...) append to the outgoing buffer.  File bytes never pass through a core on the way
out when the driver uses sendfile: ``data_header`` emits only the header and the driver
sends the body itself, right after flushing ``data_to_send()``.

Anything the peer does that the tables below do not allow raises
``RemoteProtocolError`` and parks the session in ``FAILED``; anything the driver does
that is not allowed raises ``LocalProtocolError``.
"""

from __future__ import annotations

from collections import deque
from enum import Enum, auto
from typing import ClassVar

from sockferry.entries import Entry
from sockferry.errors import (
    AuthenticationFailed,
    LocalProtocolError,
    MalformedPacket,
    PeerRefused,
    RemoteProtocolError,
)
from sockferry.ferry import auth
from sockferry.ferry import messages as m
from sockferry.records import mutable_record, record

DEFAULT_MAX_REQUESTS = 256  # pipelining window a server grants; clients keep under it
MAX_REQUESTS_LIMIT = 65536  # largest window a client accepts from a server
SOFTWARE = "sockferry/0.1"


class ConnState(Enum):
    AWAIT_HELLO = auto()  # server: before the client's HELLO
    AWAIT_REPLY = auto()  # client: HELLO sent
    AWAIT_AUTH = auto()  # server: HELLO_REPLY sent
    READY = auto()
    CLOSED = auto()  # the peer ended its side cleanly
    FAILED = auto()


class Phase(Enum):
    """Where one request stands, seen from the side that holds it."""

    SENDING = auto()  # our DATA is flowing (client PUT, server GET)
    RECEIVING = auto()  # their DATA is flowing (server PUT, client GET)
    DISCARDING = auto()  # refused while their DATA still flows: swallow until DONE/CANCEL
    AWAIT_REPLY = auto()  # our side is complete; the verdict is pending
    SERVING = auto()  # server: working on GET/LIST/STAT/MKDIR


class RequestKind(Enum):
    PUT = auto()
    GET = auto()
    LIST = auto()
    STAT = auto()
    MKDIR = auto()
    PARTIAL = auto()  # RESUME: what the server keeps of an upload
    DELETE = auto()  # SYNC: remove a name
    CHECKSUM = auto()  # SYNC: the digest of a file
    SYMLINK = auto()  # LINKS: make a link
    READLINK = auto()  # LINKS: read a link


@mutable_record
class RequestState:
    kind: RequestKind
    phase: Phase
    size: int = 0  # bytes the DATA frames must total
    done: int = 0  # bytes so far
    cancelled: bool = False
    offset: int = 0  # RESUME: a GET's proven offset (the body may start there)
    streamed: bool = False  # STREAM: ``size`` is only a bound; DONE says where it ends

    @property
    def left(self) -> int:
        return self.size - self.done


# --- events --------------------------------------------------------------------------


@record
class ClientAuthenticated:
    software: str
    features: int


@record
class ServerVerified:
    software: str
    features: int
    max_requests: int


@record
class PutRequested:
    request: int
    path: str
    size: int
    mode: int
    mtime_ns: int
    keep_mtime: bool
    offset: int = 0  # RESUME (PUT_AT): the body is the file from here on
    resumable: bool = False  # RESUME: keep the partial file if interrupted
    streamed: bool = False  # STREAM: ``size`` is 0, the length is known at PutFinished


@record
class SmallFileReceived:
    """A whole file in one frame (PUT_INLINE): the request now awaits its verdict."""

    request: int
    path: str
    mode: int
    mtime_ns: int
    keep_mtime: bool
    data: bytes
    digest: bytes


@record
class BodyReceived:
    """File bytes; ``data`` may view the fed buffer: consume before the next feed."""

    request: int
    data: bytes | memoryview


@record
class HoleReceived:
    """``length`` zero bytes of the file that were not sent."""

    request: int
    length: int


@record
class PutFinished:
    request: int
    digest: bytes
    size: int  # what the body came to (the announced size, unless streamed)


@record
class RequestCancelled:
    request: int


@record
class GetRequested:
    request: int
    path: str
    offset: int
    prefix_digest: bytes | None = None  # RESUME: the client's digest of its first offset


@record
class PartialRequested:
    """RESUME: answer with ``prefix`` (what is kept towards ``path``) or ``refuse``."""

    request: int
    path: str


@record
class PrefixReceived:
    """RESUME: the server keeps ``length`` bytes towards the path, with this digest."""

    request: int
    length: int
    digest: bytes


@record
class ListRequested:
    request: int
    path: str
    recursive: bool


@record
class StatRequested:
    request: int
    path: str


@record
class MkdirRequested:
    request: int
    path: str
    mode: int


@record
class PutCommitted:
    request: int
    size: int
    digest: bytes


@record
class DeleteRequested:
    request: int
    path: str
    directory: bool


@record
class ChecksumRequested:
    request: int
    path: str


@record
class SymlinkRequested:
    request: int
    path: str
    target: str


@record
class ReadlinkRequested:
    request: int
    path: str


@record
class LinkRead:
    """The answer to READLINK."""

    request: int
    target: str


@record
class Linked:
    """SYMLINK answered OK."""

    request: int


@record
class MkdirDone:
    request: int


@record
class Deleted:
    request: int


@record
class Summed:
    """The answer to CHECKSUM: the file's size and digest."""

    request: int
    size: int
    digest: bytes


@record
class FileStarted:
    request: int
    size: int
    mode: int
    mtime_ns: int
    offset: int = 0  # RESUME: the body starts here (the prefix matched)


@record
class FileFinished:
    request: int
    digest: bytes


@record
class EntriesReceived:
    request: int
    entries: tuple[Entry, ...]
    last: bool


@record
class RequestFailed:
    request: int
    code: int
    message: str


@record
class InputEnded:
    """The peer closed its sending side; ``open_requests`` were still unfinished."""

    open_requests: tuple[int, ...]


Event = (ClientAuthenticated | ServerVerified | PutRequested | SmallFileReceived
         | BodyReceived | HoleReceived
         | PutFinished
         | RequestCancelled | GetRequested | ListRequested | StatRequested | MkdirRequested
         | PutCommitted | MkdirDone | FileStarted | FileFinished | EntriesReceived
         | RequestFailed | InputEnded | PartialRequested | PrefixReceived
         | DeleteRequested | ChecksumRequested | Deleted | Summed | SymlinkRequested
         | ReadlinkRequested | LinkRead | Linked)


def _need(features: int, feature: m.Feature, what: str) -> None:
    """A frame of ``feature`` from the peer: a violation unless it was negotiated."""
    if not features & feature:
        raise RemoteProtocolError(f"{what} without the {feature.name} feature",
                                  code=m.ErrorCode.BAD_REQUEST)


def _need_resume(features: int, what: str) -> None:
    _need(features, m.Feature.RESUME, what)


def choose_digest(features: int) -> m.Feature:
    """BLAKE3 when both sides have it, else SHA-256 (docs/protocol.md §Features)."""
    if features & m.Feature.DIGEST_BLAKE3:
        return m.Feature.DIGEST_BLAKE3
    if features & m.Feature.DIGEST_SHA256:
        return m.Feature.DIGEST_SHA256
    raise RemoteProtocolError("the peer offers no digest this implementation knows",
                              code=m.ErrorCode.UNSUPPORTED_VERSION)


class _Session:
    """What both roles share: parsing, the outgoing buffer, events, the request table."""

    # (connection state, message class) -> handler name; anything else is a violation.
    TABLE: ClassVar[dict[tuple[ConnState, type], str]] = {}

    def __init__(self, token: bytes, nonce: bytes) -> None:
        if len(nonce) != m.NONCE_BYTES:
            raise LocalProtocolError("a nonce must be 32 bytes")
        self._token = token
        self._nonce = nonce
        self._parser = m.FrameParser()
        self._out: list[bytes | memoryview] = []
        self.unsent = 0  # bytes in ``_out``: drivers gather small frames up to a limit
        self._events: deque[Event] = deque()
        self.requests: dict[int, RequestState] = {}
        self.state = ConnState.READY
        self.features = 0
        self.inline = False  # INLINE agreed (checked once per small file: a plain bool)
        self.digest_feature = m.Feature.DIGEST_SHA256
        self.max_requests = DEFAULT_MAX_REQUESTS

    # -- driver interface ---------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        if self.state in (ConnState.FAILED, ConnState.CLOSED):
            if data:
                raise RemoteProtocolError("data after the connection ended")
            return
        if not data:
            self._on_end_of_input()
            return
        try:
            for message in self._parser.feed(data):
                self._dispatch(message)
        except (RemoteProtocolError, AuthenticationFailed) as exc:
            # A TLS ClientHello (record type 0x16) where a HELLO frame was expected.
            tls_hello = self.state is ConnState.AWAIT_HELLO and data[:1] == b"\x16"
            self.state = ConnState.FAILED
            if tls_hello:
                raise RemoteProtocolError("the client speaks TLS but this server runs "
                                          "without --tls", code=m.ErrorCode.BAD_REQUEST) \
                    from exc
            raise

    def data_to_send(self) -> bytes:
        return b"".join(self.buffers_to_send())

    def buffers_to_send(self) -> list[bytes | memoryview]:
        """What to send, as a list for sendmsg scatter/gather (file chunks uncopied)."""
        out, self._out = self._out, []
        self.unsent = 0
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    @property
    def open_requests(self) -> int:
        return len(self.requests)

    # -- internals ----------------------------------------------------------------------

    def _agreed(self, features: int) -> None:
        self.features = features
        self.inline = bool(features & m.Feature.INLINE)

    def _emit(self, message: m.Message) -> None:
        frame = m.encode(message)
        self._out.append(frame)
        self.unsent += len(frame)

    def _dispatch(self, message: m.Message) -> None:
        handler = self.TABLE.get((self.state, type(message)))
        if handler is None:
            raise RemoteProtocolError(
                f"unexpected {type(message).__name__} frame in state {self.state.name}",
                code=m.ErrorCode.BAD_REQUEST)
        getattr(self, handler)(message)

    def _request(self, request: int, *phases: Phase) -> RequestState:
        state = self.requests.get(request)
        if state is None or state.phase not in phases:
            where = "unknown request" if state is None else f"request in {state.phase.name}"
            raise RemoteProtocolError(f"frame for {where} {request}",
                                      code=m.ErrorCode.BAD_REQUEST)
        return state

    def _local(self, request: int, *phases: Phase) -> RequestState:
        state = self.requests.get(request)
        if state is None or state.phase not in phases:
            raise LocalProtocolError(f"request {request} is not in {[p.name for p in phases]}")
        return state

    def _start_data(self, state: RequestState, message: m.Data) -> None:
        if message.length > state.left:
            raise RemoteProtocolError(
                f"request {message.request} sent more data than the {state.size} bytes "
                "it announced", code=m.ErrorCode.BAD_REQUEST)

    def _on_data(self, message: m.Data) -> None:
        state = self._request(message.request, Phase.RECEIVING, Phase.DISCARDING)
        self._start_data(state, message)

    def _on_chunk(self, message: m.BodyPiece) -> None:
        state = self.requests[message.request]
        state.done += len(message.data)
        if state.phase is Phase.RECEIVING:
            self._events.append(BodyReceived(message.request, message.data))

    def body_pending(self) -> tuple[int, int] | None:
        """(request, bytes left) of a DATA body now arriving for a request being
        received, which the driver may move itself (``body_moved``): zero-copy into a
        file, as h11's data passthrough lets a driver do.  None otherwise."""
        request, left = self._parser.body_left
        if not left or self.state is not ConnState.READY:
            return None
        state = self.requests.get(request)
        if state is None or state.phase is not Phase.RECEIVING:
            return None
        return request, left

    def body_moved(self, request: int, count: int) -> None:
        """The driver moved ``count`` bytes of the pending body itself (no events)."""
        pending = self.body_pending()
        if pending is None or pending[0] != request or not 0 < count <= pending[1]:
            raise LocalProtocolError(f"{count} body bytes for request {request} were not "
                                     "pending")
        self._parser.skip_body(count)
        self.requests[request].done += count

    def _check_complete(self, request: int, state: RequestState) -> None:
        if state.phase is Phase.RECEIVING and state.left and not state.streamed:
            raise RemoteProtocolError(
                f"request {request} ended after {state.done} of {state.size} bytes",
                code=m.ErrorCode.BAD_REQUEST)

    def _on_end_of_input(self) -> None:
        if not self._parser.idle:
            self.state = ConnState.FAILED
            raise RemoteProtocolError("the connection ended in the middle of a frame")
        self.state = ConnState.CLOSED
        self._events.append(InputEnded(tuple(self.requests)))

    def _emit_data(self, request: int, state: RequestState, length: int) -> None:
        if length <= 0 or length > state.left or length > m.MAX_DATA_BODY:
            raise LocalProtocolError(f"cannot send {length} bytes for request {request} "
                                     f"({state.left} left)")
        state.done += length
        self._out.append(m.data_header(request, length))
        self.unsent += m.HEADER.size

    def _emit_hole(self, request: int, state: RequestState, length: int) -> None:
        if not self.features & m.Feature.SPARSE:
            raise LocalProtocolError("HOLE frames need the SPARSE feature")
        if length <= 0 or length > state.left:
            raise LocalProtocolError(f"cannot skip {length} bytes for request {request} "
                                     f"({state.left} left)")
        state.done += length
        self._emit(m.Hole(request, length))

    def _on_hole(self, message: m.Hole) -> None:
        state = self._request(message.request, Phase.RECEIVING, Phase.DISCARDING)
        if not self.features & m.Feature.SPARSE:
            raise RemoteProtocolError("HOLE frame without the SPARSE feature",
                                      code=m.ErrorCode.BAD_REQUEST)
        if message.length > state.left:
            raise RemoteProtocolError(
                f"request {message.request} skipped past the {state.size} bytes it "
                "announced", code=m.ErrorCode.BAD_REQUEST)
        state.done += message.length
        if state.phase is Phase.RECEIVING:
            self._events.append(HoleReceived(message.request, message.length))


class ServerSession(_Session):
    """The server's side of one connection."""

    TABLE: ClassVar[dict[tuple[ConnState, type], str]] = {
        (ConnState.AWAIT_HELLO, m.Hello): "_on_hello",
        (ConnState.AWAIT_AUTH, m.Auth): "_on_auth",
        (ConnState.READY, m.Put): "_on_put",
        (ConnState.READY, m.PutInline): "_on_put_inline",
        (ConnState.READY, m.Data): "_on_data",
        (ConnState.READY, m.BodyPiece): "_on_chunk",
        (ConnState.READY, m.Hole): "_on_hole",
        (ConnState.READY, m.Done): "_on_done",
        (ConnState.READY, m.Cancel): "_on_cancel",
        (ConnState.READY, m.Get): "_on_get",
        (ConnState.READY, m.ListDir): "_on_list",
        (ConnState.READY, m.Stat): "_on_stat",
        (ConnState.READY, m.Mkdir): "_on_mkdir",
        (ConnState.READY, m.Partial): "_on_partial",
        (ConnState.READY, m.PutAt): "_on_put_at",
        (ConnState.READY, m.Delete): "_on_delete",
        (ConnState.READY, m.Checksum): "_on_checksum",
        (ConnState.READY, m.Symlink): "_on_symlink",
        (ConnState.READY, m.Readlink): "_on_readlink",
    }

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
        signed = m.hello_reply_signed_part(reply)
        hello_body = m.encode(hello)[m.HEADER.size :]
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
        _need_resume(self.features, "PUT_AT")
        self._open(message.request, RequestState(RequestKind.PUT, Phase.RECEIVING,
                                            size=message.size - message.offset))
        self._events.append(PutRequested(message.request, message.path, message.size,
                                         message.mode, message.mtime_ns,
                                         bool(message.flags & m.PutFlag.KEEP_MTIME),
                                         offset=message.offset, resumable=True))

    def _on_partial(self, message: m.Partial) -> None:
        _need_resume(self.features, "PARTIAL")
        self._open(message.request, RequestState(RequestKind.PARTIAL, Phase.SERVING))
        self._events.append(PartialRequested(message.request, message.path))

    def _on_put_inline(self, message: m.PutInline) -> None:
        if not self.inline:
            raise RemoteProtocolError("PUT_INLINE frame without the INLINE feature",
                                      code=m.ErrorCode.BAD_REQUEST)
        size = len(message.data)
        self._open(message.request, RequestState(RequestKind.PUT, Phase.AWAIT_REPLY, size=size,
                                            done=size))
        self._events.append(SmallFileReceived(
            message.request, message.path, message.mode, message.mtime_ns,
            message.flags == m.PutFlag.KEEP_MTIME, message.data, message.digest))

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
            _need_resume(self.features, "GET with a prefix digest")
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
        _need(self.features, m.Feature.SYNC, "DELETE")
        self._open(message.request, RequestState(RequestKind.DELETE, Phase.SERVING))
        self._events.append(DeleteRequested(message.request, message.path, message.directory))

    def _on_checksum(self, message: m.Checksum) -> None:
        _need(self.features, m.Feature.SYNC, "CHECKSUM")
        self._open(message.request, RequestState(RequestKind.CHECKSUM, Phase.SERVING))
        self._events.append(ChecksumRequested(message.request, message.path))

    def _on_symlink(self, message: m.Symlink) -> None:
        _need(self.features, m.Feature.LINKS, "SYMLINK")
        self._open(message.request, RequestState(RequestKind.SYMLINK, Phase.SERVING))
        self._events.append(SymlinkRequested(message.request, message.path, message.target))

    def _on_readlink(self, message: m.Readlink) -> None:
        _need(self.features, m.Feature.LINKS, "READLINK")
        self._open(message.request, RequestState(RequestKind.READLINK, Phase.SERVING))
        self._events.append(ReadlinkRequested(message.request, message.path))

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
        self._local(request, Phase.AWAIT_REPLY)
        self._emit(m.Committed(request, size, digest))
        del self.requests[request]

    def ok(self, request: int) -> None:
        state = self._local(request, Phase.SERVING)
        if state.kind not in _ANSWERED_OK:
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


class ClientSession(_Session):
    """The client's side of one connection."""

    TABLE: ClassVar[dict[tuple[ConnState, type], str]] = {
        (ConnState.AWAIT_REPLY, m.HelloReply): "_on_hello_reply",
        (ConnState.AWAIT_REPLY, m.Error): "_on_error",
        (ConnState.READY, m.Committed): "_on_committed",
        (ConnState.READY, m.Ok): "_on_ok",
        (ConnState.READY, m.FileHeader): "_on_file",
        (ConnState.READY, m.Data): "_on_data",
        (ConnState.READY, m.BodyPiece): "_on_chunk",
        (ConnState.READY, m.Hole): "_on_hole",
        (ConnState.READY, m.Done): "_on_done",
        (ConnState.READY, m.Entries): "_on_entries",
        (ConnState.READY, m.Error): "_on_error",
        (ConnState.READY, m.Prefix): "_on_prefix",
        (ConnState.READY, m.Sum): "_on_sum",
        (ConnState.READY, m.Link): "_on_link",
    }

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
                                      f"which this client does not speak")
        if not 1 <= reply.max_requests <= MAX_REQUESTS_LIMIT:
            raise MalformedPacket(f"server window of {reply.max_requests} requests")
        if reply.features & ~self._hello.features:
            raise RemoteProtocolError("server chose a feature this client did not offer")
        digest = choose_digest(reply.features & m.DIGEST_FEATURES)
        binds = bool(self._hello.features & m.Feature.CHANNEL_BINDING)
        if binds and not reply.features & m.Feature.CHANNEL_BINDING:
            raise RemoteProtocolError("the server did not bind authentication to the TLS "
                                      "channel (no CHANNEL_BINDING); refusing it")
        transcript = auth.transcript_hash(m.encode(self._hello)[m.HEADER.size :],
                                          m.hello_reply_signed_part(reply),
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
        if not m.inline_fits(path, len(data)):
            raise LocalProtocolError(f"{len(data)} bytes do not fit a PUT_INLINE frame")
        request = self._new_request(RequestState(RequestKind.PUT, Phase.AWAIT_REPLY, size=len(data),
                                            done=len(data)))
        flags = m.PutFlag.KEEP_MTIME if keep_mtime else m.PutFlag.NONE
        frame = m.encode_put_inline(request, path, mode, mtime_ns, data, digest, flags)
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
        answered = _ANSWERED_OK.get(state.kind)
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


# The requests OK answers, and the event it makes of each on the client.
_ANSWERED_OK: dict[RequestKind, type[MkdirDone | Deleted | Linked]] = {
    RequestKind.MKDIR: MkdirDone, RequestKind.DELETE: Deleted, RequestKind.SYMLINK: Linked}
