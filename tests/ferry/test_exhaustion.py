"""Resources a client could exhaust on a real server process: file descriptors (BUSY,
never an internal error, under a small RLIMIT_NOFILE) and memory (a listing to a
client that stops reading)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from sockferry.addresses import HostPort
from sockferry.errors import PeerRefused, SockferryError
from sockferry.ferry import codec
from sockferry.ferry import messages as m
from sockferry.ferry.client import FerryClient
from sockferry.ferry.messages import ErrorCode
from tests.ferry.harness import TOKEN, CliServer, RawClient, write_token

LIMIT = 64  # descriptors the server may hold


@pytest.mark.timeout(120)
def test_out_of_descriptors_is_busy_and_passes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    for i in range(8):
        (root / f"d{i}").mkdir()
        (root / f"d{i}" / "f").write_bytes(b"x" * 1000)
    token = write_token(tmp_path / "token")
    source = tmp_path / "big"
    source.write_bytes(os.urandom(1 << 20))
    server = CliServer(root, token, tmp_path / "server.log", "--max-connections", "1000",
                       "--max-startups", "1000", "--max-startups-per-source", "1000",
                       prefix=("prlimit", f"--nofile={LIMIT}:{LIMIT}"))
    address = HostPort("127.0.0.1", server.port)

    async def scenario() -> tuple[int, int]:
        clients: list[FerryClient] = []
        busy = 0
        # Fill the table with connections; past the limit accept() itself fails (the
        # server backs off) or a client's handshake is refused as busy.
        for _ in range(LIMIT):
            try:
                clients.append(await FerryClient.connect(address, TOKEN, timeout_s=2,
                                                         busy_retry_s=0))
            except SockferryError:
                busy += 1
                break
        assert clients, "no client got in"
        # Every held connection asks for files at once: each GET opens a file and walks
        # directories; some must fail for want of descriptors, as BUSY.
        started = await asyncio.gather(*[
            client.puts.start_put(str(source), f"d{i % 8}/up{i}") if i % 2 else
            client.gets.start_get(f"d{i % 8}/f", str(tmp_path / f"got{i}"))
            for i, client in enumerate(clients)], return_exceptions=True)
        listed = await asyncio.gather(*[client.list("", recursive=True)
                                        for client in clients], return_exceptions=True)
        waited = await asyncio.gather(*[f for f in started if isinstance(f, asyncio.Future)],
                                      return_exceptions=True)
        for result in [*started, *listed, *waited]:
            if isinstance(result, PeerRefused):
                assert result.code == ErrorCode.BUSY, result
                busy += 1
            elif isinstance(result, BaseException):
                raise result
        for client in clients:
            await client.finish()
        return len(clients), busy

    try:
        held, busy = asyncio.run(scenario())
        log = (tmp_path / "server.log").read_text()
        assert "internal error" not in log, log
        print(f"\n{held} connections held under {LIMIT} descriptors; {busy} answered BUSY")
        # Once they are gone the server serves again, in full.
        async def after() -> None:
            client = await FerryClient.connect(address, TOKEN)
            future = await client.puts.start_put(str(source), "after")
            await client.finish()
            assert future.result() == 1 << 20
        asyncio.run(after())
        assert (root / "after").read_bytes() == source.read_bytes()
    finally:
        server.stop()


DIRS, PER_DIR = 200, 500


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_client_that_stops_reading_a_huge_listing_pins_little_memory(
        tmp_path: Path) -> None:
    """LIST -R of 100,000 entries to a client that never reads: the server reads the tree
    a chunk at a time and stops while the socket is full (it used to build the whole
    answer: ~47 MB for these)."""
    root = tmp_path / "root"
    for d in range(DIRS):
        directory = root / f"d{d:03d}"
        directory.mkdir(parents=True)
        for f in range(PER_DIR):
            (directory / f"file-with-a-long-name-{f:04d}").touch()
    token = write_token(tmp_path / "token")
    server = CliServer(root, token, tmp_path / "server.log")
    try:
        baseline = _rss_kib(server.proc.pid)
        client = RawClient(server.port)
        client.send(codec.encode(m.ListDir(1, "", m.ListFlag.RECURSIVE)))
        peak = baseline
        for _ in range(30):  # 3 s: long enough to have built the whole answer before
            time.sleep(0.1)
            peak = max(peak, _rss_kib(server.proc.pid))
        print(f"\nserver RSS {baseline} KiB -> peak {peak} KiB while the client stalls")
        assert peak - baseline < 16 * 1024
        # The listing is whole when the client does read.
        client.sock.settimeout(30)
        names, last = 0, False
        while not last:
            frames = client.replies(1, timeout_s=30)
            assert frames, "the listing stopped"
            for frame in frames:
                assert isinstance(frame, m.Entries), frame
                names += len(frame.entries)
                last = frame.last
        assert names == DIRS + DIRS * PER_DIR
        client.close()
    finally:
        server.stop()
