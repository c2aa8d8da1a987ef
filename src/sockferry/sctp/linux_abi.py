"""The Linux SCTP socket ABI: numbers and structures of linux/sctp.h, and their codecs.

Python's socket module names none of them, so they are laid out here from the Linux UAPI
header, with every padding byte written out.  ``tests/sctp/test_linux_abi.py`` compiles
a C program against <linux/sctp.h> and checks each value, size and offset.  The API
itself is RFC 6458 (Sockets API Extensions for SCTP); section numbers below are its.

Pure: no sockets, no I/O.  Decoders raise only ``MalformedPacket``: the bytes come from
the kernel, but a short or garbled buffer must never become an IndexError.
"""

from __future__ import annotations

import ipaddress
import struct
import sys
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import Any

from sockferry.errors import MalformedPacket

# <netinet/in.h>: the protocol number, also the level of SCTP options and ancillary data.
IPPROTO_SCTP = 132
# <bits/socket.h> address families (Linux values).
AF_INET = 2
AF_INET6 = 10

# RFC 6458 §7.1: socket options at level SOL_SCTP.  Member names are the C names
# without their SCTP_ prefix (the test relies on that).
class SockOpt(IntEnum):
    RTOINFO = 0
    ASSOCINFO = 1
    INITMSG = 2
    NODELAY = 3
    PEER_ADDR_PARAMS = 9
    I_WANT_MAPPED_V4_ADDR = 12
    FRAGMENT_INTERLEAVE = 18
    GET_ASSOC_NUMBER = 28
    RECVRCVINFO = 32
    SOCKOPT_BINDX_ADD = 100
    GET_LOCAL_ADDRS = 109
    EVENT = 127
    REMOTE_UDP_ENCAPS_PORT = 132


# RFC 6458 §7.1.21 and §7.2: an assoc_id that names no association but a group.
class AssocGroup(IntEnum):
    FUTURE_ASSOC = 0
    CURRENT_ASSOC = 1
    ALL_ASSOC = 2


class CmsgType(IntEnum):
    """``cmsg_type`` of SCTP ancillary data (RFC 6458 §5.3)."""

    INIT = 0
    SNDRCV = 1
    SNDINFO = 2
    RCVINFO = 3
    NXTINFO = 4


class SendFlag(IntFlag):
    """``snd_flags`` / ``rcv_flags`` (RFC 6458 §5.3.4)."""

    UNORDERED = 1 << 0
    ADDR_OVER = 1 << 1
    ABORT = 1 << 2
    SACK_IMMEDIATELY = 1 << 3
    SENDALL = 1 << 6
    EOF = 0x200  # MSG_FIN: start a graceful SHUTDOWN


# msg_flags of recvmsg: the buffer holds a notification, not user data (RFC 6458 §6.1);
# <bits/socket.h>: the buffer ends a message (without it: a piece, more follows).
MSG_NOTIFICATION = 0x8000
MSG_EOR = 0x80


class NotificationType(IntEnum):
    """``sn_type`` (RFC 6458 §6.1); every value is above 2**15."""

    DATA_IO_EVENT = 1 << 15
    ASSOC_CHANGE = (1 << 15) + 1
    PEER_ADDR_CHANGE = (1 << 15) + 2
    SEND_FAILED = (1 << 15) + 3
    REMOTE_ERROR = (1 << 15) + 4
    SHUTDOWN_EVENT = (1 << 15) + 5
    PARTIAL_DELIVERY_EVENT = (1 << 15) + 6
    ADAPTATION_INDICATION = (1 << 15) + 7
    AUTHENTICATION_EVENT = (1 << 15) + 8
    SENDER_DRY_EVENT = (1 << 15) + 9
    STREAM_RESET_EVENT = (1 << 15) + 10
    ASSOC_RESET_EVENT = (1 << 15) + 11
    STREAM_CHANGE_EVENT = (1 << 15) + 12
    SEND_FAILED_EVENT = (1 << 15) + 13


class SacState(IntEnum):
    """``sac_state`` of SCTP_ASSOC_CHANGE (RFC 6458 §6.1.1)."""

    COMM_UP = 0
    COMM_LOST = 1
    RESTART = 2
    SHUTDOWN_COMP = 3
    CANT_STR_ASSOC = 4


