"""TFTP that cannot be turned into a weapon, against a running server on loopback.

- an ERROR is never answered, on the request port or on a transfer's port, so two TFTP
  hosts cannot be set to answer each other's errors for ever (CVE-2024-2169, "Loop DoS");
- other stray packets on the request port get rate-limited answers;
- a flood of requests from sources that never acknowledge (127.0.0.2 to .17: every
  127/8 address routes on Linux loopback) gets at most 3x the bytes it sent, holds few
  slots, and does not stop a real client;
- option values at every edge are answered per RFC 2348/2349/7440 or refused with
  ERROR 8, and the server keeps serving.

"Nothing answered" is checked by order, not by waiting: the same socket then sends a
request, and the first datagram to come back must be that request's answer.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sockferry.tftp.packets import (
    Ack,
    Data,
    Error,
    ErrorCode,
    Opcode,
    OptionAck,
    Packet,
    decode_packet,
    encode_ack,
    encode_data,
    encode_error,
    encode_request,
)
from sockferry.tftp.server import TftpServerConfig
from tests.conftest import require_program
from tests.tftp.udp_helpers import client_socket, server_thread

HELLO = b"hello\n"
BIG = 2_000_000


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("tftp-hardening")
    (base / "hello.txt").write_bytes(HELLO)
    (base / "big.bin").write_bytes(os.urandom(BIG))
    return base


@pytest.fixture(scope="module")
def server(root: Path) -> Iterator[int]:
    # Generous limits: these tests are about what is answered, not about how often.
    with server_thread(TftpServerConfig(str(root), error_rate=1_000_000,
                                    max_unconfirmed_per_source=64)) as (_, port):
        yield port


def rrq(name: bytes, options: dict[str, str] | None = None) -> bytes:
    return encode_request(Opcode.RRQ, name, "octet", options)


def first_answer_to_a_probe(sock: socket.socket, port: int) -> Packet:
    """Send a valid request and return the first datagram that comes back (ending the
    transfer it started)."""
    sock.sendto(rrq(b"hello.txt"), ("127.0.0.1", port))
    data, source = sock.recvfrom(70000)
    packet = decode_packet(data)
    if isinstance(packet, Data):
        sock.sendto(encode_error(0, "enough"), source)
    return packet


def ask(port: int, data: bytes) -> Packet:
    with client_socket() as sock:
        sock.sendto(data, ("127.0.0.1", port))
        reply, source = sock.recvfrom(70000)
        packet = decode_packet(reply)
        if not isinstance(packet, Error):
            sock.sendto(encode_error(0, "enough"), source)
        return packet


@pytest.mark.parametrize("error", [
    encode_error(ErrorCode.NOT_DEFINED, "hello?"),
    encode_error(ErrorCode.UNKNOWN_TID, "unknown transfer ID"),
    b"\x00\x05",          # too short to be a proper ERROR: still never answered
    b"\x00\x05\x00",
])
def test_an_error_to_the_request_port_is_never_answered(server: int, error: bytes) -> None:
    with client_socket() as sock:
        sock.sendto(error, ("127.0.0.1", server))
        assert first_answer_to_a_probe(sock, server) == Data(1, HELLO)


def test_an_error_from_a_stranger_to_a_transfer_port_is_never_answered(server: int) -> None:
    with client_socket() as owner, client_socket() as stranger:
        owner.sendto(rrq(b"big.bin"), ("127.0.0.1", server))
        data, tid = owner.recvfrom(70000)
        assert isinstance(decode_packet(data), Data)
        stranger.sendto(encode_error(0, "not mine"), tid)
        stranger.sendto(encode_ack(1), tid)  # this one earns an ERROR 5
        reply, _ = stranger.recvfrom(1000)
        assert decode_packet(reply) == Error(ErrorCode.UNKNOWN_TID, "unknown transfer ID")
        owner.sendto(encode_error(0, "enough"), tid)


def test_two_servers_cannot_be_set_against_each_other(root: Path) -> None:
    """A relay plays the forged source: what server A answers goes to server B's
    request port, and B's answer (if any) back to A's; the exchange must die at once."""
    config = TftpServerConfig(str(root))
    with server_thread(config) as (_, port_a), server_thread(config) as (_, port_b), \
            client_socket() as to_a, client_socket() as to_b:
        to_a.sendto(encode_data(1, b"stray"), ("127.0.0.1", port_a))
        answer, _ = to_a.recvfrom(1000)  # A's one rate-limited answer: an ERROR 4
        assert isinstance(decode_packet(answer), Error)
        to_b.sendto(answer, ("127.0.0.1", port_b))  # "from A's port", as a forger would
        # B never answers an ERROR: the first thing back on to_b answers the probe.
        assert first_answer_to_a_probe(to_b, port_b) == Data(1, HELLO)


def test_stray_packets_on_the_request_port_get_rate_limited_answers(root: Path) -> None:
    config = TftpServerConfig(str(root), error_rate=50)  # one source: 5 a second
    with server_thread(config) as (_, port), client_socket(timeout_s=0.5) as sock:
        started = time.monotonic()
        for i in range(200):
            sock.sendto(encode_ack(i) if i % 2 else encode_data(i, b"x"), ("127.0.0.1", port))
        answers = 0
        for _ in range(200):
            try:
                sock.recvfrom(1000)
            except TimeoutError:
                break
            answers += 1
        elapsed = time.monotonic() - started
    # A burst of 5, then 5 a second: 200 strays earn a handful of answers.
    assert 1 <= answers <= 5 + 5 * elapsed + 1, (answers, elapsed)


class Flood:
    """Requests for big.bin from ``sources`` addresses, ``per_source`` sockets each,
    never acknowledged."""

    def __init__(self, port: int, options: dict[str, str] | None, *, sources: int = 16,
                 per_source: int = 16) -> None:
        self.socks: list[socket.socket] = []
        self.sent = self.received = 0
        self.tids: dict[str, set[int]] = {}  # answering TIDs per source address
        request = rrq(b"big.bin", options)
        for host in range(2, 2 + sources):
            for _ in range(per_source):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                self.socks.append(sock)
                sock.bind((f"127.0.0.{host}", 0))
                sock.setblocking(False)
                sock.sendto(request, ("127.0.0.1", port))
                self.sent += len(request)

    def listen(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:  # bounded: a fixed time, then count
            for sock in self.socks:
                for _ in range(100):
                    try:
                        data, source = sock.recvfrom(70000)
                    except BlockingIOError:
                        break
                    self.received += len(data)
                    self.tids.setdefault(sock.getsockname()[0], set()).add(source[1])
            time.sleep(0.01)

    def close(self) -> None:
        for sock in self.socks:
            sock.close()


@pytest.mark.parametrize("options", [{"blksize": "1468", "tsize": "0"}, None],
                         ids=["with-options", "plain-rfc1350"])
def test_a_forged_flood_is_not_amplified_and_a_real_client_gets_through(
        root: Path, tmp_path: Path, options: dict[str, str] | None) -> None:
    curl = require_program("curl")
    config = TftpServerConfig(str(root), unconfirmed_s=2.0)
    with server_thread(config) as (server, port):
        flood = Flood(port, options)  # first, so that it holds its slots meanwhile
        out = tmp_path / "big.out"
        download = subprocess.Popen([curl, "-s", "--tftp-blksize", "1468", "-o", str(out),
                                     f"tftp://127.0.0.1:{port}/big.bin"])
        try:
            flood.listen(3.0)  # past the 2 s expiry of every forged transfer
            assert download.wait(60) == 0
        finally:
            download.kill()
            download.wait()
            flood.close()
        assert out.read_bytes() == (root / "big.bin").read_bytes()
        deadline = time.monotonic() + 10
        while server.active_transfers and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.active_transfers == 0  # every forged transfer expired
    admitted = sum(len(ports) for ports in flood.tids.values())
    factor = flood.received / flood.sent
    per_transfer = flood.received / admitted / len(rrq(b"big.bin", options))
    print(f"\n{options or 'no options'}: {flood.sent} bytes of requests drew "
          f"{flood.received} bytes (factor {factor:.2f}); {admitted} transfers admitted, "
          f"each sent {per_transfer:.2f}x its request")
    # At most 4 transfers per source were admitted (the rest got no answer at all).
    assert all(len(ports) <= 4 for ports in flood.tids.values()), flood.tids
    if options:
        assert factor <= 3.0 and per_transfer <= 3.0  # RFC 9000 §8's limit
    else:
        # RFC 1350 has no handshake: a request without options is answered with DATA 1
        # (516 bytes here) once, and never repeated toward a peer that never answered.
        assert flood.received == admitted * (512 + 4), flood.received


@pytest.mark.parametrize(("options", "expected"), [
    ({"blksize": "7"}, None),                               # below RFC 2348's range: ignored
    ({"blksize": "8"}, OptionAck({"blksize": "8"})),
    ({"blksize": "65464"}, OptionAck({"blksize": "65464"})),
    ({"blksize": "65465"}, OptionAck({"blksize": "65464"})),  # the server may answer less
    ({"windowsize": "0"}, None),                            # RFC 7440: 1 to 65535
    ({"windowsize": "1"}, OptionAck({"windowsize": "1"})),
    ({"windowsize": "65535"}, OptionAck({"windowsize": "64"})),  # --windowsize-max
    ({"windowsize": "65536"}, OptionAck({"windowsize": "64"})),
    ({"timeout": "0"}, None),                               # RFC 2349: 1 to 255
    ({"timeout": "1"}, OptionAck({"timeout": "1"})),
    ({"timeout": "255"}, OptionAck({"timeout": "255"})),
    ({"timeout": "256"}, None),
    ({"tsize": "9" * 20}, OptionAck({"tsize": "6"})),       # a reader's tsize is answered
    ({"tsize": "9" * 21}, None),                            # no number: ignored
    ({"blksize": "abc"}, None),
    ({"blksize": "-1"}, None),
    ({"blksize": "1e3"}, None),
])
def test_option_edges(server: int, options: dict[str, str],
                      expected: OptionAck | None) -> None:
    assert ask(server, rrq(b"hello.txt", options)) == (expected or Data(1, HELLO))
    assert ask(server, rrq(b"hello.txt")) == Data(1, HELLO)  # and it keeps serving


def test_a_duplicated_option_is_refused_with_error_8(server: int) -> None:
    request = (b"\x00\x01hello.txt\x00octet\x00blksize\x00512\x00BLKSIZE\x001024\x00")
    reply = ask(server, request)
    assert isinstance(reply, Error) and reply.code == ErrorCode.OPTION_REFUSED
    assert ask(server, rrq(b"hello.txt")) == Data(1, HELLO)


def test_an_upload_of_a_huge_tsize_is_refused_cleanly(tmp_path: Path) -> None:
    from sockferry.tftp.server import UploadPolicy  # noqa: PLC0415

    config = TftpServerConfig(str(tmp_path), allow_upload=UploadPolicy.CREATE)
    with server_thread(config) as (_, port):
        reply = ask(port, encode_request(Opcode.WRQ, b"new", "octet",
                                         {"tsize": "9" * 20}))
        assert isinstance(reply, Error) and reply.code == ErrorCode.DISK_FULL
        assert isinstance(ask(port, encode_request(Opcode.WRQ, b"new", "octet")), Ack)


