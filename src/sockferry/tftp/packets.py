"""TFTP packets <-> bytes (RFC 1350 §5, RFC 2347 for options and OACK).

Pure: no sockets, no files.  ``decode_packet`` takes untrusted datagrams and raises only
``MalformedPacket``; every size it accepts has a named limit.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum

from sockferry.errors import MalformedPacket
from sockferry.wire import Reader, Writer

# Block numbers are 16-bit on the wire (RFC 1350 §5); transfers count blocks without bound
# and send the low 16 bits, so block 65536 goes out as 0 (the rollover tftp-hpa and curl
# expect).
BLOCK_MODULUS = 1 << 16
# RFC 2348 §1: blksize ranges from 8 to 65464 octets (65464 + 4 + 8 + 20 fills an IPv4
# datagram); RFC 1350's fixed size is the default.
DEFAULT_BLKSIZE = 512
MIN_BLKSIZE = 8
MAX_BLKSIZE = 65464
# RFC 2347: "The maximum size of a request packet is 512 octets."
MAX_REQUEST_BYTES = 512
# Peers' ERROR texts are shown to users and logged; longer ones are cut, not refused.
MAX_ERROR_TEXT_BYTES = 512
# An OACK answers options from a request that fits in 512 octets; a longer one is abuse.
MAX_OACK_BYTES = 512
# Mode names are "netascii", "octet" or "mail"; anything longer is nonsense.
MAX_MODE_BYTES = 16
# The largest datagram a TFTP peer may send: a DATA packet of the largest block size.
MAX_DATAGRAM_BYTES = MAX_BLKSIZE + 4

OPCODE = struct.Struct("!H")
HEADER = struct.Struct("!HH")  # DATA, ACK and ERROR start with opcode and a 16-bit number


class Opcode(IntEnum):
    RRQ = 1
    WRQ = 2
    DATA = 3
    ACK = 4
    ERROR = 5
    OACK = 6  # RFC 2347


class ErrorCode(IntEnum):
    """RFC 1350 Appendix, plus code 8 from RFC 2347."""

    NOT_DEFINED = 0
    FILE_NOT_FOUND = 1
    ACCESS_VIOLATION = 2
    DISK_FULL = 3
    ILLEGAL_OPERATION = 4
    UNKNOWN_TID = 5
    FILE_EXISTS = 6
    NO_SUCH_USER = 7
    OPTION_REFUSED = 8


@dataclass(frozen=True, slots=True)
class TransferRequest:
    """RRQ or WRQ.  ``mode`` and option names are lower-cased (RFC 2347: case-insensitive)."""

    opcode: Opcode
    filename: bytes
    mode: str
    options: dict[str, str] = field(default_factory=dict)

    @property
    def is_read(self) -> bool:
        return self.opcode is Opcode.RRQ


@dataclass(frozen=True, slots=True)
class Data:
    block: int  # 16-bit wire number
    payload: bytes


@dataclass(frozen=True, slots=True)
class Ack:
    block: int  # 16-bit wire number


@dataclass(frozen=True, slots=True)
class Error:
    code: int
    message: str


@dataclass(frozen=True, slots=True)
class OptionAck:
    options: dict[str, str]


Packet = TransferRequest | Data | Ack | Error | OptionAck


# ---------------------------------------------------------------------------------------
# Encoding


def encode_request(opcode: Opcode, filename: bytes, mode: str,
                   options: dict[str, str] | None = None) -> bytes:
    writer = Writer().u16(opcode).cstring(filename).cstring(mode.encode("ascii"))
    for name, value in (options or {}).items():
        writer.cstring(name.encode("ascii")).cstring(value.encode("ascii"))
    if len(writer) > MAX_REQUEST_BYTES:
        raise ValueError(f"request of {len(writer)} bytes is over the RFC 2347 limit of "
                         f"{MAX_REQUEST_BYTES}")
    return writer.getvalue()


def encode_data(block: int, payload: bytes) -> bytes:
    return HEADER.pack(Opcode.DATA, block % BLOCK_MODULUS) + payload


def encode_ack(block: int) -> bytes:
    return HEADER.pack(Opcode.ACK, block % BLOCK_MODULUS)


def encode_error(code: int, message: str) -> bytes:
    text = message.encode("utf-8", "replace").replace(b"\0", b" ")[:MAX_ERROR_TEXT_BYTES]
    return HEADER.pack(Opcode.ERROR, code) + text + b"\0"


def encode_oack(options: dict[str, str]) -> bytes:
    writer = Writer().u16(Opcode.OACK)
    for name, value in options.items():
        writer.cstring(name.encode("ascii")).cstring(value.encode("ascii"))
    return writer.getvalue()


def encode_packet(packet: Packet) -> bytes:
    match packet:
        case TransferRequest():
            return encode_request(packet.opcode, packet.filename, packet.mode, packet.options)
        case Data():
            return encode_data(packet.block, packet.payload)
        case Ack():
            return encode_ack(packet.block)
        case Error():
            return encode_error(packet.code, packet.message)
        case OptionAck():
            return encode_oack(packet.options)


def opcode_of(packet: Packet) -> Opcode:
    match packet:
        case TransferRequest():
            return packet.opcode
        case Data():
            return Opcode.DATA
        case Ack():
            return Opcode.ACK
        case Error():
            return Opcode.ERROR
        case OptionAck():
            return Opcode.OACK


# ---------------------------------------------------------------------------------------
# Decoding


def decode_packet(data: bytes) -> Packet:
    """Parse one datagram; anything that is not a well-formed TFTP packet raises
    ``MalformedPacket``."""
    if len(data) < OPCODE.size:
        raise MalformedPacket(f"a datagram of {len(data)} bytes is too short for TFTP")
    opcode = (data[0] << 8) | data[1]
    decoder = _DECODERS.get(opcode)
    if decoder is None:
        raise MalformedPacket(f"unknown TFTP opcode {opcode}")
    return decoder(data)


def _decode_request(data: bytes) -> TransferRequest:
    if len(data) > MAX_REQUEST_BYTES:
        raise MalformedPacket(f"request of {len(data)} bytes is over the RFC 2347 limit of "
                              f"{MAX_REQUEST_BYTES}")
    reader = Reader(data, OPCODE.size)
    filename = reader.cstring(MAX_REQUEST_BYTES, "file name")
    if not filename:
        raise MalformedPacket("request with an empty file name")
    mode = _ascii(reader.cstring(MAX_MODE_BYTES, "transfer mode"), "transfer mode").lower()
    options = _decode_options(reader, MAX_REQUEST_BYTES)
    return TransferRequest(Opcode(data[1]), filename, mode, options)


def _decode_options(reader: Reader, limit: int) -> dict[str, str]:
    """Name/value pairs up to the end; names lower-cased, duplicates refused."""
    options: dict[str, str] = {}
    while reader.remaining:
        name = _ascii(reader.cstring(limit, "option name"), "option name").lower()
        value = _ascii(reader.cstring(limit, f"value of option '{name}'"), "option value")
        if not name:
            raise MalformedPacket("option with an empty name")
        if name in options:  # ambiguous: refused as a negotiation failure (RFC 2347)
            raise MalformedPacket(f"option '{name}' appears twice",
                                  code=ErrorCode.OPTION_REFUSED)
        options[name] = value
    return options


def _decode_data(data: bytes) -> Data:
    if len(data) < HEADER.size:
        raise MalformedPacket("DATA packet shorter than its header")
    if len(data) > MAX_DATAGRAM_BYTES:
        raise MalformedPacket(f"DATA packet of {len(data)} bytes is over the largest "
                              f"block size {MAX_BLKSIZE}")
    return Data((data[2] << 8) | data[3], data[4:])


def _decode_ack(data: bytes) -> Ack:
    if len(data) != HEADER.size:
        raise MalformedPacket(f"ACK packet of {len(data)} bytes (an ACK has 4)")
    return Ack((data[2] << 8) | data[3])


def _decode_error(data: bytes) -> Error:
    if len(data) < HEADER.size:
        raise MalformedPacket("ERROR packet shorter than its header")
    # Lenient on purpose: some peers omit the final NUL, and a cut text still informs.
    text = data[HEADER.size:].split(b"\0", 1)[0][:MAX_ERROR_TEXT_BYTES]
    return Error((data[2] << 8) | data[3], text.decode("utf-8", "replace"))


def _decode_oack(data: bytes) -> OptionAck:
    if len(data) > MAX_OACK_BYTES:
        raise MalformedPacket(f"OACK of {len(data)} bytes is over the limit of "
                              f"{MAX_OACK_BYTES}")
    return OptionAck(_decode_options(Reader(data, OPCODE.size), MAX_OACK_BYTES))


def _ascii(raw: bytes, what: str) -> str:
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise MalformedPacket(f"{what} is not ASCII") from None


_DECODERS: dict[int, Callable[[bytes], Packet]] = {
    Opcode.RRQ: _decode_request,
    Opcode.WRQ: _decode_request,
    Opcode.DATA: _decode_data,
    Opcode.ACK: _decode_ack,
    Opcode.ERROR: _decode_error,
    Opcode.OACK: _decode_oack,
}

