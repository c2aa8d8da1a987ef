"""The chunk codec: round trips, golden bytes, checksums and garbage."""

from __future__ import annotations

import contextlib

from hypothesis import given
from hypothesis import strategies as st

from sockferry.errors import MalformedPacket
from sockferry.sctp import chunks as c

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
small = st.binary(max_size=64)
params = st.lists(st.builds(c.Param, u16, small), max_size=4).map(tuple)
causes = st.lists(st.builds(c.Cause, u16, small), max_size=4).map(tuple)

CHUNKS = st.one_of(
    st.builds(c.DataChunk, u32, u16, u16, u32, st.binary(max_size=200), st.booleans(),
              st.booleans(), st.booleans(), st.booleans()),
    st.builds(c.InitChunk, u32, u32, u16, u16, u32, params),
    st.builds(c.InitAckChunk, u32, u32, u16, u16, u32, params),
    st.builds(c.SackChunk, u32, u32, st.lists(st.tuples(u16, u16), max_size=5).map(tuple),
              st.lists(u32, max_size=5).map(tuple)),
    st.builds(c.HeartbeatChunk, small),
    st.builds(c.HeartbeatAckChunk, small),
    st.builds(c.AbortChunk, causes, st.booleans()),
    st.builds(c.ShutdownChunk, u32),
    st.just(c.ShutdownAckChunk()),
    st.builds(c.ErrorChunk, causes),
    st.builds(c.CookieEchoChunk, small),
    st.just(c.CookieAckChunk()),
    st.builds(c.ShutdownCompleteChunk, st.booleans()),
    st.builds(c.UnknownChunk, st.integers(15, 255), st.integers(0, 255), small),
)


@given(u16, u16, u32, st.lists(CHUNKS, max_size=6))
def test_packet_round_trip(src: int, dst: int, tag: int, chunks: list[c.Chunk]) -> None:
    data = c.encode_packet(src, dst, tag, [c.encode_chunk(ch) for ch in chunks])
    assert len(data) % 4 == 0
    assert c.checksum_ok(data)
    assert c.decode_packet(data) == c.Packet(src, dst, tag, chunks)


@given(st.lists(CHUNKS, min_size=1, max_size=3), st.integers(0, 10_000), st.integers(1, 255))
def test_any_flipped_byte_fails_the_checksum(chunks: list[c.Chunk], where: int,
                                             flip: int) -> None:
    data = bytearray(c.encode_packet(1, 2, 3, [c.encode_chunk(ch) for ch in chunks]))
    data[where % len(data)] ^= flip
    assert not c.checksum_ok(bytes(data))


@given(st.binary(max_size=400))
def test_garbage_decodes_or_raises_malformed(data: bytes) -> None:
    with contextlib.suppress(MalformedPacket):
        c.decode_packet(data)


@given(st.lists(CHUNKS, min_size=1, max_size=3), st.data())
def test_truncated_or_corrupted_chunks_raise_only_malformed(chunks: list[c.Chunk],
                                                             data: st.DataObject) -> None:
    packet = bytearray(c.encode_packet(1, 2, 3, [c.encode_chunk(ch) for ch in chunks]))
    cut = data.draw(st.integers(0, len(packet)))
    position = data.draw(st.integers(12, len(packet) - 1))
    packet[position] = data.draw(st.integers(0, 255))
    for candidate in (bytes(packet[:cut]), bytes(packet)):
        with contextlib.suppress(MalformedPacket):
            c.decode_packet(candidate)


def test_data_chunk_golden_bytes() -> None:
    chunk = c.DataChunk(tsn=0x01020304, stream=5, ssn=6, ppid=51, payload=b"abcde",
                        unordered=True)
    assert c.encode_chunk(chunk).hex() == (
        "0007" "0015" "01020304" "0005" "0006" "00000033" "6162636465" "000000")


def test_missing_padding_after_the_last_parameter_is_accepted() -> None:
    # A chunk length excludes padding; some stacks omit the final pad bytes.
    body = c.INIT_BODY.pack(1, 2, 3, 4, 5) + c.PARAM_HEADER.pack(0x8000, 5) + b"x"
    chunk = c.CHUNK_HEADER.pack(c.ChunkType.INIT, 0, 4 + len(body)) + body
    packet = c.decode_packet(bytes(12) + chunk)
    assert packet.chunks == [c.InitChunk(1, 2, 3, 4, 5, (c.Param(0x8000, b"x"),))]


def test_heartbeat_without_info_is_malformed() -> None:
    chunk = c.encode_chunk(c.UnknownChunk(c.ChunkType.HEARTBEAT, 0, b""))
    try:
        c.decode_packet(bytes(12) + chunk)
    except MalformedPacket as exc:
        assert "Heartbeat Info" in str(exc)
    else:
        raise AssertionError("a HEARTBEAT without info was accepted")