class SsfFlag(IntEnum):
    """``ssf_flags`` of SCTP_SEND_FAILED_EVENT (RFC 6458 §6.1.11)."""

    DATA_UNSENT = 0
    DATA_SENT = 1


# SCTP_PARTIAL_DELIVERY_EVENT's only indication (RFC 6458 §6.1.7).
PARTIAL_DELIVERY_ABORTED = 0


class Layout:
    """One C structure as a ``struct`` format in native byte order, padding explicit.

    ``fields`` are ``(c_field_name, format_code)`` in order; an empty name marks
    padding.  ``offsets`` maps each C field to its byte offset, for the layout test.
    """

    def __init__(self, c_type: str, *fields: tuple[str, str]) -> None:
        self.c_type = c_type
        fmt = "="
        offsets: dict[str, int] = {}
        for name, code in fields:
            if name:
                offsets[name] = struct.calcsize(fmt)
            fmt += code
        self.offsets = offsets
        self.struct = struct.Struct(fmt)
        self.size = self.struct.size

    def pack(self, *values: int | bytes) -> bytes:
        return self.struct.pack(*values)

    def unpack(self, data: bytes | memoryview, offset: int = 0) -> tuple[Any, ...]:
        """The named fields at ``offset``; a short buffer is ``MalformedPacket``."""
        if len(data) - offset < self.size:
            raise MalformedPacket(f"{self.c_type} needs {self.size} bytes, "
                                  f"got {max(len(data) - offset, 0)}")
        return self.struct.unpack_from(data, offset)


_SOCKADDR_STORAGE = "128s"  # struct sockaddr_storage: 128 bytes, 8-byte aligned

SOCKADDR_IN = Layout("struct sockaddr_in", ("sin_family", "H"), ("sin_port", "2s"),
                     ("sin_addr", "4s"), ("", "8x"))
SOCKADDR_IN6 = Layout("struct sockaddr_in6", ("sin6_family", "H"), ("sin6_port", "2s"),
                      ("sin6_flowinfo", "4s"), ("sin6_addr", "16s"),
                      ("sin6_scope_id", "I"))
INITMSG = Layout("struct sctp_initmsg", ("sinit_num_ostreams", "H"),
                 ("sinit_max_instreams", "H"), ("sinit_max_attempts", "H"),
                 ("sinit_max_init_timeo", "H"))
SNDINFO = Layout("struct sctp_sndinfo", ("snd_sid", "H"), ("snd_flags", "H"),
                 ("snd_ppid", "I"), ("snd_context", "I"), ("snd_assoc_id", "i"))
RCVINFO = Layout("struct sctp_rcvinfo", ("rcv_sid", "H"), ("rcv_ssn", "H"),
                 ("rcv_flags", "H"), ("", "2x"), ("rcv_ppid", "I"), ("rcv_tsn", "I"),
                 ("rcv_cumtsn", "I"), ("rcv_context", "I"), ("rcv_assoc_id", "i"))
EVENT = Layout("struct sctp_event", ("se_assoc_id", "i"), ("se_type", "H"),
               ("se_on", "B"), ("", "x"))
RTOINFO = Layout("struct sctp_rtoinfo", ("srto_assoc_id", "i"), ("srto_initial", "I"),
                 ("srto_max", "I"), ("srto_min", "I"))
ASSOCPARAMS = Layout("struct sctp_assocparams", ("sasoc_assoc_id", "i"),
                     ("sasoc_asocmaxrxt", "H"), ("sasoc_number_peer_destinations", "H"),
                     ("sasoc_peer_rwnd", "I"), ("sasoc_local_rwnd", "I"),
                     ("sasoc_cookie_life", "I"))
# __attribute__((packed, aligned(4))): no padding inside, size rounded up to 4.
PADDRPARAMS = Layout("struct sctp_paddrparams", ("spp_assoc_id", "i"),
                     ("spp_address", _SOCKADDR_STORAGE), ("spp_hbinterval", "I"),
                     ("spp_pathmaxrxt", "H"), ("spp_pathmtu", "I"), ("spp_sackdelay", "I"),
                     ("spp_flags", "I"), ("spp_ipv6_flowlabel", "I"), ("spp_dscp", "B"),
                     ("", "x"))
UDPENCAPS = Layout("struct sctp_udpencaps", ("sue_assoc_id", "i"), ("", "4x"),
                   ("sue_address", _SOCKADDR_STORAGE), ("sue_port", "2s"), ("", "6x"))
