"""tftp/accept.py directly: the request port's judgement of a datagram, before any file
or socket is touched (the server's behaviour on the wire is tests/tftp/test_server.py)."""

from __future__ import annotations

import pytest

from sockferry.tftp.accept import Ignored, Refusal, agree_options, judge, requested_path
from sockferry.tftp.options import ServerLimits
from sockferry.tftp.packets import ErrorCode, Opcode, TransferRequest, encode_ack, encode_error


def _request(name: bytes, mode: bytes = b"octet", opcode: bytes = b"\x00\x01") -> bytes:
    return opcode + name + b"\0" + mode + b"\0"


def test_requests_are_served_and_errors_never_answered() -> None:
    judged = judge(_request(b"/pxelinux.0"), truncated=False)
    assert isinstance(judged, TransferRequest) and judged.is_read
    assert requested_path(judged) == b"pxelinux.0"  # a leading '/' names the root
    assert isinstance(judge(encode_error(ErrorCode.NOT_DEFINED, "x"), False), Ignored)
    assert isinstance(judge(b"\x00\x05\x00", False), Ignored)  # a broken ERROR too


@pytest.mark.parametrize(("data", "truncated", "code"), [
    (encode_ack(1), False, ErrorCode.ILLEGAL_OPERATION),  # an ACK on the request port
    (b"\x00\x01no-terminator", False, ErrorCode.ILLEGAL_OPERATION),
    (_request(b"a"), True, ErrorCode.ILLEGAL_OPERATION),  # over the RFC 2347 limit
    (b"\x00\x09", False, ErrorCode.ILLEGAL_OPERATION),  # no such opcode
])
def test_what_is_refused(data: bytes, truncated: bool, code: ErrorCode) -> None:
    judged = judge(data, truncated)
    assert isinstance(judged, Refusal) and judged.code == code, judged


def test_modes_and_names() -> None:
    mail = judge(_request(b"f", b"mail"), False)
    assert isinstance(mail, TransferRequest)
    with pytest.raises(Refusal, match="mode 'mail' is not supported"):
        requested_path(mail)
    empty = judge(_request(b"/"), False)
    assert isinstance(empty, TransferRequest)
    with pytest.raises(Refusal) as refused:
        requested_path(empty)
    assert refused.value.code == ErrorCode.FILE_NOT_FOUND
    netascii = judge(_request(b"a/b.txt", b"netascii", b"\x00\x02"), False)
    assert isinstance(netascii, TransferRequest) and not netascii.is_read
    assert requested_path(netascii) == b"a/b.txt"


def test_agree_options_answers_tsize_only_in_octet_mode() -> None:
    asked = {"tsize": "0", "blksize": "1468"}
    octet = TransferRequest(Opcode.RRQ, b"f", "octet", dict(asked))
    options, oack = agree_options(octet, file_size=1000, upload_limit=None,
                                  limits=ServerLimits(blksize_max=1024))
    assert oack == {"tsize": "1000", "blksize": "1024"}
    assert options.tsize == 1000 and options.blksize == 1024
    # netascii changes the size on the wire: no tsize in the OACK
    ascii_read = TransferRequest(Opcode.RRQ, b"f", "netascii", dict(asked))
    _, oack = agree_options(ascii_read, file_size=1000, upload_limit=None,
                            limits=ServerLimits())
    assert oack == {"blksize": "1468"}


def test_agree_options_refuses_an_upload_over_the_limit() -> None:
    upload = TransferRequest(Opcode.WRQ, b"f", "octet", {"tsize": "5000"})
    with pytest.raises(Refusal) as info:
        agree_options(upload, file_size=None, upload_limit=4096, limits=ServerLimits())
    assert info.value.code is ErrorCode.DISK_FULL
    _, oack = agree_options(upload, file_size=None, upload_limit=5000,
                            limits=ServerLimits())
    assert oack == {"tsize": "5000"}
