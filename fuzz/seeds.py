"""Seed corpus from real encodings: ``python fuzz/seeds.py`` writes fuzz/corpus/<target>/.

Every seed is made by the project's own encoders (or laid out as the kernel lays its
structures out), so the fuzzer starts from inputs the decoders really see.
"""

from __future__ import annotations

import hashlib
import struct
import sys
from pathlib import Path

from sockferry.entries import Entry, Kind
from sockferry.ferry import codec
from sockferry.ferry import messages as m
from sockferry.ferry.sctp_framing import FrameSender
from sockferry.sctp import chunks as c
from sockferry.sctp import linux_abi as abi
from sockferry.tftp import packets as t

CORPUS = Path(__file__).resolve().parent / "corpus"
DIGEST = b"\x11" * m.DIGEST_BYTES
NONCE = b"\x22" * m.NONCE_BYTES


def _client_stream() -> bytes:
    body = b"hello, world\n"
    return b"".join([
        codec.encode(m.Hello(1, 1, int(m.ALL_FEATURES), NONCE)),
        codec.encode(m.Auth(b"\x33" * m.PROOF_BYTES)),
        codec.encode(m.Put(1, "dir/file.txt", len(body), 0o644, 1_700_000_000_000_000_000)),
        codec.data_header(1, len(body)), body,
        codec.encode(m.Done(1, DIGEST)),
        codec.encode_put_inline(2, "small", 0o600, 0, b"tiny", DIGEST),
        codec.encode(m.Get(3, "dir/file.txt")),
        codec.encode(m.Get(4, "big", 10, DIGEST)),
        codec.encode(m.ListDir(5, "dir", m.ListFlag.RECURSIVE)),
        codec.encode(m.Stat(6, "dir")),
        codec.encode(m.Mkdir(7, "new/dir", 0o755)),
        codec.encode(m.Partial(8, "part")),
        codec.encode(m.PutAt(9, "part", 4, 10, 0o644, 0)),
        codec.encode(m.Hole(9, 6)),
        codec.encode(m.Cancel(3)),
        codec.encode(m.Put(10, "stream", 0, 0o644, 0, m.PutFlag.STREAMED)),
        codec.data_header(10, 3), b"abc",
        codec.encode(m.Done(10, DIGEST)),
        codec.encode(m.Delete(11, "old", True)),
        codec.encode(m.Checksum(12, "dir/file.txt")),
        codec.encode(m.Symlink(13, "dir/link", "../small")),
        codec.encode(m.Readlink(14, "dir/link")),
        codec.encode(m.QuickCheck(15, "dir", ((m.QUICK_FILE, 13, 1_700_000_000_000_000_000,
                                               "file.txt"), (m.QUICK_DIRECTORY, 0, 0, "sub")))),
    ])


def _server_stream() -> bytes:
    entry = Entry("dir/file.txt", Kind.FILE, 0o644, 13, 1_700_000_000_000_000_000)
    return b"".join([
        codec.encode(m.HelloReply(1, int(m.ALL_FEATURES), 256, NONCE, "sockferry",
                              b"\x44" * m.PROOF_BYTES)),
        codec.encode(m.Ok(7)),
        codec.encode(m.FileHeader(3, 13, 0o644, 0)),
        codec.data_header(3, 13), b"hello, world\n",
        codec.encode(m.Done(3, DIGEST)),
        codec.encode(m.Entries(5, (entry,), True)),
        codec.encode(m.Committed(1, 13, DIGEST)),
        codec.encode(m.Prefix(8, 4, DIGEST)),
        codec.encode(m.Sum(12, 13, DIGEST)),
        codec.encode(m.Link(14, "../small")),
        codec.encode(m.Same(15, 2, b"\x01")),
        codec.encode(m.Error(0, m.ErrorCode.BUSY, "server busy")),
    ])


def ferry_frames() -> list[bytes]:
    streams = [_client_stream(), _server_stream()]
    return [bytes([cut]) + stream for stream in streams for cut in (0, 7, 33)]


def ferry_sctp_framing() -> list[bytes]:
    seeds = []
    for stream_bytes in (_client_stream(), _server_stream()):
        sender = FrameSender(client=True, streams=4)
        pieces = sender.feed(stream_bytes) + sender.end()
        seed = b"".join(struct.pack("!HBH", p.stream, 1 if p.ppid != pieces[0].ppid else 0,
                                    len(p.data)) + p.data for p in pieces)
        seeds.append(seed)
    return seeds


