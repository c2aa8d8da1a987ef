"""The incremental ferry frame parser (pure): a byte stream, fed in any pieces, cut into
frame records; control bodies are decoded by ``codec.decode_body``.
"""

from __future__ import annotations

from collections.abc import Iterator

from sockferry.errors import LocalProtocolError, MalformedPacket
from sockferry.ferry.codec import decode_at, decode_body
from sockferry.ferry.messages import (
    HEADER,
    MAX_CONTROL_BODY,
    MAX_DATA_BODY,
    BodyPiece,
    Data,
    FrameType,
    Message,
)


class FrameParser:
    """Incremental parser: feed bytes in any pieces, get messages out.

    Control frames are decoded straight from the fed bytes when they arrived whole, and
    buffered (at most ``MAX_CONTROL_BODY``) when they are split across feeds.  DATA
    bodies are never buffered: they come out as ``Data`` (the header) then
    ``BodyPiece`` pieces that view the fed buffer, valid only until the next ``feed``.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._data_request = 0
        self._data_left = 0

    @property
    def idle(self) -> bool:
        """True between frames: nothing partial is buffered."""
        return not self._buffer and self._data_left == 0

    @property
    def body_left(self) -> tuple[int, int]:
        """(request, bytes) of the DATA body being received; (0, 0) between bodies."""
        return (self._data_request, self._data_left) if self._data_left else (0, 0)

    def skip_body(self, count: int) -> None:
        """``count`` bytes of the current DATA body were taken by someone else."""
        if not 0 < count <= self._data_left:
            raise LocalProtocolError(f"cannot skip {count} of {self._data_left} body bytes")
        self._data_left -= count

    def feed(self, data: bytes | bytearray | memoryview) -> Iterator[Message]:
        view = memoryview(data).cast("B")
        pos, end = 0, len(view)
        while pos < end:
            if self._data_left:
                take = min(self._data_left, end - pos)
                self._data_left -= take
                yield BodyPiece(self._data_request, view[pos : pos + take])
                pos += take
                continue
            if self._buffer or end - pos < HEADER.size:
                pos = self._buffer_header(view, pos)
                if len(self._buffer) < HEADER.size:
                    return
                kind, flags, reserved, request, length = HEADER.unpack_from(self._buffer)
            else:
                kind, flags, reserved, request, length = HEADER.unpack_from(view, pos)
                pos += HEADER.size
            if reserved != 0:
                raise MalformedPacket("reserved header bits are not zero")
            if kind == FrameType.DATA:
                if not 0 < length <= MAX_DATA_BODY or flags or request == 0:
                    raise MalformedPacket(f"bad DATA frame (length {length}, "
                                          f"flags {flags}, request {request})")
                del self._buffer[:]
                self._data_request, self._data_left = request, length
                yield Data(request, length)
                continue
            if length > MAX_CONTROL_BODY:
                raise MalformedPacket(f"frame of {length} bytes is over the limit of "
                                      f"{MAX_CONTROL_BODY}")
            if not self._buffer and end - pos >= length:  # the whole frame is here
                yield decode_at(kind, flags, request, view, pos, length)
                pos += length
                continue
            if not self._buffer:  # keep the header with the partial body
                self._buffer += HEADER.pack(kind, flags, reserved, request, length)
            take = min(length - (len(self._buffer) - HEADER.size), end - pos)
            self._buffer += view[pos : pos + take]
            pos += take
            if len(self._buffer) - HEADER.size < length:
                return
            body = bytes(self._buffer[HEADER.size :])
            del self._buffer[:]
            yield decode_body(kind, flags, request, body)

    def _buffer_header(self, view: memoryview, pos: int) -> int:
        """Gather a header split across feeds; returns the new position."""
        need = HEADER.size - len(self._buffer)
        if need > 0:
            self._buffer += view[pos : pos + need]
            pos += min(need, len(view) - pos)
        return pos
