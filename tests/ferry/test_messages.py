"""Ferry frame codec: round trips, golden bytes, garbage, limits, any split."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sockferry.entries import MAX_PATH_BYTES, Entry, Kind
from sockferry.errors import LocalProtocolError, MalformedPacket
from sockferry.ferry import codec
from sockferry.ferry import messages as m
from sockferry.ferry.parser import FrameParser

ids = st.integers(1, 2**32 - 1)
paths = st.text(st.characters(blacklist_categories=["Cs"]), max_size=60).filter(
    lambda p: len(p.encode()) <= MAX_PATH_BYTES)
sizes = st.integers(0, m.MAX_FILE_SIZE)
u32 = st.integers(0, 2**32 - 1)
i64 = st.integers(-(2**63), 2**63 - 1)
blob32 = st.binary(min_size=32, max_size=32)
entries = st.builds(Entry, paths, st.sampled_from(list(Kind)), u32, sizes, i64)

messages = st.one_of(
    st.builds(m.Hello, st.integers(0, 255), st.integers(0, 255), u32, blob32,
              st.text(max_size=20)),
    st.builds(m.HelloReply, st.integers(0, 255), u32, u32, blob32, st.text(max_size=20),
              blob32),
    st.builds(m.Auth, blob32),
    st.builds(m.Put, ids, paths, sizes, u32, i64, st.sampled_from(list(m.PutFlag))),
    st.builds(m.PutInline, ids, paths, u32, i64, st.binary(max_size=3000), blob32,
              st.sampled_from([m.PutFlag.NONE, m.PutFlag.KEEP_MTIME])),
    st.builds(m.Hole, ids, st.integers(1, m.MAX_FILE_SIZE)),
    st.builds(m.Done, ids, blob32),
    st.builds(m.Cancel, ids),
    st.builds(m.Get, ids, paths, sizes),
    st.builds(m.ListDir, ids, paths, st.sampled_from(list(m.ListFlag))),
    st.builds(m.Stat, ids, paths),
    st.builds(m.Mkdir, ids, paths, u32),
    st.builds(m.Ok, ids),
    st.builds(m.FileHeader, ids, sizes, u32, i64),
    st.builds(m.Entries, ids, st.lists(entries, max_size=5).map(tuple), st.booleans()),
    st.builds(m.Committed, ids, sizes, blob32),
    st.builds(m.Error, st.integers(0, 2**32 - 1), st.integers(0, 65535),
              st.text(max_size=100)),
)


def parse_all(data: bytes, step: int | None = None) -> list[object]:
    parser = FrameParser()
    out: list[object] = []
    pieces = [data] if step is None else [data[i : i + step] for i in range(0, len(data), step)]
    for piece in pieces:
        for message in parser.feed(piece):
            out.append(m.BodyPiece(message.request, bytes(message.data))
                       if isinstance(message, m.BodyPiece) else message)
    assert parser.idle
    return out


@settings(max_examples=400)
@given(messages)
def test_round_trip(message: m.Message) -> None:
    assert parse_all(codec.encode(message)) == [message]


@settings(max_examples=100)
@given(st.lists(messages, max_size=6), st.integers(1, 17))
def test_any_split_gives_the_same_messages(batch: list[m.Message], step: int) -> None:
    wire = b"".join(codec.encode(x) for x in batch)
    assert parse_all(wire, step) == parse_all(wire) == batch


def test_data_frames_come_out_in_pieces_and_merge() -> None:
    body = bytes(range(256)) * 40
    wire = codec.encode(m.Put(7, "f", len(body), 0o644, 0)) + codec.data_header(7, len(body)) + body
    wire += codec.encode(m.Done(7, b"d" * 32))
    whole = parse_all(wire)
    assert whole[1] == m.Data(7, len(body))
    assert whole[2] == m.BodyPiece(7, body)
    byte_by_byte = parse_all(wire, 1)
    chunks = [x for x in byte_by_byte if isinstance(x, m.BodyPiece)]
    assert b"".join(bytes(c.data) for c in chunks) == body
    assert [x for x in byte_by_byte if not isinstance(x, m.BodyPiece)] == \
        [x for x in whole if not isinstance(x, m.BodyPiece)]


def test_golden_bytes() -> None:
    """The layout docs/protocol.md specifies, byte for byte."""
    assert codec.encode(m.Mkdir(5, "a/b", 0o755)) == bytes.fromhex(
        "17 00 0000 00000005 00000009" "000001ed" "0003" "612f62")
    assert codec.encode(m.Put(1, "x", 2**32 + 1, 0o600, -1, m.PutFlag.KEEP_MTIME)) == bytes.fromhex(
        "10 01 0000 00000001 00000017" "0000000100000001" "00000180" "ffffffffffffffff" "0001"
        "78")
    assert codec.data_header(3, 4) == bytes.fromhex("11 00 0000 00000003 00000004")
    assert codec.encode(m.Error(0, 3, "no")) == bytes.fromhex(
        "2f 00 0000 00000000 00000006" "0003" "0002" "6e6f")


@settings(max_examples=1000)
@given(st.binary(max_size=200))
def test_garbage_raises_only_malformed(data: bytes) -> None:
    parser = FrameParser()
    with contextlib.suppress(MalformedPacket):
        for _ in parser.feed(data):
            pass


@settings(max_examples=500)
@given(st.sampled_from([t.value for t in m.FrameType if t is not m.FrameType.DATA]),
       st.integers(0, 255), st.integers(0, 3), st.binary(max_size=120))
def test_random_bodies_raise_only_malformed(kind: int, flags: int, request: int,
                                            body: bytes) -> None:
    with contextlib.suppress(MalformedPacket):
        codec.decode_body(kind, flags, request, body)


def _frames_of(parser: FrameParser, data: bytes, step: int) -> list[m.Message] | str:
    """What ``data`` fed in pieces of ``step`` bytes decodes to, or "malformed"."""
    try:
        return [msg for i in range(0, len(data), step) for msg in parser.feed(data[i:i + step])]
    except MalformedPacket:
        return "malformed"


@settings(max_examples=500)
@given(st.sampled_from([m.FrameType.PUT_INLINE, m.FrameType.COMMITTED]),
       st.integers(0, 255), st.integers(0, 3), st.binary(max_size=120),
       st.integers(1, 40))
def test_frames_decoded_in_place_match_the_buffered_ones(kind: m.FrameType, flags: int,
                                                         request: int, body: bytes,
                                                         step: int) -> None:
    """PUT_INLINE and COMMITTED arriving whole are decoded in place (one per small
    file); split across feeds they go through the buffer: both give the same."""
    data = m.HEADER.pack(kind, flags, 0, request, len(body)) + body
    whole = _frames_of(FrameParser(), data, len(data))
    assert whole == _frames_of(FrameParser(), data, step)
    assert whole == "malformed" or whole == [codec.decode_body(kind, flags, request, body)]


@pytest.mark.parametrize(
    ("header", "why"),
    [
        (m.HEADER.pack(m.FrameType.STAT, 0, 0, 1, m.MAX_CONTROL_BODY + 1), "over the limit"),
        (m.HEADER.pack(m.FrameType.DATA, 0, 0, 1, m.MAX_DATA_BODY + 1), "bad DATA"),
        (m.HEADER.pack(m.FrameType.DATA, 0, 0, 1, 0), "bad DATA"),
        (m.HEADER.pack(m.FrameType.DATA, 0, 0, 0, 5), "bad DATA"),
        (m.HEADER.pack(m.FrameType.STAT, 0, 1, 1, 0), "reserved"),
    ],
)
def test_limits_checked_from_the_header_alone(header: bytes, why: str) -> None:
    with pytest.raises(MalformedPacket, match=why):
        list(FrameParser().feed(header))


@pytest.mark.parametrize(
    ("kind", "request_id", "body", "why"),
    [
        (0x7E, 1, b"", "unknown frame type"),
        (m.FrameType.STAT, 1, struct.pack("!H", 5000) + b"a" * 5000, "path of 5000"),
        (m.FrameType.STAT, 1, struct.pack("!H", 1) + b"\xff", "UTF-8"),
        (m.FrameType.STAT, 1, struct.pack("!H", 1) + b"ab", "unexpected bytes"),
        (m.FrameType.STAT, 0, struct.pack("!H", 1) + b"a", "request id 0"),
        (m.FrameType.AUTH, 4, b"p" * 32, "request id 4"),
        (m.FrameType.PUT, 1, struct.pack("!QIq", 2**63, 0, 0) + b"\0\0", "over the limit"),
        (m.FrameType.HELLO, 0, b"NOPE" + b"\0" * 40, "bad magic"),
        (m.FrameType.HOLE, 1, struct.pack("!Q", 0), "empty HOLE"),
        (m.FrameType.ENTRIES, 1, struct.pack("!HBIQq", 1, 9, 0, 0, 0) + b"\0\0", "kind 9"),
    ],
)
def test_bad_bodies(kind: int, request_id: int, body: bytes, why: str) -> None:
    with pytest.raises(MalformedPacket, match=why):
        codec.decode_body(kind, 0, request_id, body)


def test_error_text_is_cut_at_a_code_point() -> None:
    encoded = codec.encode(m.Error(1, 1, "é" * 1000))
    [decoded] = parse_all(encoded)
    assert isinstance(decoded, m.Error)
    assert len(decoded.message.encode()) <= m.MAX_MESSAGE_BYTES
    assert set(decoded.message) == {"é"}


def test_put_inline_golden_bytes() -> None:
    wire = codec.encode_put_inline(5, "a", 0o644, 7, b"xyz", b"d" * 32)
    assert wire == (bytes.fromhex("1f00 0000 00000005 0000003a") + bytes.fromhex(
        "0000000000000003 000001a4 0000000000000007 0001") + b"a" + b"xyz" + b"d" * 32)


@pytest.mark.parametrize("delta", [-1, 1])
def test_put_inline_size_must_match_its_body(delta: int) -> None:
    good = codec.encode_put_inline(5, "a", 0o644, 7, b"xyz", b"d" * 32)
    body = bytearray(good[m.HEADER.size:])
    struct.pack_into("!Q", body, 0, 3 + delta)
    with pytest.raises(MalformedPacket, match="announces"):
        parse_all(good[: m.HEADER.size] + bytes(body))


def test_put_inline_refuses_what_cannot_fit() -> None:
    too_big = bytes(m.MAX_CONTROL_BODY)
    assert not codec.inline_fits("f", len(too_big))
    assert codec.inline_fits("f", m.MAX_CONTROL_BODY - codec.INLINE_OVERHEAD - 1)
    assert not codec.inline_fits("f", m.MAX_CONTROL_BODY - codec.INLINE_OVERHEAD)
    with pytest.raises(LocalProtocolError, match="do not fit"):
        codec.encode_put_inline(1, "f", 0, 0, too_big, b"d" * 32)
