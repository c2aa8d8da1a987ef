"""Hostile clients against a real ``sockferry serve`` process (issue 11, point 7).

Each case asserts the typed error or the closed connection, the server's log line, and
that another client is served meanwhile.  Memory figures are printed (pytest -s) and
asserted only against generous bounds.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest

from sockferry.cli.runtime import ExitCode
from sockferry.ferry import codec
from sockferry.ferry import messages as m
from sockferry.ferry.parser import FrameParser
from sockferry.memory import rss_bytes
from tests.ferry.harness import CliServer, RawClient, spawn_cli, write_token

MiB = 1024 * 1024
TIB = 1024**4


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[CliServer, Path]]:
    base = Path("/dev/shm") if os.path.isdir("/dev/shm") else None
    work = Path(tempfile.mkdtemp(prefix="sockferry-hostile-", dir=base))
    root = work / "root"
    root.mkdir()
    (work / "small").write_bytes(b"small file")
    with (root / "gig").open("wb") as f:  # 1 GiB of data (not a hole), on tmpfs
        chunk = b"\xa5" * (16 * MiB)
        for _ in range(64):
            f.write(chunk)
    token = write_token(work / "token")
    server = CliServer(root, token, work / "log", "--max-connections", "40")
    yield server, work
    server.stop()
    shutil.rmtree(work, ignore_errors=True)


def _another_client_is_served(served: tuple[CliServer, Path], name: str) -> None:
    """A real client's handshake and small send complete (within its own timeouts)."""
    server, work = served
    proc = spawn_cli("send", "-P", str(server.port), "--token-file", str(work / "token"),
                     "--timeout", "10", str(work / "small"), f"127.0.0.1:{name}")
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == ExitCode.OK, err
    assert (server.log.parent / "root" / name).read_bytes() == b"small file"


def _log_lines_with(server: CliServer, text: str) -> list[str]:
    deadline = time.monotonic() + 10
    while True:
        lines = [line for line in server.log.read_text().splitlines() if text in line]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.02)


def _closed(raw: RawClient) -> list[m.Message]:
    """What the server sent until it closed the connection (bounded wait)."""
    got = raw.replies(100, timeout_s=10)
    raw.close()
    return got


def _put(request: int, path: str, size: int) -> bytes:
    return codec.encode(m.Put(request, path, size, 0o644, 0))


def test_sizes_of_2_63_and_16_tib_holes_are_refused_before_any_work(
        served: tuple[CliServer, Path]) -> None:
    server, _ = served
    raw = RawClient(server.port)
    raw.send(_put(1, "huge", 2**63 - 1), codec.encode(m.Hole(1, 2**62)),
             _put(3, "sixteen", 16 * TIB), codec.encode(m.Hole(3, 16 * TIB)))
    errors = [r for r in raw.replies(2) if isinstance(r, m.Error)]
    _another_client_is_served(served, "after-huge")
    raw.close()
    assert [(e.request, e.code) for e in errors] == [(1, m.ErrorCode.TOO_LARGE),
                                                      (3, m.ErrorCode.TOO_LARGE)]
    assert len(_log_lines_with(server, "PUT 'sixteen'")) == 1


def test_a_streamed_hole_over_the_limit_is_refused_before_any_work(
        served: tuple[CliServer, Path]) -> None:
    """A streamed PUT announces no size: its 2^62-byte HOLE is counted, and refused,
    before the server hashes a single zero (the default limit is 4 TiB)."""
    server, _ = served
    raw = RawClient(server.port)
    raw.send(codec.encode(m.Put(1, "endless", 0, 0o644, 0, m.PutFlag.STREAMED)),
             codec.encode(m.Hole(1, 2**62)), codec.encode(m.Done(1, b"\0" * 32)))
    errors = [r for r in raw.replies(1) if isinstance(r, m.Error)]
    _another_client_is_served(served, "after-endless")
    raw.close()
    assert [(e.request, e.code) for e in errors] == [(1, m.ErrorCode.TOO_LARGE)]
    assert len(_log_lines_with(server, "PUT 'endless'")) == 1
    assert not (server.log.parent / "root" / "endless").exists()


def test_a_terabyte_hole_within_the_limit_stalls_nobody(
        served: tuple[CliServer, Path]) -> None:
    """Its zeros are hashed by a thread in slices; the client leaving stops it."""
    server, _ = served
    raw = RawClient(server.port)
    raw.send(_put(1, "holey", TIB), codec.encode(m.Hole(1, TIB - 1)))
    time.sleep(0.2)  # let the hashing start
    _another_client_is_served(served, "beside-the-hole")
    raw.close()
    assert len(_log_lines_with(server, "PUT 'holey'")) == 1  # "aborted: ..."


