"""SCTP packets and chunks <-> bytes (RFC 9260 §3).  Pure: no I/O, no clock.

``decode_packet`` takes untrusted bytes and raises only ``MalformedPacket``.  Chunk types
and parameters this stack does not implement are kept as ``UnknownChunk`` and ``Param``
so the association can apply the rules of their upper two bits (RFC 9260 §3.2, §3.2.1).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from sockferry.errors import MalformedPacket
from sockferry.sctp.checksum import crc32c
from sockferry.wire import Reader

COMMON_HEADER = struct.Struct("!HHII")
CHUNK_HEADER = struct.Struct("!BBH")
DATA_HEADER = struct.Struct("!BBHIHHI")  # type, flags, length, TSN, stream, SSN, PPID
INIT_BODY = struct.Struct("!IIHHI")
SACK_BODY = struct.Struct("!IIHH")
PARAM_HEADER = struct.Struct("!HH")
CHECKSUM = struct.Struct("<I")  # RFC 9260 Appendix A: the CRC goes out least significant byte first
U32 = struct.Struct("!I")
GAP_BLOCK = struct.Struct("!HH")

COMMON_HEADER_SIZE = COMMON_HEADER.size  # 12
DATA_HEADER_SIZE = DATA_HEADER.size  # 16
CHUNK_HEADER_SIZE = CHUNK_HEADER.size

# A chunk's length field is 16 bits, so no chunk and no datagram needs more.
MAX_CHUNK_LENGTH = 0xFFFF


class ChunkType(IntEnum):
    """RFC 9260 §3.2."""

    DATA = 0
    INIT = 1
    INIT_ACK = 2
    SACK = 3
    HEARTBEAT = 4
    HEARTBEAT_ACK = 5
    ABORT = 6
    SHUTDOWN = 7
    SHUTDOWN_ACK = 8
    ERROR = 9
    COOKIE_ECHO = 10
    COOKIE_ACK = 11
    SHUTDOWN_COMPLETE = 14


class ParamType(IntEnum):
    """INIT and INIT ACK parameters (RFC 9260 §3.3.2, §3.3.3)."""

    HEARTBEAT_INFO = 1
    IPV4_ADDRESS = 5
    IPV6_ADDRESS = 6
    STATE_COOKIE = 7
    UNRECOGNIZED_PARAMETER = 8
    COOKIE_PRESERVATIVE = 9
    HOST_NAME_ADDRESS = 11
    SUPPORTED_ADDRESS_TYPES = 12


class CauseCode(IntEnum):
    """Error causes of ERROR and ABORT chunks (RFC 9260 §3.3.10)."""

    INVALID_STREAM_IDENTIFIER = 1
    MISSING_MANDATORY_PARAMETER = 2
    STALE_COOKIE = 3
    OUT_OF_RESOURCE = 4
    UNRESOLVABLE_ADDRESS = 5
    UNRECOGNIZED_CHUNK_TYPE = 6
    INVALID_MANDATORY_PARAMETER = 7
    UNRECOGNIZED_PARAMETERS = 8
    NO_USER_DATA = 9
    COOKIE_RECEIVED_WHILE_SHUTTING_DOWN = 10
    RESTART_WITH_NEW_ADDRESSES = 11
    USER_INITIATED_ABORT = 12
    PROTOCOL_VIOLATION = 13


# DATA chunk flags (RFC 9260 §3.3.1)
FLAG_END = 0x01
FLAG_BEGINNING = 0x02
FLAG_UNORDERED = 0x04
FLAG_IMMEDIATE = 0x08
# ABORT and SHUTDOWN COMPLETE: the verification tag is the sender's own (§3.3.7, §3.3.13)
FLAG_T = 0x01


@dataclass(slots=True)
class DataChunk:
    tsn: int
    stream: int
    ssn: int
    ppid: int
    payload: bytes
    unordered: bool = False
    beginning: bool = True
    end: bool = True
    immediate: bool = False


@dataclass(frozen=True, slots=True)
class Param:
    """A TLV parameter, known or not; ``type`` keeps its upper two bits (§3.2.1)."""

    type: int
    value: bytes


@dataclass(frozen=True, slots=True)
class Cause:
    """An error cause: its code and its body as sent."""

    code: int
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class Violation:
    """The peer broke the protocol: the association ends with an ABORT carrying
    ``cause``; ``reason`` says why in words."""

    cause: Cause
    reason: str


def cause_text(causes: tuple[Cause, ...]) -> str:
    """Error causes in words, for logs and ``AssociationChange.reason``."""
    words = []
    for cause in causes:
        try:
            name = CauseCode(cause.code).name.replace("_", " ").lower()
        except ValueError:
            name = f"cause {cause.code}"
        if cause.code == CauseCode.USER_INITIATED_ABORT and cause.body:
            name += f" ({cause.body.decode(errors='replace')[:200]})"
        words.append(name)
    return ", ".join(words) or "no cause given"


@dataclass(frozen=True, slots=True)
class _InitFields:
    """INIT and INIT ACK share their layout (§3.3.2, §3.3.3) but never their meaning."""

    initiate_tag: int
    a_rwnd: int
    outbound_streams: int
    inbound_streams: int
    initial_tsn: int
    params: tuple[Param, ...] = ()


@dataclass(frozen=True, slots=True)
class InitChunk(_InitFields):
    pass


@dataclass(frozen=True, slots=True)
class InitAckChunk(_InitFields):
    pass


@dataclass(frozen=True, slots=True)
class SackChunk:
    cumulative_tsn: int
    a_rwnd: int
    # Gap Ack Blocks as (start, end) offsets from the cumulative TSN (§3.3.4)
    gaps: tuple[tuple[int, int], ...] = ()
    duplicates: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class HeartbeatChunk:
    info: bytes


@dataclass(frozen=True, slots=True)
class HeartbeatAckChunk:
    info: bytes


@dataclass(frozen=True, slots=True)
class AbortChunk:
    causes: tuple[Cause, ...] = ()
    reflected: bool = False  # the T bit


@dataclass(frozen=True, slots=True)
class ShutdownChunk:
    cumulative_tsn: int


@dataclass(frozen=True, slots=True)
class ShutdownAckChunk:
    pass


@dataclass(frozen=True, slots=True)
class ErrorChunk:
    causes: tuple[Cause, ...] = ()


@dataclass(frozen=True, slots=True)
class CookieEchoChunk:
    cookie: bytes


@dataclass(frozen=True, slots=True)
class CookieAckChunk:
    pass


@dataclass(frozen=True, slots=True)
class ShutdownCompleteChunk:
    reflected: bool = False  # the T bit


@dataclass(frozen=True, slots=True)
class UnknownChunk:
    """A chunk type this stack does not implement, kept whole for §3.2's rules."""

    type: int
    flags: int
    body: bytes


