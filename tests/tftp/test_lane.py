"""Lock-step transfers in steady state run on the driver's lane thread: what happens
there when the peer falls silent, the disk fills, the server stops, or a client wants
progress.  Real sockets on loopback, raw peers where the test needs to misbehave."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sockferry.addresses import HostPort
from sockferry.tftp.client import ClientOptions, download
from sockferry.tftp.packets import (
    Data,
    Error,
    ErrorCode,
    Opcode,
    OptionAck,
    decode_packet,
    encode_ack,
    encode_data,
    encode_request,
)
from sockferry.tftp.server import TftpServerConfig, UploadPolicy
from tests.conftest import mounted_tmpfs
from tests.tftp.udp_helpers import client_socket, running_server, server_thread

BLKSIZE = 1468
FILE_BYTES = 3 * 1024 * 1024 + 77  # past the read-ahead: the lane tops the stream up
WAIT_S = 3.0


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    (root / "big.bin").write_bytes(os.urandom(FILE_BYTES))
    (root / "hello.txt").write_bytes(b"hello\n")
    return root


def _start_read(sock: socket.socket, port: int, name: bytes) -> tuple[str, int]:
    """RRQ with blksize, ACK the OACK; returns the transfer's port."""
    sock.sendto(encode_request(Opcode.RRQ, name, "octet", {"blksize": str(BLKSIZE)}),
                ("127.0.0.1", port))
    reply, tid = sock.recvfrom(70000)
    assert decode_packet(reply) == OptionAck({"blksize": str(BLKSIZE)})
    sock.sendto(encode_ack(0), tid)
    return tid


def _still_serves(port: int) -> None:
    with client_socket(WAIT_S) as sock:
        sock.sendto(encode_request(Opcode.RRQ, b"hello.txt", "octet"), ("127.0.0.1", port))
        reply, tid = sock.recvfrom(70000)
        assert decode_packet(reply) == Data(1, b"hello\n")
        sock.sendto(encode_ack(1), tid)


def test_a_silent_peer_gets_the_block_again_and_the_transfer_ends_whole(root: Path,
                                                                         ) -> None:
    expected = (root / "big.bin").read_bytes()
    blocks = len(expected) // BLKSIZE + 1
    pause_at = blocks // 2
    received: dict[int, bytes] = {}
    repeats = 0
    with server_thread(TftpServerConfig(str(root))) as (_, port), client_socket(WAIT_S) as sock:
        tid = _start_read(sock, port, b"big.bin")
        block = 1
        while block <= blocks:
            packet = decode_packet(sock.recvfrom(70000)[0])
            assert isinstance(packet, Data), packet
            if packet.block != block & 0xFFFF:
                continue  # a repeat of the block before: already acknowledged
            if block == pause_at and block not in received:
                received[block] = packet.payload
                continue  # no ACK: the server's timeout must send this block again
            if block in received:
                repeats += 1
            received[block] = packet.payload
            sock.sendto(encode_ack(block & 0xFFFF), tid)
            block += 1
        _still_serves(port)
    assert repeats == 1
    assert b"".join(received[n] for n in range(1, blocks + 1)) == expected


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "small", "size=1m") as path:
        (path / "hello.txt").write_bytes(b"hello\n")
        yield path


def test_a_full_disk_in_mid_upload_ends_it_with_disk_full(small_disk: Path) -> None:
    payload = os.urandom(3 * 1024 * 1024)
    config = TftpServerConfig(str(small_disk), allow_upload=UploadPolicy.CREATE)
    with server_thread(config) as (_, port), client_socket(WAIT_S) as sock:
        sock.sendto(encode_request(Opcode.WRQ, b"big.bin", "octet",
                                   {"blksize": str(BLKSIZE)}), ("127.0.0.1", port))
        reply, tid = sock.recvfrom(70000)
        assert decode_packet(reply) == OptionAck({"blksize": str(BLKSIZE)})
        answer = None
        for block in range(1, len(payload) // BLKSIZE + 2):
            chunk = payload[(block - 1) * BLKSIZE:block * BLKSIZE]
            sock.sendto(encode_data(block, chunk), tid)
            answer = decode_packet(sock.recvfrom(70000)[0])
            if isinstance(answer, Error):
                break
        assert isinstance(answer, Error) and answer.code == ErrorCode.DISK_FULL, answer
        _still_serves(port)
    assert sorted(os.listdir(small_disk)) == ["hello.txt"]  # nothing half-written


def test_stopping_the_server_ends_a_running_transfer_at_once(root: Path) -> None:
    async def main() -> tuple[object, float]:
        loop = asyncio.get_running_loop()
        with client_socket(WAIT_S) as sock:
            sock.setblocking(False)
            async with running_server(TftpServerConfig(str(root))) as (server, port):
                await loop.sock_sendto(sock, encode_request(
                    Opcode.RRQ, b"big.bin", "octet", {"blksize": str(BLKSIZE)}),
                    ("127.0.0.1", port))
                _, tid = await loop.sock_recvfrom(sock, 70000)
                for block in range(50):  # steady state: the lane has the transfer
                    await loop.sock_sendto(sock, encode_ack(block), tid)
                    await loop.sock_recvfrom(sock, 70000)
                started = time.monotonic()
                await server.close()
                elapsed = time.monotonic() - started
                while True:  # the last DATA may still be queued before the ERROR
                    packet = decode_packet(await asyncio.wait_for(
                        loop.sock_recv(sock, 70000), WAIT_S))
                    if not isinstance(packet, Data):
                        return packet, elapsed

    packet, elapsed = asyncio.run(main())
    assert isinstance(packet, Error) and packet.code == ErrorCode.NOT_DEFINED, packet
    assert elapsed < 2.0


def test_a_lock_step_download_reports_progress_as_it_goes(root: Path,
                                                          tmp_path: Path) -> None:
    reports: list[tuple[int, int | None]] = []

    async def main() -> None:
        async with running_server(TftpServerConfig(str(root))) as (_, port):
            await download(HostPort("127.0.0.1", port), "big.bin", str(tmp_path / "got"),
                           ClientOptions(), on_progress=lambda *r: reports.append(r))

    asyncio.run(main())
    assert (tmp_path / "got").read_bytes() == (root / "big.bin").read_bytes()
    during = [size for size, total in reports if 0 < size < FILE_BYTES]
    assert len(during) >= 5, reports
    assert reports[-1] == (FILE_BYTES, FILE_BYTES)
