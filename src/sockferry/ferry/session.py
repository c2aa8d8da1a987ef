"""What both ends of a ferry connection share (pure, sans-I/O): the connection states,
the handshake's digest choice, and ``Session``, the base of ``ServerSession``
(server_session.py) and ``ClientSession`` (client_session.py).

Feed received bytes with ``receive_data`` (``b""`` when the peer closed), drain
``data_to_send()`` and ``next_event()``.  Calls that emit frames (``put``, ``commit``,
...) append to the outgoing buffer.  File bytes never pass through a core on the way
out: ``data_header`` emits only the header and the driver sends the body itself (read
and hashed on its way), right after flushing ``data_to_send()``.

Errors follow one rule: the driver asking for something not allowed is
``LocalProtocolError``; the peer doing something the handler tables do not allow is
``RemoteProtocolError`` carrying the ERROR code to answer with (and parks the session in
``FAILED``); bytes that do not parse are ``MalformedPacket``; the peer's own
connection-level ERROR is ``PeerRefused``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from enum import Enum, auto
from typing import ClassVar, Self, TypeVar, cast

from sockferry.errors import AuthenticationFailed, LocalProtocolError, RemoteProtocolError
from sockferry.ferry import codec
from sockferry.ferry import messages as m
from sockferry.ferry.events import (
    BodyReceived,
    Event,
    HoleReceived,
    InputEnded,
    Phase,
    RequestState,
)
from sockferry.ferry.parser import FrameParser

DEFAULT_MAX_REQUESTS = 256  # pipelining window a server grants; clients keep under it
SOFTWARE = "sockferry/0.1"


class ConnState(Enum):
    AWAIT_HELLO = auto()  # server: before the client's HELLO
    AWAIT_REPLY = auto()  # client: HELLO sent
    AWAIT_AUTH = auto()  # server: HELLO_REPLY sent
    READY = auto()
    CLOSED = auto()  # the peer ended its side cleanly
    FAILED = auto()

    # Hashed with the frame's type for every frame dispatched: the C-level identity hash
    # (members are singletons) instead of Enum's hash of the name, in Python.
    __hash__ = object.__hash__


def need_feature(features: int, feature: m.Feature, what: str) -> None:
    """A frame of ``feature`` from the peer: a violation unless it was negotiated."""
    if not features & feature:
        raise RemoteProtocolError(f"{what} without the {feature.name} feature",
                                  code=m.ErrorCode.BAD_REQUEST)


def choose_digest(features: int) -> m.Feature:
    """BLAKE3 when both sides have it, else SHA-256 (docs/protocol.md §Features)."""
    if features & m.Feature.DIGEST_BLAKE3:
        return m.Feature.DIGEST_BLAKE3
    if features & m.Feature.DIGEST_SHA256:
        return m.Feature.DIGEST_SHA256
    raise RemoteProtocolError("the peer offers no digest this implementation knows",
                              code=m.ErrorCode.UNSUPPORTED_VERSION)


# A handler table maps (connection state, frame record type) to the function that takes
# that frame in that state, called with the session: one dict lookup and one call per
# frame.  A dict cannot say that each key's handler takes that key's frame type;
# ``handles`` is the one place that ties them (mypy checks each handler's parameter
# against the type it is filed under), so ``_dispatch`` may hand it any frame so keyed.
_Frame = TypeVar("_Frame", bound=m.Message)
_Role = TypeVar("_Role", bound="Session")
Handler = Callable[[_Role, m.Message], None]
TableKey = tuple[ConnState, type]


def handles(state: ConnState, frame: type[_Frame], handler: Callable[[_Role, _Frame], None],
            ) -> tuple[TableKey, Handler[_Role]]:
    """One row of a handler table: ``handler`` takes ``frame`` records in ``state``."""
    key: TableKey = (state, frame)
    return key, cast("Handler[_Role]", handler)


class Session:
    """What both roles share: parsing, the outgoing buffer, events, the request table."""

    # Each role's handler table (built once, with ``handles``); a frame in a state it
    # has no row for is a violation.
    HANDLERS: ClassVar[dict[TableKey, Handler[Self]]] = {}

    def __init__(self, token: bytes, nonce: bytes) -> None:
        if len(nonce) != m.NONCE_BYTES:
            raise LocalProtocolError("a nonce must be 32 bytes")
        self._token = token
        self._nonce = nonce
        self._parser = FrameParser()
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

    def receive_data(self: Self, data: bytes | bytearray | memoryview) -> None:
        if self.state in (ConnState.FAILED, ConnState.CLOSED):
            if data:
                raise RemoteProtocolError("data after the connection ended",
                                          code=m.ErrorCode.BAD_REQUEST)
            return
        if not data:
            self._on_end_of_input()
            return
        try:
            handlers = self.HANDLERS
            for message in self._parser.feed(data):
                # _dispatch, inlined: this runs once per frame
                handler = handlers.get((self.state, type(message)))
                if handler is None:
                    self._dispatch(message)  # raises: unexpected here
                else:
                    handler(self, message)
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
        frame = codec.encode(message)
        self._out.append(frame)
        self.unsent += len(frame)

    def _dispatch(self: Self, message: m.Message) -> None:
        handler = self.HANDLERS.get((self.state, type(message)))
        if handler is None:
            raise RemoteProtocolError(
                f"unexpected {type(message).__name__} frame in state {self.state.name}",
                code=m.ErrorCode.BAD_REQUEST)
        handler(self, message)

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
        received, which the driver may move itself (``body_moved``): straight from the
        socket into a file, as h11's data passthrough lets a driver do.  None otherwise."""
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
            raise RemoteProtocolError("the connection ended in the middle of a frame",
                                      code=m.ErrorCode.BAD_REQUEST)
        self.state = ConnState.CLOSED
        self._events.append(InputEnded(tuple(self.requests)))

    def _emit_data(self, request: int, state: RequestState, length: int) -> None:
        if length <= 0 or length > state.left or length > m.MAX_DATA_BODY:
            raise LocalProtocolError(f"cannot send {length} bytes for request {request} "
                                     f"({state.left} left)")
        state.done += length
        self._out.append(codec.data_header(request, length))
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