GETADDRS = Layout("struct sctp_getaddrs", ("assoc_id", "i"), ("addr_num", "I"))

# Notifications (RFC 6458 §6.1); each starts with the common header.
SN_HEADER = Layout("union sctp_notification", ("sn_header.sn_type", "H"),
                   ("sn_header.sn_flags", "H"), ("sn_header.sn_length", "I"))
ASSOC_CHANGE = Layout("struct sctp_assoc_change", ("sac_type", "H"), ("sac_flags", "H"),
                      ("sac_length", "I"), ("sac_state", "H"), ("sac_error", "H"),
                      ("sac_outbound_streams", "H"), ("sac_inbound_streams", "H"),
                      ("sac_assoc_id", "i"))
REMOTE_ERROR = Layout("struct sctp_remote_error", ("sre_type", "H"), ("sre_flags", "H"),
                      ("sre_length", "I"), ("sre_error", "2s"), ("", "2x"),
                      ("sre_assoc_id", "i"))
SHUTDOWN_EVENT = Layout("struct sctp_shutdown_event", ("sse_type", "H"), ("sse_flags", "H"),
                        ("sse_length", "I"), ("sse_assoc_id", "i"))
PDAPI_EVENT = Layout("struct sctp_pdapi_event", ("pdapi_type", "H"), ("pdapi_flags", "H"),
                     ("pdapi_length", "I"), ("pdapi_indication", "I"),
                     ("pdapi_assoc_id", "i"), ("pdapi_stream", "I"), ("pdapi_seq", "I"))
SEND_FAILED_EVENT = Layout("struct sctp_send_failed_event", ("ssf_type", "H"),
                           ("ssf_flags", "H"), ("ssf_length", "I"), ("ssf_error", "I"),
                           ("ssfe_info", f"{SNDINFO.size}s"), ("ssf_assoc_id", "i"))

# Every layout, for the test that checks them against the C compiler.
LAYOUTS = (SOCKADDR_IN, SOCKADDR_IN6, INITMSG, SNDINFO, RCVINFO, EVENT, RTOINFO,
           ASSOCPARAMS, PADDRPARAMS, UDPENCAPS, GETADDRS, SN_HEADER, ASSOC_CHANGE,
           REMOTE_ERROR, SHUTDOWN_EVENT, PDAPI_EVENT, SEND_FAILED_EVENT)


# ---------------------------------------------------------------------------------------
# Socket addresses, as the kernel reads and writes them in SCTP options.

InetAddr = tuple[str, int] | tuple[str, int, int, int]


def encode_sockaddr(address: InetAddr) -> bytes:
    """``struct sockaddr_in`` for ``(host, port)``, ``sockaddr_in6`` for a 4-tuple."""
    host, port = address[0], address[1]
    ip = ipaddress.ip_address(host.split("%", 1)[0])
    if len(address) == 2:
        if ip.version != 4:
            raise ValueError(f"{host} is not an IPv4 address")
        return SOCKADDR_IN.pack(AF_INET, port.to_bytes(2, "big"), ip.packed)
    flowinfo, scope_id = address[2], address[3]
    if ip.version == 4:
        ip = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + ip.packed)
    return SOCKADDR_IN6.pack(AF_INET6, port.to_bytes(2, "big"),
                             flowinfo.to_bytes(4, "big"), ip.packed, scope_id)


def decode_sockaddr(data: bytes | memoryview, offset: int = 0) -> tuple[InetAddr, int]:
    """The address at ``offset`` and its encoded size; IPv4-mapped IPv6 becomes IPv4."""
    (family,) = struct.unpack_from("=H", data, offset) if len(data) - offset >= 2 else (-1,)
    if family == AF_INET:
        _family, port, addr = SOCKADDR_IN.unpack(data, offset)
        return (str(ipaddress.IPv4Address(addr)), int.from_bytes(port, "big")), \
            SOCKADDR_IN.size
    if family == AF_INET6:
        _family, port, flowinfo, addr, scope_id = SOCKADDR_IN6.unpack(data, offset)
        ip6 = ipaddress.IPv6Address(addr)
        if ip6.ipv4_mapped is not None:
            return (str(ip6.ipv4_mapped), int.from_bytes(port, "big")), SOCKADDR_IN6.size
        return ((str(ip6), int.from_bytes(port, "big"), int.from_bytes(flowinfo, "big"),
                 scope_id), SOCKADDR_IN6.size)
    raise MalformedPacket(f"unknown address family {family} in a socket address")