def tftp_packets() -> list[bytes]:
    return [
        t.encode_request(t.Opcode.RRQ, b"pxelinux.0", "octet"),
        t.encode_request(t.Opcode.RRQ, b"/boot/file", "netascii",
                         {"blksize": "1468", "tsize": "0", "timeout": "3",
                          "windowsize": "16"}),
        t.encode_request(t.Opcode.WRQ, b"upload.bin", "octet", {"tsize": "1048576"}),
        t.encode_data(1, b"x" * 512),
        t.encode_data(2, b"line\r\nnext\r\0"),
        t.encode_ack(7),
        t.encode_error(1, "File not found"),
        t.encode_oack({"blksize": "1468", "tsize": "4096", "windowsize": "16"}),
    ]


def sctp_packets() -> list[bytes]:
    init_params = (c.Param(0x0005, bytes([127, 0, 0, 1])), c.Param(0xC000, b""))
    chunk_sets = [
        [c.InitChunk(0x1234, 65536, 10, 10, 1, init_params)],
        [c.InitAckChunk(0x5678, 65536, 10, 10, 9, (c.Param(0x0007, b"cookie" * 8),))],
        [c.CookieEchoChunk(b"cookie" * 8)],
        [c.CookieAckChunk(), c.DataChunk(1, 0, 0, 51, b"first message")],
        [c.SackChunk(5, 65536, ((2, 3),), (4,))],
        [c.HeartbeatChunk(b"\x00\x01\x00\x0cinfo"), c.HeartbeatAckChunk(b"\x00\x01\x00\x0cinfo")],
        [c.AbortChunk((c.Cause(12, b"bye"),), reflected=True)],
        [c.ErrorChunk((c.Cause(1, b"\x00\x05\x00\x00"),))],
        [c.ShutdownChunk(99), c.ShutdownAckChunk(), c.ShutdownCompleteChunk()],
        [c.DataChunk(2, 1, 0, 0, b"a" * 100, unordered=True, end=False),
         c.DataChunk(3, 1, 0, 0, b"b" * 3, beginning=False)],
    ]
    return [c.encode_packet(9899, 9899, 0xCAFE, [c.encode_chunk(x) for x in chunk_set])
            for chunk_set in chunk_sets]


def _assoc_change(state: abi.SacState, info: bytes = b"") -> bytes:
    return abi.ASSOC_CHANGE.pack(abi.NotificationType.ASSOC_CHANGE, 0,
                                 abi.ASSOC_CHANGE.size + len(info), state, 0, 10, 10, 7) + info


def kernel_notifications() -> list[bytes]:
    cause = struct.pack("!HH", 12, 7) + b"bye\0"
    sndinfo = abi.SNDINFO.pack(3, 0, 51, 0, 7)
    return [
        _assoc_change(abi.SacState.COMM_UP),
        _assoc_change(abi.SacState.COMM_LOST, cause),
        _assoc_change(abi.SacState.SHUTDOWN_COMP),
        abi.SHUTDOWN_EVENT.pack(abi.NotificationType.SHUTDOWN_EVENT, 0,
                                abi.SHUTDOWN_EVENT.size, 7),
        abi.REMOTE_ERROR.pack(abi.NotificationType.REMOTE_ERROR, 0,
                              abi.REMOTE_ERROR.size + 4, b"\x00\x01", 7) + b"\x00\x05\x00\x00",
        abi.SEND_FAILED_EVENT.pack(abi.NotificationType.SEND_FAILED_EVENT, 1,
                                   abi.SEND_FAILED_EVENT.size + 5, 0, sndinfo, 7) + b"lost!",
        abi.PDAPI_EVENT.pack(abi.NotificationType.PARTIAL_DELIVERY_EVENT, 0,
                             abi.PDAPI_EVENT.size, 0, 7, 2, 5),
        abi.SN_HEADER.pack(abi.NotificationType.SENDER_DRY_EVENT, 0, abi.SN_HEADER.size),
    ]


SEEDS = {
    "ferry_frames": ferry_frames,
    "ferry_sctp_framing": ferry_sctp_framing,
    "tftp_packets": tftp_packets,
    "sctp_packets": sctp_packets,
    "kernel_notifications": kernel_notifications,
}


def main() -> int:
    for target, make in SEEDS.items():
        folder = CORPUS / target
        folder.mkdir(parents=True, exist_ok=True)
        for seed in make():
            (folder / hashlib.sha1(seed).hexdigest()).write_bytes(seed)  # noqa: S324
    return 0


if __name__ == "__main__":
    sys.exit(main())