Chunk = (DataChunk | InitChunk | InitAckChunk | SackChunk | HeartbeatChunk
         | HeartbeatAckChunk | AbortChunk | ShutdownChunk | ShutdownAckChunk | ErrorChunk
         | CookieEchoChunk | CookieAckChunk | ShutdownCompleteChunk | UnknownChunk)


@dataclass(slots=True)
class Packet:
    source_port: int
    destination_port: int
    verification_tag: int
    chunks: list[Chunk] = field(default_factory=list)


def _pad(length: int) -> int:
    return -length & 3


# ---------------------------------------------------------------------------------------
# Encoding


def encode_param(param: Param) -> bytes:
    """A parameter (or error cause) with its padding."""
    length = PARAM_HEADER.size + len(param.value)
    return PARAM_HEADER.pack(param.type, length) + param.value + bytes(_pad(length))


def _tlv_list(items: tuple[Param, ...]) -> bytes:
    return b"".join(encode_param(item) for item in items)


def _causes(causes: tuple[Cause, ...]) -> bytes:
    return _tlv_list(tuple(Param(c.code, c.body) for c in causes))


def _chunk(type_: int, flags: int, body: bytes) -> bytes:
    length = CHUNK_HEADER_SIZE + len(body)
    if length > MAX_CHUNK_LENGTH:
        raise ValueError(f"a chunk of {length} bytes does not fit the 16-bit length field")
    return CHUNK_HEADER.pack(type_, flags, length) + body + bytes(_pad(length))


def encode_data_header(chunk: DataChunk) -> bytes:
    """The 16 header bytes of a DATA chunk; its payload and padding follow them."""
    flags = ((FLAG_END if chunk.end else 0) | (FLAG_BEGINNING if chunk.beginning else 0)
             | (FLAG_UNORDERED if chunk.unordered else 0)
             | (FLAG_IMMEDIATE if chunk.immediate else 0))
    return DATA_HEADER.pack(ChunkType.DATA, flags, DATA_HEADER_SIZE + len(chunk.payload),
                            chunk.tsn & 0xFFFFFFFF, chunk.stream, chunk.ssn & 0xFFFF,
                            chunk.ppid)


def _encode_data(chunk: DataChunk) -> bytes:
    if DATA_HEADER_SIZE + len(chunk.payload) > MAX_CHUNK_LENGTH:
        raise ValueError("DATA payload does not fit one chunk")
    return encode_data_header(chunk) + chunk.payload + bytes(_pad(len(chunk.payload)))


