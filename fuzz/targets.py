"""One fuzz target per decoder of bytes a peer (or the kernel) sends.

Each target takes arbitrary bytes, runs them through a decoder the way the drivers do,
and lets out only that decoder's malformed-input error (``ALLOWED``): any other
exception is a finding.  The same functions run under atheris (``fuzz/run``) and over
the seed corpus in the test suite (``tests/test_fuzz_targets.py``), so they cannot rot.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable

from sockferry.errors import MalformedPacket, RemoteProtocolError
from sockferry.ferry import messages as m
from sockferry.ferry.parser import FrameParser
from sockferry.ferry.sctp_framing import END_PPID, FRAME_PPID, FrameReceiver
from sockferry.sctp import chunks
from sockferry.sctp import linux_abi as abi
from sockferry.sctp.kernel_events import KernelEvents, abort_causes
from sockferry.tftp import netascii
from sockferry.tftp import options as tftp_options
from sockferry.tftp import packets as tftp

Target = Callable[[bytes], None]


def ferry_frames(data: bytes) -> None:
    """FrameParser: the stream fed whole, then again cut at a point the input chooses
    (the parser must decode the same frames however the bytes arrive)."""
    if not data:
        return
    cut = data[0] % len(data)
    whole = _parse([data[1:]])
    pieces = _parse([data[1 : 1 + cut], data[1 + cut :]])
    assert whole == pieces, (whole, pieces)


def _parse(pieces: list[bytes]) -> list[object] | str:
    parser = FrameParser()
    out: list[object] = []
    try:
        for piece in pieces:
            for message in parser.feed(piece):
                out.append(_plain(message))
    except MalformedPacket:
        out.append("malformed")
    return _merge_chunks(out)


def _plain(message: object) -> object:
    if isinstance(message, m.BodyPiece):
        return ("chunk", message.request, bytes(message.data))
    return message


def _merge_chunks(out: list[object]) -> list[object]:
    """DATA bodies come out in as many pieces as were fed: join neighbours."""
    merged: list[object] = []
    for item in out:
        if (isinstance(item, tuple) and merged and isinstance(merged[-1], tuple)
                and merged[-1][1] == item[1]):
            merged[-1] = ("chunk", item[1], merged[-1][2] + item[2])
        else:
            merged.append(item)
    return merged


def tftp_packets(data: bytes) -> None:
    """A datagram as the server and client read it: decode, then negotiate a request's
    options (server) or check an OACK against a request (client)."""
    try:
        packet = tftp.decode_packet(data)
    except MalformedPacket:
        return
    if isinstance(packet, tftp.TransferRequest):
        packet.filename.decode("utf-8", "surrogateescape")
        with contextlib.suppress(RemoteProtocolError):  # a refusal, sent back as ERROR
            tftp_options.negotiate(packet.options, is_read=packet.is_read,
                                   file_size=len(data), upload_limit=1 << 20,
                                   limits=tftp_options.ServerLimits())
    elif isinstance(packet, tftp.OptionAck):
        asked = {"blksize": "1468", "windowsize": "16", "timeout": "3", "tsize": "0"}
        with contextlib.suppress(RemoteProtocolError):
            tftp_options.accept_oack(asked, packet.options)
    elif isinstance(packet, tftp.Data):
        netascii.Decoder().feed(packet.payload)
    tftp.encode_packet(packet)  # what was decoded can be encoded again


def sctp_packets(data: bytes) -> None:
    """An SCTP packet from UDP: the common header and chunks, and the error causes of
    ABORT and ERROR in words (they go into logs and reasons)."""
    chunks.checksum_ok(data)
    try:
        packet = chunks.decode_packet(data)
    except MalformedPacket:
        return
    for chunk in packet.chunks:
        if isinstance(chunk, chunks.AbortChunk | chunks.ErrorChunk):
            chunks.cause_text(chunk.causes)


ASSOC_PEER = ("::ffff:127.0.0.1", 5000, 0, 0)


def kernel_notifications(data: bytes) -> None:
    """recvmsg results of a kernel SCTP socket: a notification decoded on its own, then
    the bytes fed to ``KernelEvents`` as notification pieces, a message with
    SCTP_RCVINFO, and an ABORT's causes; ``KernelEvents`` must swallow what it cannot
    read (it logs it), so nothing may come out of it at all."""
    with contextlib.suppress(MalformedPacket):
        abi.decode_notification(data)
    events = KernelEvents(1 << 16)
    cut = data[0] % (len(data) + 1) if data else 0
    events.receive(data[:cut], [], abi.MSG_NOTIFICATION, ASSOC_PEER)
    events.receive(data[cut:], [], abi.MSG_NOTIFICATION | abi.MSG_EOR, ASSOC_PEER)
    events.receive(data, [(abi.IPPROTO_SCTP, abi.CmsgType.RCVINFO, data[:abi.RCVINFO.size])],
                   abi.MSG_EOR, ASSOC_PEER)
    abort_causes(data)
    with contextlib.suppress(MalformedPacket):
        abi.decode_getaddrs(data)


_MESSAGE = struct.Struct("!HBH")  # stream, ppid selector, length of the next message


def ferry_sctp_framing(data: bytes) -> None:
    """Ferry over SCTP: a sequence of (stream, ppid, message) cut from the input goes
    into the server's FrameReceiver, and the frames it hands on into FrameParser."""
    receiver = FrameReceiver(server=True, streams=4)
    parser = FrameParser()
    ppids = (FRAME_PPID, END_PPID, 0)  # a frame, the end, anything else
    position = 0
    try:
        while position + _MESSAGE.size <= len(data):
            stream, which, length = _MESSAGE.unpack_from(data, position)
            position += _MESSAGE.size
            message = data[position : position + length]
            position += length
            receiver.receive(stream % 5, ppids[which % 3], message)
            for frame in receiver.take():
                for _ in parser.feed(frame):
                    pass
    except RemoteProtocolError:  # MalformedPacket included
        pass


TARGETS: dict[str, Target] = {
    "ferry_frames": ferry_frames,
    "tftp_packets": tftp_packets,
    "sctp_packets": sctp_packets,
    "kernel_notifications": kernel_notifications,
    "ferry_sctp_framing": ferry_sctp_framing,
}
