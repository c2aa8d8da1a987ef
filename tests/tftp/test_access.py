"""tftp-serve --allow/--deny against a running server: a denied source is never
answered (no reflection), whatever it sends; allowed sources are served as before.

"Never answered" is checked by order, not by waiting: the denied datagram goes first,
then an allowed client's request; once that one is answered, anything the server had
sent to the denied socket would already be queued there."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest

from sockferry.access import AccessRules
from sockferry.tftp.packets import Data, Opcode, decode_packet, encode_error, encode_request
from sockferry.tftp.server import TftpServerConfig
from tests.tftp.udp_helpers import client_socket, server_thread


def socket_on(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.settimeout(3.0)
    return sock


@pytest.mark.parametrize("listen", ["127.0.0.1", ""])  # "": dual-stack, IPv4-mapped peers
def test_denied_sources_are_dropped_silently(tmp_path: Path, listen: str,
                                             caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "hello.txt").write_bytes(b"hello\n")
    rules = AccessRules.parse(["127.0.0.0/8"], ["127.0.0.2"])
    caplog.set_level(logging.INFO, "sockferry.tftp")
    with server_thread(TftpServerConfig(str(tmp_path), access=rules), listen) as (_, port), \
            socket_on("127.0.0.2") as denied, client_socket() as allowed:
        for datagram in (encode_request(Opcode.RRQ, b"hello.txt", "octet"),
                         b"\x00\x09garbage",  # would earn an ERROR from anyone else
                         encode_request(Opcode.WRQ, b"x", "octet")):
            denied.sendto(datagram, ("127.0.0.1", port))
        allowed.sendto(encode_request(Opcode.RRQ, b"hello.txt", "octet"), ("127.0.0.1", port))
        data, tid = allowed.recvfrom(70000)
        assert decode_packet(data) == Data(1, b"hello\n")
        allowed.sendto(encode_error(0, "enough"), tid)
        denied.setblocking(False)
        with pytest.raises(BlockingIOError):
            denied.recvfrom(70000)
    dropped = [r.getMessage() for r in caplog.records if "not allowed" in r.getMessage()]
    assert len(dropped) == 3
    assert all(line.startswith("127.0.0.2:") or line.startswith("[::ffff:127.0.0.2]:")
               for line in dropped)
    assert all(line.endswith("dropped: not allowed by --allow/--deny") for line in dropped)