def decode_getaddrs(data: bytes | memoryview) -> list[InetAddr]:
    """The addresses of a ``struct sctp_getaddrs`` answer (SCTP_GET_LOCAL_ADDRS)."""
    _assoc_id, count = GETADDRS.unpack(data)
    addresses: list[InetAddr] = []
    offset = GETADDRS.size
    for _ in range(count):
        address, size = decode_sockaddr(data, offset)
        addresses.append(address)
        offset += size
    return addresses


def encode_sockaddr_storage(address: InetAddr | None) -> bytes:
    """A ``struct sockaddr_storage`` field; None is all zeroes (every address)."""
    raw = b"" if address is None else encode_sockaddr(address)
    return raw.ljust(128, b"\0")


# ---------------------------------------------------------------------------------------
# Ancillary data and options


def encode_sndinfo(stream: int, ppid: int, assoc_id: int, flags: SendFlag) -> bytes:
    """SCTP_SNDINFO (RFC 6458 §5.3.4).  The PPID is opaque to SCTP and travels in network
    byte order; the kernel copies ``snd_ppid`` to the wire as is, so it is packed
    big-endian here (as sctp_sendmsg() callers do with htonl)."""
    return SNDINFO.pack(stream, int(flags), _ppid_field(ppid), 0, assoc_id)


@dataclass(frozen=True, slots=True)
class RcvInfo:
    """SCTP_RCVINFO of one received message (RFC 6458 §5.3.5)."""

    stream: int
    ssn: int
    flags: SendFlag
    ppid: int
    tsn: int
    assoc_id: int


def decode_rcvinfo(data: bytes) -> RcvInfo:
    sid, ssn, flags, ppid, tsn, _cumtsn, _context, assoc_id = RCVINFO.unpack(data)
    return RcvInfo(sid, ssn, SendFlag(flags), _ppid_field(ppid), tsn, assoc_id)


def _ppid_field(value: int) -> int:
    """Swap a PPID between host order and the network order the kernel keeps it in."""
    return int.from_bytes(value.to_bytes(4, "big"), sys.byteorder)


def encode_initmsg(outbound: int, max_inbound: int, max_attempts: int = 0,
                   max_init_timeo_ms: int = 0) -> bytes:
    """SCTP_INITMSG (RFC 6458 §8.1.3); zero keeps the kernel's default."""
    return INITMSG.pack(outbound, max_inbound, max_attempts, max_init_timeo_ms)


def encode_event(kind: NotificationType, on: bool,
                 assoc_id: int = AssocGroup.FUTURE_ASSOC) -> bytes:
    """SCTP_EVENT (RFC 6458 §6.2.2): subscribe to one notification type, or not."""
    return EVENT.pack(assoc_id, int(kind), int(on))


def encode_udpencaps(port: int, address: InetAddr | None = None,
                     assoc_id: int = AssocGroup.FUTURE_ASSOC) -> bytes:
    """SCTP_REMOTE_UDP_ENCAPS_PORT (RFC 6951 §6.1): the peer's UDP port, 0 = no UDP."""
    return UDPENCAPS.pack(assoc_id, encode_sockaddr_storage(address),
                          port.to_bytes(2, "big"))


def encode_rtoinfo(initial_ms: int, max_ms: int, min_ms: int,
                   assoc_id: int = AssocGroup.FUTURE_ASSOC) -> bytes:
    """SCTP_RTOINFO (RFC 6458 §8.1.1)."""
    return RTOINFO.pack(assoc_id, initial_ms, max_ms, min_ms)


def encode_assocparams(max_retransmissions: int, cookie_life_ms: int,
                       assoc_id: int = AssocGroup.FUTURE_ASSOC) -> bytes:
    """SCTP_ASSOCINFO (RFC 6458 §8.1.2): Association.Max.Retrans and Valid.Cookie.Life;
    the zeroes keep the other values."""
    return ASSOCPARAMS.pack(assoc_id, max_retransmissions, 0, 0, 0, cookie_life_ms)


# spp_flags of struct sctp_paddrparams (enum sctp_spp_flags).
class PeerAddrFlag(IntFlag):
    HB_ENABLE = 1 << 0
    HB_DISABLE = 1 << 1