@pytest.mark.parametrize(("name", "frames"), [
    ("length 2^32-1", struct.pack("!BBHII", m.FrameType.PUT, 0, 0, 1, 2**32 - 1)),
    ("DATA length 2^32-1",
     _put(1, "f", 10) + struct.pack("!BBHII", m.FrameType.DATA, 0, 0, 1, 2**32 - 1)),
    ("more sent than declared", _put(1, "f", 5) + codec.data_header(1, 10) + b"x" * 10),
    ("garbage after authentication", bytes(range(256)) * 4),
])
def test_a_protocol_violation_ends_only_that_connection(
        served: tuple[CliServer, Path], name: str, frames: bytes) -> None:
    server, _ = served
    before = len(server.connection_lines())
    raw = RawClient(server.port)
    raw.send(frames)
    got = _closed(raw)
    assert any(isinstance(r, m.Error) and r.request == 0
               and r.code == m.ErrorCode.BAD_REQUEST for r in got), (name, got)
    _another_client_is_served(served, "after-violation")
    deadline = time.monotonic() + 10
    while len(server.connection_lines()) < before + 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert any("protocol error" in line for line in server.connection_lines()[before:])


def test_less_sent_than_declared(served: tuple[CliServer, Path]) -> None:
    server, _ = served
    raw = RawClient(server.port)
    digest = blake3.blake3(b"short").digest()
    raw.send(_put(1, "short", 10), codec.data_header(1, 5), b"short",
             codec.encode(m.Done(1, digest)))
    got = _closed(raw)
    assert any(isinstance(r, m.Error) and r.code == m.ErrorCode.BAD_REQUEST for r in got)
    assert not (server.log.parent / "root" / "short").exists()


def test_a_flood_beyond_max_connections_is_busy_then_passes(
        served: tuple[CliServer, Path]) -> None:
    server, _ = served
    held = []
    try:
        for _ in range(40):  # --max-connections 40, authenticated, idle
            held.append(RawClient(server.port))
        extra = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        parser = FrameParser()
        refused = list(parser.feed(extra.recv(4096)))
        extra.close()
        assert isinstance(refused[0], m.Error) and refused[0].code == m.ErrorCode.BUSY
    finally:
        for raw in held:
            raw.close()
    _another_client_is_served(served, "after-flood")
    assert _log_lines_with(server, "40 connections already")


def _sample_rss(pid: int, seconds: float) -> list[int]:
    samples = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        samples.append(rss_bytes(pid))
        time.sleep(0.1)
    return samples


def test_a_client_that_stops_reading_a_1_gib_get_pins_no_memory(
        served: tuple[CliServer, Path]) -> None:
    server, _ = served
    start = rss_bytes(server.proc.pid)
    raw = RawClient(server.port)
    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    raw.send(codec.encode(m.Get(1, "gig")))
    samples = _sample_rss(server.proc.pid, 3.0)
    _another_client_is_served(served, "beside-the-stall")
    raw.close()
    growth = max(samples) - start
    print(f"\n1 GiB GET, client not reading: server RSS {start / MiB:.1f} MiB before, "
          f"max {max(samples) / MiB:.1f} MiB over 3 s (+{growth / MiB:.1f} MiB)")
    assert growth < 64 * MiB


def test_memory_is_returned_after_1000_connections(
        served: tuple[CliServer, Path]) -> None:
    server, _ = served
    pid = server.proc.pid
    before = rss_bytes(pid)
    peak = before
    for _ in range(50):  # 1,000 connections, 20 at a time: handshake, STAT, close
        batch = [RawClient(server.port) for _ in range(20)]
        for raw in batch:
            raw.send(codec.encode(m.Stat(1, "gig")))
        for raw in batch:
            assert any(isinstance(r, m.Entries) for r in raw.replies(1))
        peak = max(peak, rss_bytes(pid))
        for raw in batch:
            raw.close()
    time.sleep(1.5)  # the server trims 0.5 s after its last connection ends
    after = rss_bytes(pid)
    print(f"\n1,000 connections: server RSS {before / MiB:.1f} MiB before, peak "
          f"{peak / MiB:.1f} MiB, {after / MiB:.1f} MiB after they closed")
    assert after - before < 32 * MiB