def _encode_init(chunk: InitChunk | InitAckChunk) -> bytes:
    type_ = ChunkType.INIT if isinstance(chunk, InitChunk) else ChunkType.INIT_ACK
    body = INIT_BODY.pack(chunk.initiate_tag, chunk.a_rwnd, chunk.outbound_streams,
                          chunk.inbound_streams, chunk.initial_tsn & 0xFFFFFFFF)
    return _chunk(type_, 0, body + _tlv_list(chunk.params))


def _encode_sack(chunk: SackChunk) -> bytes:
    body = [SACK_BODY.pack(chunk.cumulative_tsn & 0xFFFFFFFF, chunk.a_rwnd,
                           len(chunk.gaps), len(chunk.duplicates))]
    body += [GAP_BLOCK.pack(start, end) for start, end in chunk.gaps]
    body += [U32.pack(tsn & 0xFFFFFFFF) for tsn in chunk.duplicates]
    return _chunk(ChunkType.SACK, 0, b"".join(body))


def _heartbeat_body(info: bytes) -> bytes:
    return _tlv_list((Param(ParamType.HEARTBEAT_INFO, info),))


_ENCODERS: dict[type, Callable[[Any], bytes]] = {
    DataChunk: _encode_data,
    InitChunk: _encode_init,
    InitAckChunk: _encode_init,
    SackChunk: _encode_sack,
    HeartbeatChunk: lambda ch: _chunk(ChunkType.HEARTBEAT, 0, _heartbeat_body(ch.info)),
    HeartbeatAckChunk: lambda ch: _chunk(ChunkType.HEARTBEAT_ACK, 0,
                                         _heartbeat_body(ch.info)),
    AbortChunk: lambda ch: _chunk(ChunkType.ABORT, FLAG_T if ch.reflected else 0,
                                  _causes(ch.causes)),
    ShutdownChunk: lambda ch: _chunk(ChunkType.SHUTDOWN, 0,
                                     U32.pack(ch.cumulative_tsn & 0xFFFFFFFF)),
    ShutdownAckChunk: lambda ch: _chunk(ChunkType.SHUTDOWN_ACK, 0, b""),
    ErrorChunk: lambda ch: _chunk(ChunkType.ERROR, 0, _causes(ch.causes)),
    CookieEchoChunk: lambda ch: _chunk(ChunkType.COOKIE_ECHO, 0, ch.cookie),
    CookieAckChunk: lambda ch: _chunk(ChunkType.COOKIE_ACK, 0, b""),
    ShutdownCompleteChunk: lambda ch: _chunk(ChunkType.SHUTDOWN_COMPLETE,
                                             FLAG_T if ch.reflected else 0, b""),
    UnknownChunk: lambda ch: _chunk(ch.type, ch.flags, ch.body),
}


def encode_chunk(chunk: Chunk) -> bytes:
    """One chunk with its padding."""
    return _ENCODERS[type(chunk)](chunk)


def encode_packet(source_port: int, destination_port: int, verification_tag: int,
                  chunks: list[bytes]) -> bytes:
    """A packet from encoded chunks, with its CRC32c filled in."""
    packet = bytearray(COMMON_HEADER.pack(source_port, destination_port, verification_tag, 0))
    for part in chunks:
        packet += part
    CHECKSUM.pack_into(packet, 8, crc32c(packet, 0))
    return bytes(packet)


# ---------------------------------------------------------------------------------------
# Decoding


def checksum_ok(data: bytes) -> bool:
    """Whether the CRC32c of a received packet is right (RFC 9260 §6.8)."""
    if len(data) < COMMON_HEADER_SIZE:
        return False
    view = memoryview(data)
    crc = crc32c(view[COMMON_HEADER_SIZE:], crc32c(b"\0\0\0\0", crc32c(view[:8], 0)))
    return bool(crc == CHECKSUM.unpack_from(data, 8)[0])


def _decode_tlvs(reader: Reader, what: str) -> tuple[Param, ...]:
    items = []
    while reader.remaining:
        type_, length = reader.unpack(PARAM_HEADER)
        if length < PARAM_HEADER.size:
            raise MalformedPacket(f"{what} of type {type_} claims {length} bytes")
        value = reader.read(length - PARAM_HEADER.size)
        # The last parameter's padding may be missing: the chunk length excludes it.
        reader.read(min(_pad(length), reader.remaining))
        items.append(Param(type_, value))
    return tuple(items)


def _decode_causes(reader: Reader) -> tuple[Cause, ...]:
    return tuple(Cause(p.type, p.value) for p in _decode_tlvs(reader, "error cause"))


def _decode_heartbeat_info(reader: Reader) -> bytes:
    params = _decode_tlvs(reader, "heartbeat parameter")
    if len(params) != 1 or params[0].type != ParamType.HEARTBEAT_INFO:
        raise MalformedPacket("a HEARTBEAT must carry exactly one Heartbeat Info parameter")
    return params[0].value