def encode_paddrparams(heartbeat_interval_ms: int, path_max_retransmissions: int,
                       assoc_id: int = AssocGroup.FUTURE_ASSOC) -> bytes:
    """SCTP_PEER_ADDR_PARAMS (RFC 6458 §8.1.12) for every address: heartbeats on at this
    interval, and Path.Max.Retrans."""
    return PADDRPARAMS.pack(assoc_id, encode_sockaddr_storage(None), heartbeat_interval_ms,
                            path_max_retransmissions, 0, 0, int(PeerAddrFlag.HB_ENABLE),
                            0, 0)


# ---------------------------------------------------------------------------------------
# Notifications


@dataclass(frozen=True, slots=True)
class AssocChangeNote:
    """SCTP_ASSOC_CHANGE (RFC 6458 §6.1.1); ``info`` holds the ABORT chunk, if any."""

    state: SacState
    error: int
    outbound_streams: int
    inbound_streams: int
    assoc_id: int
    info: bytes


@dataclass(frozen=True, slots=True)
class ShutdownNote:
    """SCTP_SHUTDOWN_EVENT (RFC 6458 §6.1.5): the peer sent SHUTDOWN; stop sending."""

    assoc_id: int


@dataclass(frozen=True, slots=True)
class RemoteErrorNote:
    """SCTP_REMOTE_ERROR (RFC 6458 §6.1.3): an ERROR chunk from the peer."""

    cause: int
    assoc_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class SendFailedNote:
    """SCTP_SEND_FAILED_EVENT (RFC 6458 §6.1.11): a message that will not be delivered."""

    sent: bool
    error: int
    stream: int
    ppid: int
    assoc_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class PartialDeliveryNote:
    """SCTP_PARTIAL_DELIVERY_EVENT (RFC 6458 §6.1.7): a message in delivery was lost."""

    indication: int
    assoc_id: int
    stream: int
    sequence: int


@dataclass(frozen=True, slots=True)
class OtherNote:
    """A notification this program did not subscribe to or does not use."""

    type: int


KernelNote = (AssocChangeNote | ShutdownNote | RemoteErrorNote | SendFailedNote
              | PartialDeliveryNote | OtherNote)

# Kernel-reported lengths are bounded by what recvmsg returned; this bounds the copies.
MAX_NOTIFICATION = 1 << 16


def decode_notification(data: bytes) -> KernelNote:
    """One whole notification, as recvmsg returned it with MSG_NOTIFICATION set."""
    sn_type, _flags, length = SN_HEADER.unpack(data)
    if not SN_HEADER.size <= length <= min(len(data), MAX_NOTIFICATION):
        raise MalformedPacket(f"notification length {length} does not fit {len(data)} bytes")
    body = data[:length]
    if sn_type == NotificationType.ASSOC_CHANGE:
        *_hdr, state, error, outs, ins, assoc_id = ASSOC_CHANGE.unpack(body)
        try:
            sac_state = SacState(state)
        except ValueError:
            raise MalformedPacket(f"unknown association state {state}") from None
        return AssocChangeNote(sac_state, error, outs, ins, assoc_id,
                               bytes(body[ASSOC_CHANGE.size:]))
    if sn_type == NotificationType.SHUTDOWN_EVENT:
        return ShutdownNote(SHUTDOWN_EVENT.unpack(body)[3])
    if sn_type == NotificationType.REMOTE_ERROR:
        *_hdr, cause, assoc_id = REMOTE_ERROR.unpack(body)
        return RemoteErrorNote(int.from_bytes(cause, "big"), assoc_id,
                               bytes(body[REMOTE_ERROR.size:]))
    if sn_type == NotificationType.SEND_FAILED_EVENT:
        _t, flags, _l, error, info, assoc_id = SEND_FAILED_EVENT.unpack(body)
        sid, _sflags, ppid, _context, _sassoc = SNDINFO.unpack(info)
        return SendFailedNote(flags == SsfFlag.DATA_SENT, error, sid, _ppid_field(ppid),
                              assoc_id, bytes(body[SEND_FAILED_EVENT.size:]))
    if sn_type == NotificationType.PARTIAL_DELIVERY_EVENT:
        *_hdr, indication, assoc_id, stream, seq = PDAPI_EVENT.unpack(body)
        return PartialDeliveryNote(indication, assoc_id, stream, seq)
    return OtherNote(sn_type)
