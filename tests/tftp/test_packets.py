"""The TFTP packet codec: golden bytes, round trips, and garbage."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sockferry.errors import MalformedPacket
from sockferry.tftp.packets import (
    MAX_REQUEST_BYTES,
    Ack,
    Data,
    Error,
    ErrorCode,
    Opcode,
    OptionAck,
    Packet,
    TransferRequest,
    decode_packet,
    encode_ack,
    encode_data,
    encode_error,
    encode_packet,
    encode_request,
)

# What curl 7.88 sends for `curl --tftp-blksize 1468 tftp://host/big.bin` (captured).
CURL_RRQ = b"\x00\x01big.bin\x00octet\x00tsize\x000\x00blksize\x001468\x00timeout\x006\x00"


def test_golden_request_from_curl() -> None:
    packet = decode_packet(CURL_RRQ)
    assert packet == TransferRequest(Opcode.RRQ, b"big.bin", "octet",
                             {"tsize": "0", "blksize": "1468", "timeout": "6"})
    assert encode_packet(packet) == CURL_RRQ


def test_golden_data_ack_error() -> None:
    assert encode_data(1, b"hi") == b"\x00\x03\x00\x01hi"
    assert encode_ack(0) == b"\x00\x04\x00\x00"
    assert encode_error(ErrorCode.FILE_NOT_FOUND, "File not found") == (
        b"\x00\x05\x00\x01File not found\x00")
    assert decode_packet(b"\x00\x06blksize\x001468\x00") == OptionAck({"blksize": "1468"})


def test_block_numbers_roll_over_to_zero() -> None:
    assert encode_data(65536, b"") == b"\x00\x03\x00\x00"
    assert encode_ack(65537) == b"\x00\x04\x00\x01"


def test_mode_and_option_names_are_case_insensitive() -> None:
    packet = decode_packet(b"\x00\x02f\x00OcTeT\x00BLKSIZE\x001024\x00")
    assert packet == TransferRequest(Opcode.WRQ, b"f", "octet", {"blksize": "1024"})


def test_error_without_its_nul_is_read_leniently() -> None:
    assert decode_packet(b"\x00\x05\x00\x02denied") == Error(2, "denied")


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "too short"),
    (b"\x00", "too short"),
    (b"\x00\x07", "unknown TFTP opcode 7"),
    (b"\x00\x00abc", "unknown TFTP opcode 0"),
    (b"\x00\x01file", "file name is not terminated"),
    (b"\x00\x01file\x00octet", "transfer mode is not terminated"),
    (b"\x00\x01\x00octet\x00", "empty file name"),
    (b"\x00\x01f\x00octet\x00blksize\x00", "not terminated"),
    (b"\x00\x01f\x00octet\x00blksize\x00512\x00BlkSize\x00512\x00", "appears twice"),
    (b"\x00\x01f\x00octet\x00\x00512\x00", "empty name"),
    (b"\x00\x01f\x00" + b"m" * 40 + b"\x00", "longer than 16"),
    (b"\x00\x01f\x00octet\x00n\xe9\x001\x00", "not ASCII"),
    (b"\x00\x01" + b"f" * MAX_REQUEST_BYTES + b"\x00octet\x00", "over the RFC 2347 limit"),
    (b"\x00\x04\x00", "ACK packet of 3 bytes"),
    (b"\x00\x04\x00\x01\x00", "ACK packet of 5 bytes"),
    (b"\x00\x03\x00", "shorter than its header"),
    (b"\x00\x03\x00\x01" + b"x" * 65465, "over the largest block size"),
    (b"\x00\x06" + b"opt\x00val\x00" * 70, "OACK of"),
])
def test_malformed(data: bytes, reason: str) -> None:
    with pytest.raises(MalformedPacket, match=reason):
        decode_packet(data)


ascii_text = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1,
                     max_size=12)
options = st.dictionaries(ascii_text.map(str.lower), ascii_text, max_size=4)
packets: st.SearchStrategy[Packet] = st.one_of(
    st.builds(TransferRequest, st.sampled_from([Opcode.RRQ, Opcode.WRQ]),
              st.binary(min_size=1, max_size=100).filter(lambda b: b"\0" not in b),
              st.sampled_from(["octet", "netascii", "mail"]), options),
    st.builds(Data, st.integers(0, 65535), st.binary(max_size=1468)),
    st.builds(Ack, st.integers(0, 65535)),
    st.builds(Error, st.integers(0, 65535), st.text(max_size=50).filter(lambda t: "\0" not in t)),
    st.builds(OptionAck, options),
)


@given(packets)
def test_round_trip(packet: Packet) -> None:
    assert decode_packet(encode_packet(packet)) == packet


@given(st.binary(max_size=600))
def test_garbage_decodes_or_raises_malformed(data: bytes) -> None:
    with contextlib.suppress(MalformedPacket):
        decode_packet(data)


@given(st.sampled_from([1, 2, 6]), st.binary(max_size=600))
def test_garbage_after_a_request_opcode(opcode: int, body: bytes) -> None:
    with contextlib.suppress(MalformedPacket):
        decode_packet(opcode.to_bytes(2, "big") + body)


def test_encode_request_refuses_oversized() -> None:
    with pytest.raises(ValueError, match="RFC 2347"):
        encode_request(Opcode.RRQ, b"x" * 600, "octet")


def test_duplicated_option_is_refused_as_a_negotiation_failure() -> None:
    with pytest.raises(MalformedPacket) as caught:
        decode_packet(b"\x00\x01f\x00octet\x00blksize\x00512\x00BlkSize\x00512\x00")
    assert caught.value.code == ErrorCode.OPTION_REFUSED
