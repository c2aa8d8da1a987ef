"""How ferry frames travel on the streams of one SCTP association (pure).

Over TCP the ferry protocol is one byte stream.  Over SCTP every frame is one message,
and the frames of different requests go on different streams, so that a lost packet of
one file stalls only that file's stream (RFC 9260 §1.5.2: SCTP orders messages per
stream, not across streams):

- stream 0 carries the connection's frames (request 0: HELLO, HELLO_REPLY, AUTH,
  ERROR) and, from the client, every frame that opens a request (PUT, GET, LIST, STAT,
  MKDIR, DELETE, ...), so requests reach the server in the order they were made (AUTH
  before all of them, a MKDIR before the PUTs into the new directory);
- the other frames of request r (DATA, HOLE, DONE and CANCEL from the client, every
  answer from the server) go on stream 1 + (r - 1) mod (n - 1), n the streams there are.

The server's receiver holds frames of a request whose opening frame has not arrived yet
(lost, being retransmitted on stream 0) and hands its core one byte stream in an order
the protocol allows.  This relies on request ids that grow (mod 2^32) as a connection
goes on, which is how sockferry's client allocates them.

A side with nothing more to send (TCP's shutdown(SHUT_WR)) sends one END message on
every stream; its input has ended when END has arrived on all of them.  DATA frames are
cut into pieces of at most MAX_DATA_PIECE bytes (the protocol allows any split), so each
message fits the limits of both SCTP stacks.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

from sockferry.errors import RemoteProtocolError
from sockferry.ferry import messages as m

# Payload protocol identifiers (RFC 9260 §3.3.1: opaque to SCTP, ours to choose).
FRAME_PPID = 0x53465259  # "SFRY": one ferry frame
END_PPID = 0x53464544  # "SFED": nothing more from this side on this stream
MAX_DATA_PIECE = 64 * 1024
# Frames waiting for their request's opening frame; SCTP's receive window bounds them in
# practice, this bounds them whatever the peer does.
MAX_HELD_BYTES = 16 * 1024 * 1024
# One stream per request the server lets a client have open, plus stream 0.
STREAMS = 1 + 256

# Frames that open a request: they travel on stream 0, in the order they were made.
# Every one of them: a request sent on its own stream would count as opened only once
# a later opening frame arrived, and the server would hold the last of a connection's
# READLINKs (get -r -l) until the idle timeout.
OPENING = frozenset({m.FrameType.PUT, m.FrameType.PUT_INLINE, m.FrameType.PUT_AT,
                     m.FrameType.GET, m.FrameType.LIST, m.FrameType.STAT, m.FrameType.MKDIR,
                     m.FrameType.PARTIAL, m.FrameType.DELETE, m.FrameType.CHECKSUM,
                     m.FrameType.SYMLINK, m.FrameType.READLINK, m.FrameType.QUICK_CHECK})
_HEADER = m.HEADER.size


class Piece(NamedTuple):
    """One SCTP message to send."""

    stream: int
    ppid: int
    data: bytes


def stream_of(request: int, streams: int) -> int:
    """The stream that carries request ``request`` (0 for the connection itself)."""
    if request == 0 or streams < 2:
        return 0
    return 1 + (request - 1) % (streams - 1)


class FrameSender:
    """The bytes a ferry core emits, cut into one message per frame with its stream."""

    def __init__(self, *, client: bool, streams: int) -> None:
        self._client = client
        self._streams = streams
        self._partial = bytearray()  # an incomplete header or control frame
        self._data_request = 0
        self._data_left = 0  # body bytes of the current DATA frame still to come

    def feed(self, data: bytes | bytearray | memoryview) -> list[Piece]:
        pieces: list[Piece] = []
        view = memoryview(data).cast("B")
        while view:
            if self._data_left:
                take = min(len(view), self._data_left)
                pieces += self._data_pieces(view[:take])
                self._data_left -= take
                view = view[take:]
                continue
            need = _HEADER - len(self._partial) if len(self._partial) < _HEADER else (
                _HEADER + self._length() - len(self._partial))
            self._partial += view[:need]
            view = view[need:]
            if len(self._partial) < _HEADER:
                break
            frame_type, _flags, _reserved, request, length = m.HEADER.unpack_from(self._partial)
            if frame_type == m.FrameType.DATA:
                self._data_request, self._data_left = request, length
                self._partial.clear()
            elif len(self._partial) == _HEADER + length:
                stream = self._stream_for(frame_type, request)
                pieces.append(Piece(stream, FRAME_PPID, bytes(self._partial)))
                self._partial.clear()
        return pieces

    def _length(self) -> int:
        return int(m.HEADER.unpack_from(self._partial)[4])

    def _stream_for(self, frame_type: int, request: int) -> int:
        if self._client and frame_type in OPENING:
            return 0
        return stream_of(request, self._streams)

    def _data_pieces(self, body: memoryview) -> list[Piece]:
        stream = stream_of(self._data_request, self._streams)
        pieces = []
        for start in range(0, len(body), MAX_DATA_PIECE):
            chunk = body[start:start + MAX_DATA_PIECE]
            header = m.HEADER.pack(m.FrameType.DATA, 0, 0, self._data_request, len(chunk))
            pieces.append(Piece(stream, FRAME_PPID, header + chunk))
        return pieces

    def end(self) -> list[Piece]:
        """END on every stream: this side sends nothing more."""
        return [Piece(stream, END_PPID, b"\0") for stream in range(self._streams)]


class FrameReceiver:
    """Messages from the streams in, the ferry core's byte stream out."""

    def __init__(self, *, server: bool, streams: int) -> None:
        self._server = server
        self._streams = streams
        self._ready: list[bytes] = []  # whole frames, in the order for the core
        self._held: dict[int, deque[tuple[int, bytes]]] = {}
        self._held_bytes = 0
        self._opened: int | None = None  # the newest request opened on stream 0
        self._ended: set[int] = set()

    @property
    def ended(self) -> bool:
        """END has arrived on every stream (and every frame has been handed on)."""
        return len(self._ended) == self._streams

    def take(self) -> list[bytes]:
        """Frames for the core, in an order the ferry protocol allows."""
        ready, self._ready = self._ready, []
        return ready

    def receive(self, stream: int, ppid: int, data: bytes) -> None:
        if stream in self._ended or not 0 <= stream < self._streams:
            raise RemoteProtocolError(f"a message on stream {stream} after that stream's "
                                      "end, or on a stream that does not exist")
        if ppid == END_PPID:
            self._ended.add(stream)
            if self.ended and self._held:
                raise RemoteProtocolError("the peer ended with frames for requests it "
                                          "never opened")
            return
        if ppid != FRAME_PPID:
            raise RemoteProtocolError(f"an SCTP message with PPID {ppid:#x} is not a "
                                      "ferry frame")
        frame_type, request = _check_frame(data)
        if not self._server or stream == 0:
            self._ready.append(data)
            if self._server and frame_type in OPENING:
                self._open(request)
            return
        if stream in self._held or not self._is_open(request):
            self._hold(stream, request, data)
        else:
            self._ready.append(data)

    def _is_open(self, request: int) -> bool:
        """Opened already: ids grow mod 2^32 (RFC 1982 serial number arithmetic)."""
        return self._opened is not None and (self._opened - request) % 2**32 < 2**31

    def _hold(self, stream: int, request: int, data: bytes) -> None:
        self._held_bytes += len(data)
        if self._held_bytes > MAX_HELD_BYTES:
            raise RemoteProtocolError(f"more than {MAX_HELD_BYTES} bytes of frames for "
                                      "requests that were never opened")
        self._held.setdefault(stream, deque()).append((request, data))

    def _open(self, request: int) -> None:
        self._opened = request
        for stream in list(self._held):
            waiting = self._held[stream]
            while waiting and self._is_open(waiting[0][0]):
                _request, data = waiting.popleft()
                self._held_bytes -= len(data)
                self._ready.append(data)
            if not waiting:
                del self._held[stream]


def _check_frame(data: bytes) -> tuple[int, int]:
    """(type, request) of a message that must hold exactly one frame."""
    if len(data) < _HEADER:
        raise RemoteProtocolError(f"an SCTP message of {len(data)} bytes is shorter than a "
                                  "ferry frame header")
    frame_type, _flags, _reserved, request, length = m.HEADER.unpack_from(data)
    if len(data) != _HEADER + length:
        raise RemoteProtocolError("an SCTP message must hold exactly one ferry frame")
    return frame_type, request
