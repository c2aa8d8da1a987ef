"""What the TFTP request port accepts (pure): a datagram judged before any file or
socket is touched — a request to serve, a packet to ignore without an answer, or a
refusal with the ERROR code to send — and a request's file name as the root sees it.

Never answered: ERRORs (answering them lets two servers loop, RFC 1350 §7), broken ones
too.  Refused: other opcodes on the request port, malformed or over-long requests,
transfer modes other than octet and netascii (mail is obsolete), an empty name.
"""

from __future__ import annotations

from sockferry.errors import MalformedPacket, RemoteProtocolError
from sockferry.records import record
from sockferry.safe_text import clip
from sockferry.tftp.options import ServerLimits, TransferOptions, negotiate
from sockferry.tftp.packets import (
    MAX_REQUEST_BYTES,
    Error,
    ErrorCode,
    TransferRequest,
    decode_packet,
    opcode_of,
)

MODES = ("octet", "netascii")
_ERROR_OPCODE = b"\x00\x05"


class Refusal(Exception):
    """A request the server answers with ERROR and a log line."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@record
class Ignored:
    """A datagram to leave unanswered; ``why`` is for the log."""

    why: str


def judge(data: bytes, truncated: bool) -> TransferRequest | Ignored | Refusal:
    """A datagram that reached the request port (``truncated``: longer than read)."""
    try:
        if truncated:
            raise MalformedPacket(f"request longer than the RFC 2347 limit of "
                                  f"{MAX_REQUEST_BYTES} bytes")
        packet = decode_packet(data)
    except MalformedPacket as exc:
        if data[:2] == _ERROR_OPCODE:  # a broken ERROR is still never answered
            return Ignored(f"{exc}, not answered")
        return Refusal(ErrorCode(exc.code) if exc.code is not None
                       else ErrorCode.ILLEGAL_OPERATION, str(exc))
    if isinstance(packet, TransferRequest):
        return packet
    if isinstance(packet, Error):
        return Ignored("ERROR sent to the request port, not answered")
    return Refusal(ErrorCode.ILLEGAL_OPERATION,
                   f"{opcode_of(packet).name} sent to the request port")


def requested_path(request: TransferRequest) -> bytes:
    """The file a request names, relative to the root; Refusal for an unsupported mode
    or an empty name.  A leading '/' names the root, as tftpd-hpa's --secure mode has
    it: boot ROMs often ask for "/pxelinux.0" (nothing climbs out of the root either
    way: the root's sandbox judges the rest)."""
    if request.mode not in MODES:
        raise Refusal(ErrorCode.ILLEGAL_OPERATION,
                      f"transfer mode '{clip(request.mode)}' is not supported")
    path = request.filename.lstrip(b"/")
    if not path:
        raise Refusal(ErrorCode.FILE_NOT_FOUND, "no file name")
    return path


def agree_options(request: TransferRequest, *, file_size: int | None,
                  upload_limit: int | None, limits: ServerLimits,
                  ) -> tuple[TransferOptions, dict[str, str]]:
    """What the server agrees to for ``request`` and the OACK that says so (see
    ``options.negotiate``); Refusal (DISK_FULL) for an upload whose tsize is over
    ``upload_limit``.  ``file_size``: the size of the file a read serves; it is the
    RFC 2349 tsize only in octet mode, since netascii changes the size on the wire."""
    try:
        return negotiate(request.options, is_read=request.is_read,
                         file_size=file_size if request.mode == "octet" else None,
                         upload_limit=upload_limit, limits=limits)
    except RemoteProtocolError as exc:
        raise Refusal(ErrorCode(exc.code or 0), str(exc)) from exc
