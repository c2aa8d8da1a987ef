"""The running server against hostile and careless clients: raw datagrams on loopback."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sockferry.storage.names import TEMP_PREFIX, TEMP_SUFFIX
from sockferry.tftp.options import ServerLimits
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
    encode_request,
)
from sockferry.tftp.server import TftpServerConfig, UploadPolicy
from tests.conftest import require_program, wait_until
from tests.tftp.udp_helpers import client_socket, server_thread

SECRET = b"top secret, outside the root"


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("tftp-server")
    (base / "secret").write_bytes(SECRET)
    root = base / "root"
    root.mkdir()
    (root / "hello.txt").write_bytes(b"hello\n")
    (root / "big.bin").write_bytes(os.urandom(8_000_000))
    (root / "dir").mkdir()
    (root / "dir" / "inner.txt").write_bytes(b"inner")
    os.symlink("../secret", root / "link_out")
    os.symlink("/dev/zero", root / "device")
    os.symlink("dir/inner.txt", root / "link_in")
    os.mkfifo(root / "fifo")
    return root


@pytest.fixture(scope="module")
def server(tree: Path) -> Iterator[int]:
    # Every test here talks from 127.0.0.1: the request port's ERROR rate limit and the
    # cap on unconfirmed transfers are set out of the way (test_hardening.py checks them).
    with server_thread(TftpServerConfig(str(tree), max_per_peer=64, error_rate=1_000_000,
                                    max_unconfirmed_per_source=64)) as (_, port):
        yield port


def ask(port: int, data: bytes, sock: socket.socket | None = None,
        ) -> tuple[Packet, tuple[str, int]]:
    """Send one datagram to the request port and read the answer.  A transfer that
    starts is ended with an ERROR (as a client that changed its mind would) unless the
    caller passed its own socket to go on with it."""
    own = sock is None
    sock = sock or client_socket()
    try:
        sock.sendto(data, ("127.0.0.1", port))
        reply, source = sock.recvfrom(70000)
        packet = decode_packet(reply)
        if own and not isinstance(packet, Error):
            sock.sendto(b"\x00\x05\x00\x00enough\x00", source)
        return packet, source
    finally:
        if own:
            sock.close()


def rrq(name: bytes, mode: str = "octet", options: dict[str, str] | None = None) -> bytes:
    return encode_request(Opcode.RRQ, name, mode, options)


def test_a_plain_read_works(server: int) -> None:
    reply, source = ask(server, rrq(b"hello.txt"))
    assert reply == Data(1, b"hello\n")
    assert source[1] != server, "a transfer answers from its own port (TID)"


@pytest.mark.parametrize("name", [
    b"../secret", b"../../../../etc/passwd", b"dir/../../secret", b"link_out",
    b"/../secret", b"dir/../link_out", b"device", b"dir", b"fifo", b"nonexistent",
    b"/etc/passwd", b".sockferry-0123456789abcdef.part", b"\xff\xfe", b"a" * 300,
])
def test_hostile_names_get_an_error_and_nothing_else(server: int, name: bytes) -> None:
    reply, _ = ask(server, rrq(name))
    assert isinstance(reply, Error), reply
    assert reply.code in (ErrorCode.FILE_NOT_FOUND, ErrorCode.ACCESS_VIOLATION)


def test_links_inside_the_root_and_a_leading_slash_are_fine(server: int) -> None:
    assert ask(server, rrq(b"link_in"))[0] == Data(1, b"inner")
    assert ask(server, rrq(b"/hello.txt"))[0] == Data(1, b"hello\n")


def test_uploads_are_refused_unless_allowed(server: int) -> None:
    reply, _ = ask(server, encode_request(Opcode.WRQ, b"new.txt", "octet"))
    assert reply == Error(ErrorCode.ACCESS_VIOLATION, "uploads are not allowed here")


@pytest.mark.parametrize(("data", "code"), [
    (b"", ErrorCode.ILLEGAL_OPERATION),
    (b"\x00", ErrorCode.ILLEGAL_OPERATION),
    (b"\x00\x01hello.txt", ErrorCode.ILLEGAL_OPERATION),          # no NUL after the name
    (b"\x00\x01hello.txt\x00octet", ErrorCode.ILLEGAL_OPERATION),  # no NUL after the mode
    (b"\x00\x09whatever", ErrorCode.ILLEGAL_OPERATION),
    (encode_ack(1), ErrorCode.ILLEGAL_OPERATION),
    (b"\x00\x01hello.txt\x00mail\x00", ErrorCode.ILLEGAL_OPERATION),
    (b"\x00\x01" + b"x" * 2000 + b"\x00octet\x00", ErrorCode.ILLEGAL_OPERATION),
    (b"\x00\x01hello.txt\x00octet\x00blksize\x00512\x00blksize\x00512\x00",
     ErrorCode.OPTION_REFUSED),  # RFC 2347: a failed negotiation
])
def test_malformed_requests_get_an_error(server: int, data: bytes, code: int) -> None:
    reply, _ = ask(server, data)
    assert isinstance(reply, Error) and reply.code == code


@pytest.mark.parametrize(("options", "expected"), [
    ({"blksize": "0"}, None),
    ({"blksize": "99999999"}, OptionAck({"blksize": "65464"})),
    ({"blksize": "9" * 100}, None),
    ({"windowsize": "0"}, None),
    ({"windowsize": "65535"}, OptionAck({"windowsize": "64"})),
    ({"timeout": "1000"}, None),
    ({"tsize": "-1"}, None),
    ({"tsize": "0"}, OptionAck({"tsize": "6"})),
    ({"x" * 200: "y" * 200}, None),
    ({"multicast": "1"}, None),
])
def test_option_abuse_gets_sane_values(server: int, options: dict[str, str],
                                       expected: OptionAck | None) -> None:
    reply, _ = ask(server, rrq(b"hello.txt", options=options))
    assert reply == (expected or Data(1, b"hello\n"))


def test_wrong_tid_gets_error_5_and_the_transfer_goes_on(server: int) -> None:
    with client_socket() as owner, client_socket() as stranger:
        reply, tid = ask(server, rrq(b"big.bin"), owner)
        assert isinstance(reply, Data) and reply.block == 1
        stranger.sendto(encode_ack(1), tid)
        answer, source = stranger.recvfrom(1000)
        assert decode_packet(answer) == Error(ErrorCode.UNKNOWN_TID, "unknown transfer ID")
        assert source == tid
        owner.sendto(encode_ack(1), tid)
        reply2, _ = owner.recvfrom(70000)
        assert decode_packet(reply2) == Data(2, reply2[4:]) and len(reply2) == 516
        owner.sendto(b"\x00\x05\x00\x00stop\x00", tid)  # end it politely


def test_a_repeated_request_starts_one_transfer(server: int) -> None:
    with client_socket() as sock:
        sock.sendto(rrq(b"hello.txt"), ("127.0.0.1", server))
        sock.sendto(rrq(b"hello.txt"), ("127.0.0.1", server))
        first, tid = sock.recvfrom(1000)
        assert decode_packet(first) == Data(1, b"hello\n")
        sock.settimeout(0.3)
        # The repeat may earn DATA 1 once more (an unconfirmed transfer answers a repeated
        # request), but only from the same transfer's port: no second transfer.
        repeats = 0
        with pytest.raises(TimeoutError):
            for _ in range(3):  # bounded: at most one repeat is expected
                again, source = sock.recvfrom(1000)
                assert source == tid and decode_packet(again) == Data(1, b"hello\n")
                repeats += 1
        assert repeats <= 1
        sock.sendto(encode_ack(1), tid)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.one_of(
    st.binary(max_size=700),
    st.builds(lambda op, body: op.to_bytes(2, "big") + body,
              st.sampled_from([1, 2, 3, 4, 5, 6]), st.binary(max_size=600))))
def test_garbage_is_answered_or_dropped(server: int, garbage: bytes) -> None:
    with client_socket() as sock:
        sock.sendto(garbage, ("127.0.0.1", server))
        if garbage[:2] == b"\x00\x05":
            # An ERROR, even a broken one, is never answered: the first thing to come
            # back is the answer to the request sent after it.
            answer, tid = ask(server, rrq(b"hello.txt"), sock)
            assert answer == Data(1, b"hello\n")
            sock.sendto(b"\x00\x05\x00\x00enough\x00", tid)
            return
        reply, source = sock.recvfrom(70000)
        # Anything else gets an answer (rate-limited, out of the way here): an ERROR,
        # or (for a request that happens to be valid) the start of a transfer, which we
        # end at once.
        packet = decode_packet(reply)
        assert isinstance(packet, (Error, Data, OptionAck, Ack))
        if not isinstance(packet, Error):
            sock.sendto(b"\x00\x05\x00\x00enough\x00", source)
    assert ask(server, rrq(b"hello.txt"))[0] == Data(1, b"hello\n")


def test_a_flood_does_not_stop_a_download_and_logs_stay_bounded(
        server: int, tree: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    curl = require_program("curl")
    out = tmp_path / "big.out"
    with caplog.at_level(logging.INFO, logger="sockferry.tftp"):
        download = subprocess.Popen([curl, "-s", "--tftp-blksize", "1468", "-o", str(out),
                                     f"tftp://127.0.0.1:{server}/big.bin"])
        # Flood once the download runs: a flood before its request would only fill the
        # kernel's queue and make curl wait to repeat the request, which tests nothing.
        wait_until(lambda: out.exists() and out.stat().st_size, 10,
                   "curl's first bytes", interval_s=0.005)
        with client_socket() as sock:
            for i in range(2000):
                sock.sendto(bytes([i % 7, i % 251]) * (i % 40), ("127.0.0.1", server))
        assert download.wait(60) == 0
    assert out.read_bytes() == (tree / "big.bin").read_bytes()
    refused = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) <= 200, "refusal log lines are rate-limited"


def test_per_peer_limit(tree: Path) -> None:
    with server_thread(TftpServerConfig(str(tree), max_per_peer=2, max_transfers=3)) as (_, port):
        socks = [client_socket() for _ in range(4)]
        try:
            for sock in socks[:2]:
                assert isinstance(ask(port, rrq(b"big.bin"), sock)[0], Data)
            reply, _ = ask(port, rrq(b"big.bin"), socks[2])
            assert reply == Error(ErrorCode.NOT_DEFINED,
                                  "too many transfers from your address, try again later")
        finally:
            for sock in socks:
                sock.close()


def test_global_limit(tree: Path) -> None:
    with server_thread(TftpServerConfig(str(tree), max_transfers=1)) as (_, port), \
            client_socket() as first:
        assert isinstance(ask(port, rrq(b"big.bin"), first)[0], Data)
        assert ask(port, rrq(b"hello.txt"))[0] == Error(ErrorCode.NOT_DEFINED,
                                                         "server busy, try again later")


def test_upload_policies_and_size_limits(tmp_path: Path) -> None:
    (tmp_path / "exists").write_bytes(b"old")
    wrq = encode_request
    with server_thread(TftpServerConfig(str(tmp_path), allow_upload=UploadPolicy.OVERWRITE)) \
            as (_, port):
        reply, _ = ask(port, wrq(Opcode.WRQ, b"missing", "octet"))
        assert reply == Error(ErrorCode.FILE_NOT_FOUND,
                              "this server only overwrites existing files")
        assert ask(port, wrq(Opcode.WRQ, b"exists", "octet"))[0] == Ack(0)
    limits = ServerLimits(blksize_max=512)
    config = TftpServerConfig(str(tmp_path), allow_upload=UploadPolicy.CREATE,
                          max_upload_bytes=1000, limits=limits)
    with server_thread(config) as (_, port):
        reply, _ = ask(port, wrq(Opcode.WRQ, b"huge", "octet", {"tsize": "5000"}))
        assert isinstance(reply, Error) and reply.code == ErrorCode.DISK_FULL
        reply, _ = ask(port, wrq(Opcode.WRQ, b"huge", "octet", {"tsize": str(2**63)}))
        assert isinstance(reply, Error) and reply.code == ErrorCode.DISK_FULL
        # A tsize too long to be a number is no tsize at all (RFC 2347: ignored).
        reply, _ = ask(port, wrq(Opcode.WRQ, b"huge", "octet", {"tsize": str(10**30)}))
        assert reply == Ack(0)
        with client_socket() as sock:
            reply, tid = ask(port, wrq(Opcode.WRQ, b"sneaky", "octet"), sock)
            assert reply == Ack(0)
            for block in (1, 2):
                sock.sendto(b"\x00\x03" + block.to_bytes(2, "big") + b"z" * 512, tid)
                answer = decode_packet(sock.recvfrom(1000)[0])
            assert isinstance(answer, Error) and answer.code == ErrorCode.DISK_FULL
    assert not (tmp_path / "sneaky").exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".sockferry-")]


def test_create_never_replaces_a_file_that_appears_during_the_upload(tmp_path: Path) -> None:
    with server_thread(TftpServerConfig(str(tmp_path), allow_upload=UploadPolicy.CREATE)) \
            as (_, port):
        (tmp_path / "taken").write_bytes(b"old")
        reply, _ = ask(port, encode_request(Opcode.WRQ, b"taken", "octet"))
        assert reply == Error(ErrorCode.FILE_EXISTS, "this server only creates new files")
        with client_socket() as sock:
            reply, tid = ask(port, encode_request(Opcode.WRQ, b"late", "octet"), sock)
            assert reply == Ack(0)
            # Someone else makes the file while the upload is under way.
            (tmp_path / "late").write_bytes(b"theirs")
            sock.sendto(b"\x00\x03\x00\x01" + b"mine", tid)
            answer = decode_packet(sock.recvfrom(1000)[0])
    assert isinstance(answer, Error) and answer.code == ErrorCode.FILE_EXISTS, answer
    assert (tmp_path / "late").read_bytes() == b"theirs"
    assert (tmp_path / "taken").read_bytes() == b"old"
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".sockferry-")]


def test_an_upload_server_sweeps_what_a_crashed_one_left(tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture,
                                                         ) -> None:
    """A temporary file older than temporary_keep_s (an upload a crashed server never
    finished) is removed at start; a recent one (another server's upload) stays, and a
    server without uploads leaves the tree alone."""
    (tmp_path / "sub").mkdir()
    stale = tmp_path / "sub" / f"{TEMP_PREFIX}crashed{TEMP_SUFFIX}"
    recent = tmp_path / f"{TEMP_PREFIX}going{TEMP_SUFFIX}"
    for path in (stale, recent):
        path.write_bytes(b"half an upload")
    two_days_ago = time.time() - 2 * 86400
    os.utime(stale, (two_days_ago, two_days_ago))
    with server_thread(TftpServerConfig(str(tmp_path))):
        time.sleep(0.3)  # what a sweep at start would take
        assert stale.exists()  # no uploads: not this server's business
    caplog.set_level(logging.INFO, logger="sockferry.tftp")
    with server_thread(TftpServerConfig(str(tmp_path), allow_upload=UploadPolicy.CREATE)):
        wait_until(lambda: not stale.exists(), 10, "the stale temporary to be swept")
        assert recent.exists()
    assert any("removed partial file sub/" in r.getMessage() for r in caplog.records)
