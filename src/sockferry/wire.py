"""Bounded readers and writers used by every codec.

A ``Reader`` walks untrusted bytes; every way of running off its end raises
``MalformedPacket`` and nothing else, so decoders built on it can promise the same.
``Reader.limited`` scopes a length-prefixed part that must be consumed exactly.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager

from sockferry.errors import MalformedPacket

U8 = struct.Struct("!B")
U16 = struct.Struct("!H")
U32 = struct.Struct("!I")
U64 = struct.Struct("!Q")
I64 = struct.Struct("!q")


class Reader:
    """Cursor over a byte buffer that never reads past its current limit."""

    __slots__ = ("_data", "_end", "_pos")

    def __init__(self, data: bytes | bytearray | memoryview, start: int = 0) -> None:
        self._data = memoryview(data).cast("B") if not isinstance(data, bytes) else data
        self._pos = start
        self._end = len(data)

    @property
    def remaining(self) -> int:
        return self._end - self._pos

    @property
    def position(self) -> int:
        return self._pos

    def _take(self, n: int) -> int:
        if n < 0 or n > self._end - self._pos:
            raise MalformedPacket(f"truncated: needed {n} bytes, {self._end - self._pos} left")
        start = self._pos
        self._pos += n
        return start

    def read(self, n: int) -> bytes:
        start = self._take(n)
        return bytes(self._data[start : start + n])

    def rest(self) -> bytes:
        return self.read(self.remaining)

    def unpack(self, layout: struct.Struct) -> tuple[int, ...]:
        start = self._take(layout.size)
        return layout.unpack_from(self._data, start)

    def headed(self, count: int, head: struct.Struct) -> Iterator[tuple[tuple[int, ...], bytes]]:
        """``count`` records, each a ``head`` whose last field is the length of the bytes
        that follow it: (the head's fields, those bytes) for each.  One loop over the
        buffer rather than four calls a record: a listing holds thousands."""
        data, pos, end, size = self._data, self._pos, self._end, head.size
        unpack = head.unpack_from
        try:
            for _ in range(count):
                if end - pos < size:
                    raise MalformedPacket(f"truncated: needed {size} bytes, {end - pos} left")
                fields = unpack(data, pos)
                pos += size
                length = fields[-1]
                if end - pos < length:
                    raise MalformedPacket(f"truncated: needed {length} bytes, "
                                          f"{end - pos} left")
                yield fields, bytes(data[pos : pos + length])
                pos += length
        finally:
            self._pos = pos

    def u8(self) -> int:
        return self.unpack(U8)[0]

    def u16(self) -> int:
        return self.unpack(U16)[0]

    def u32(self) -> int:
        return self.unpack(U32)[0]

    def u64(self) -> int:
        return self.unpack(U64)[0]

    def i64(self) -> int:
        return self.unpack(I64)[0]

    def u16_prefixed(self, limit: int, what: str) -> bytes:
        """A byte string preceded by its 16-bit length, refused above ``limit``."""
        length = self.u16()
        if length > limit:
            raise MalformedPacket(f"{what} of {length} bytes is over the limit of {limit}")
        return self.read(length)

    def cstring(self, limit: int, what: str) -> bytes:
        """A NUL-terminated string (as TFTP uses) of at most ``limit`` bytes before the NUL."""
        view = self._data[self._pos : min(self._end, self._pos + limit + 1)]
        index = bytes(view).find(b"\0")
        if index < 0:
            if len(view) > limit:
                raise MalformedPacket(f"{what} is longer than {limit} bytes")
            raise MalformedPacket(f"{what} is not terminated by a NUL byte")
        value = self.read(index)
        self._pos += 1
        return value

    def expect_end(self, what: str = "packet") -> None:
        if self._pos != self._end:
            extra = self._end - self._pos
            raise MalformedPacket(f"{extra} unexpected bytes at the end of the {what}")

    @contextmanager
    def limited(self, length: int, what: str = "field") -> Iterator[Reader]:
        """Scope the next ``length`` bytes; the body must consume them exactly."""
        if length < 0 or length > self.remaining:
            raise MalformedPacket(f"{what} claims {length} bytes but {self.remaining} remain")
        saved_end = self._end
        self._end = self._pos + length
        try:
            yield self
            self.expect_end(what)
        finally:
            self._end = saved_end


class Writer:
    """Accumulates an encoded message."""

    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def raw(self, data: bytes) -> Writer:
        self._parts.append(bytes(data))
        return self

    def pack(self, layout: struct.Struct, *values: int) -> Writer:
        self._parts.append(layout.pack(*values))
        return self

    def u8(self, value: int) -> Writer:
        return self.pack(U8, value)

    def u16(self, value: int) -> Writer:
        return self.pack(U16, value)

    def u32(self, value: int) -> Writer:
        return self.pack(U32, value)

    def u64(self, value: int) -> Writer:
        return self.pack(U64, value)

    def i64(self, value: int) -> Writer:
        return self.pack(I64, value)

    def u16_prefixed(self, data: bytes, limit: int, what: str) -> Writer:
        if len(data) > limit:
            raise ValueError(f"{what} of {len(data)} bytes is over the limit of {limit}")
        return self.u16(len(data)).raw(data)

    def cstring(self, data: bytes) -> Writer:
        if b"\0" in data:
            raise ValueError("a NUL-terminated string cannot contain NUL")
        return self.raw(data).raw(b"\0")

    def __len__(self) -> int:
        return sum(len(p) for p in self._parts)

    def getvalue(self) -> bytes:
        return b"".join(self._parts)
