"""wire.py directly: what every codec relies on — values round-trip, and every way of
running off the end (or past a limit) is MalformedPacket and nothing else."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sockferry.errors import MalformedPacket
from sockferry.wire import Reader, Writer

FIELDS = st.tuples(st.integers(0, 2**8 - 1), st.integers(0, 2**16 - 1),
                   st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1),
                   st.integers(-(2**63), 2**63 - 1),
                   st.binary(max_size=300), st.binary(max_size=60).filter(lambda b: b"\0" not in b))


def _encode(fields: tuple[int, int, int, int, int, bytes, bytes]) -> bytes:
    a, b, c, d, e, blob, text = fields
    return (Writer().u8(a).u16(b).u32(c).u64(d).i64(e).u16_prefixed(blob, 300, "blob")
            .cstring(text).getvalue())


@given(FIELDS)
def test_values_round_trip(fields: tuple[int, int, int, int, int, bytes, bytes]) -> None:
    data = _encode(fields)
    r = Reader(data)
    assert (r.u8(), r.u16(), r.u32(), r.u64(), r.i64(), r.u16_prefixed(300, "blob"),
            r.cstring(60, "text")) == fields
    r.expect_end()
    assert r.remaining == 0


@given(FIELDS, st.data())
def test_every_truncation_is_malformed(fields: tuple[int, int, int, int, int, bytes, bytes],
                                       data: st.DataObject) -> None:
    whole = _encode(fields)
    cut = data.draw(st.integers(0, len(whole) - 1))
    r = Reader(memoryview(bytearray(whole[:cut])))  # buffers other than bytes too
    with pytest.raises(MalformedPacket):
        r.u8(), r.u16(), r.u32(), r.u64(), r.i64()
        r.u16_prefixed(300, "blob")
        r.cstring(60, "text")


def test_limits_are_refused_without_reading_past_them() -> None:
    long_blob = Writer().u16_prefixed(b"x" * 10, 10, "blob").getvalue()
    with pytest.raises(MalformedPacket, match="blob of 10 bytes is over the limit of 9"):
        Reader(long_blob).u16_prefixed(9, "blob")
    with pytest.raises(MalformedPacket, match="longer than 3 bytes"):
        Reader(b"abcdef\0").cstring(3, "name")
    with pytest.raises(MalformedPacket, match="not terminated"):
        Reader(b"abc").cstring(10, "name")
    with pytest.raises(ValueError, match="over the limit"):
        Writer().u16_prefixed(b"x" * 5, 4, "blob")
    with pytest.raises(ValueError, match="cannot contain NUL"):
        Writer().cstring(b"a\0b")


def test_limited_scopes_a_part_that_must_be_consumed_exactly() -> None:
    r = Reader(Writer().u16(7).u32(1).u8(9).getvalue())
    with r.limited(2, "part") as part:
        assert part.u16() == 7
        with pytest.raises(MalformedPacket):
            part.u8()  # the scope ends after two bytes, though more follow
    assert r.u32() == 1
    with (pytest.raises(MalformedPacket, match="unexpected bytes at the end of the part"),
          r.limited(1, "part")):
        pass  # not consumed
    with pytest.raises(MalformedPacket, match="claims 5 bytes"), Reader(b"abc").limited(5):
        pass
    with pytest.raises(MalformedPacket, match="unexpected bytes"):
        Reader(b"ab").expect_end()


HEAD = struct.Struct("!IH")  # a value, then the length of the bytes after it


@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.binary(max_size=40)), max_size=20))
def test_headed_records_round_trip_and_every_truncation_is_malformed(
        records: list[tuple[int, bytes]]) -> None:
    data = b"".join(HEAD.pack(value, len(tail)) + tail for value, tail in records) + b"!"
    r = Reader(data)
    assert [(fields[0], tail) for fields, tail in r.headed(len(records), HEAD)] == records
    assert r.rest() == b"!"  # the cursor stops after the last record
    for cut in range(len(data) - 1):
        if records:
            with pytest.raises(MalformedPacket):
                list(Reader(data[:cut]).headed(len(records), HEAD))