def _decode_data(flags: int, reader: Reader) -> DataChunk:
    tsn, stream, ssn, ppid = reader.unpack(_DATA_FIELDS)
    return DataChunk(tsn, stream, ssn, ppid, reader.rest(), bool(flags & FLAG_UNORDERED),
                     bool(flags & FLAG_BEGINNING), bool(flags & FLAG_END),
                     bool(flags & FLAG_IMMEDIATE))


_DATA_FIELDS = struct.Struct("!IHHI")


def _decode_init(type_: int, reader: Reader) -> InitChunk | InitAckChunk:
    tag, a_rwnd, outbound, inbound, tsn = reader.unpack(INIT_BODY)
    params = _decode_tlvs(reader, "INIT parameter")
    cls = InitChunk if type_ == ChunkType.INIT else InitAckChunk
    return cls(tag, a_rwnd, outbound, inbound, tsn, params)


def _decode_sack(reader: Reader) -> SackChunk:
    cumulative, a_rwnd, n_gaps, n_dups = reader.unpack(SACK_BODY)
    gaps = tuple((reader.u16(), reader.u16()) for _ in range(n_gaps))
    duplicates = tuple(reader.u32() for _ in range(n_dups))
    return SackChunk(cumulative, a_rwnd, gaps, duplicates)


def _decode_body(type_: int, flags: int, reader: Reader) -> Chunk:  # noqa: PLR0911
    match type_:
        case ChunkType.DATA:
            return _decode_data(flags, reader)
        case ChunkType.INIT | ChunkType.INIT_ACK:
            return _decode_init(type_, reader)
        case ChunkType.SACK:
            return _decode_sack(reader)
        case ChunkType.HEARTBEAT:
            return HeartbeatChunk(_decode_heartbeat_info(reader))
        case ChunkType.HEARTBEAT_ACK:
            return HeartbeatAckChunk(_decode_heartbeat_info(reader))
        case ChunkType.ABORT:
            return AbortChunk(_decode_causes(reader), bool(flags & FLAG_T))
        case ChunkType.SHUTDOWN:
            return ShutdownChunk(reader.u32())
        case ChunkType.SHUTDOWN_ACK:
            return ShutdownAckChunk()
        case ChunkType.ERROR:
            return ErrorChunk(_decode_causes(reader))
        case ChunkType.COOKIE_ECHO:
            return CookieEchoChunk(reader.rest())
        case ChunkType.COOKIE_ACK:
            return CookieAckChunk()
        case ChunkType.SHUTDOWN_COMPLETE:
            return ShutdownCompleteChunk(bool(flags & FLAG_T))
    return UnknownChunk(type_, flags, reader.rest())


def decode_chunks(data: bytes, start: int = COMMON_HEADER_SIZE) -> list[Chunk]:
    """The chunks of a packet from ``start`` on; bytes not forming chunks are refused.

    DATA, the bulk of all traffic, is parsed inline; other chunks go through ``Reader``.
    """
    chunks: list[Chunk] = []
    end = len(data)
    position = start
    unpack_header = CHUNK_HEADER.unpack_from
    while position < end:
        if end - position < CHUNK_HEADER_SIZE:
            raise MalformedPacket(f"{end - position} stray bytes after the last chunk")
        type_, flags, length = unpack_header(data, position)
        if length < CHUNK_HEADER_SIZE or length > end - position:
            raise MalformedPacket(f"chunk of type {type_} claims {length} bytes, "
                                  f"{end - position} remain")
        if type_ == ChunkType.DATA and length >= DATA_HEADER_SIZE:
            tsn, stream, ssn, ppid = _DATA_FIELDS.unpack_from(data, position + 4)
            chunks.append(DataChunk(tsn, stream, ssn, ppid,
                                    data[position + DATA_HEADER_SIZE:position + length],
                                    bool(flags & FLAG_UNORDERED), bool(flags & FLAG_BEGINNING),
                                    bool(flags & FLAG_END), bool(flags & FLAG_IMMEDIATE)))
        else:
            reader = Reader(data[position + CHUNK_HEADER_SIZE:position + length])
            with reader.limited(length - CHUNK_HEADER_SIZE, f"chunk of type {type_}") as body:
                chunks.append(_decode_body(type_, flags, body))
        # The last chunk's padding may be missing (RFC 9260 §3.2: the receiver ignores it).
        position = min(position + length + _pad(length), end)
    return chunks


def decode_packet(data: bytes) -> Packet:
    """The common header and chunks of ``data`` (the checksum is checked separately)."""
    if len(data) < COMMON_HEADER_SIZE:
        raise MalformedPacket(f"an SCTP packet of {len(data)} bytes is shorter than its header")
    source, destination, tag, _checksum = COMMON_HEADER.unpack_from(data, 0)
    return Packet(source, destination, tag, decode_chunks(data))
