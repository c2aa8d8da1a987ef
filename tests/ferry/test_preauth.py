"""Before authentication: slow-loris floods, per-source caps and the handshake deadline,
against a real ``sockferry serve`` process with its default limits.

The attacker is sshd's classic: connections that send a HELLO one byte every few seconds
and never finish.  Real clients (``sockferry send`` processes) must still get through —
from another address at once, from the attacker's own address once its connections hit
the handshake deadline (the client retries a server that says it is busy).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sockferry.ferry import messages as m
from sockferry.ferry.client_session import ClientSession
from sockferry.ferry.parser import FrameParser
from tests.ferry.harness import TOKEN, CliServer, write_token

SLOW_LORIS = 1000


class SlowLoris:
    """``count`` connections from ``source`` trickling a HELLO, one byte per ``pace_s``;
    with ``reconnect`` every connection that ends is opened again at once."""

    def __init__(self, port: int, source: str, count: int, *, pace_s: float = 3.0,
                 reconnect: bool = False) -> None:
        self.port, self.source, self.count = port, source, count
        self.pace_s, self.reconnect = pace_s, reconnect
        self.hello = b"".join(ClientSession(TOKEN, os.urandom(m.NONCE_BYTES))
                              .buffers_to_send())
        self.attempts = 0
        self.refused = 0  # told BUSY at once
        self.open = 0
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SlowLoris:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def _run(self) -> None:
        self._loop.run_until_complete(self._main())
        self._loop.close()

    async def _main(self) -> None:
        tasks = [asyncio.ensure_future(self._one()) for _ in range(self.count)]
        await self._stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _one(self) -> None:
        while not self._stop.is_set():
            self.attempts += 1
            with contextlib.suppress(OSError):
                await self._trickle()
            if not self.reconnect:
                return
            await asyncio.sleep(0.01)

    async def _trickle(self) -> None:
        sock = socket.socket()
        sock.setblocking(False)
        try:
            sock.bind((self.source, 0))
            await self._loop.sock_connect(sock, ("127.0.0.1", self.port))
            self.open += 1
            try:
                for byte in self.hello:
                    reply = await self._read_or_wait(sock)
                    if reply is not None:
                        if reply.startswith(bytes([m.FrameType.ERROR])):
                            self.refused += 1
                        return
                    await self._loop.sock_sendall(sock, bytes([byte]))
            finally:
                self.open -= 1
        finally:
            sock.close()

    async def _read_or_wait(self, sock: socket.socket) -> bytes | None:
        """What the server sent within one pace (b"" once it closed), or None."""
        try:
            async with asyncio.timeout(self.pace_s):
                return await self._loop.sock_recv(sock, 4096)
        except TimeoutError:
            return None


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, Path]]:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "file").write_bytes(os.urandom(100_000))
    yield {"root": root, "token": write_token(tmp_path / "token"), "file": tmp_path / "file",
           "log": tmp_path / "server.log"}


def _send(env: dict[str, Path], port: int, name: str) -> float:
    """A real client's ``send``; how long it took (it must succeed)."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "sockferry", "send", "-q", "-P", str(port),
                           "--token-file", str(env["token"]), str(env["file"]),
                           f"127.0.0.1:{name}"], capture_output=True, text=True, timeout=60,
                          check=False)
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert (env["root"] / name).read_bytes() == env["file"].read_bytes()
    return elapsed


def _flooded(loris: SlowLoris, holding: int) -> None:
    """Every attacking connection was tried, and ``holding`` of them are held open."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if loris.attempts >= loris.count and loris.open >= holding \
                and loris.refused >= loris.count - holding:
            return
        time.sleep(0.05)
    raise AssertionError(f"the flood did not take hold: {loris.attempts} attempts, "
                         f"{loris.open} open, {loris.refused} refused")


def test_slow_loris_from_one_address_does_not_hold_back_another(
        env: dict[str, Path]) -> None:
    server = CliServer(env["root"], env["token"], env["log"])
    try:
        with SlowLoris(server.port, "127.0.0.2", SLOW_LORIS) as loris:
            _flooded(loris, holding=4)  # the per-source cap: 4 held, the rest refused
            times = [_send(env, server.port, f"real-{n}") for n in range(3)]
            print(f"\nslow loris x{SLOW_LORIS} from 127.0.0.2: sends from 127.0.0.1 took "
                  + ", ".join(f"{t:.2f} s" for t in times))
            assert max(times) < 10  # the goal is under 2 s; this bound only catches a hang
        log = env["log"].read_text()
        assert "from 127.0.0.2 are still authenticating (at most 4)" in log
        # One line a second at most, however many were refused.
        assert log.count("refused a connection") < 60
    finally:
        server.stop()


def test_slow_loris_from_the_same_address_lets_a_client_in_soon(
        env: dict[str, Path]) -> None:
    server = CliServer(env["root"], env["token"], env["log"])
    try:
        with SlowLoris(server.port, "127.0.0.1", SLOW_LORIS) as loris:
            _flooded(loris, holding=4)
            elapsed = _send(env, server.port, "same")
            print(f"\nslow loris x{SLOW_LORIS} from 127.0.0.1: a send from there took "
                  f"{elapsed:.2f} s")
            assert elapsed < 20  # the goal is 10 s: the 5 s deadline, then a retry
        assert "the handshake did not complete within 5 s" in env["log"].read_text()
    finally:
        server.stop()


def test_reconnecting_flood_from_one_address_does_not_hold_back_another(
        env: dict[str, Path]) -> None:
    server = CliServer(env["root"], env["token"], env["log"])
    try:
        with SlowLoris(server.port, "127.0.0.2", 200, reconnect=True) as loris:
            _flooded(loris, holding=4)
            assert _send(env, server.port, "through") < 10
            assert loris.attempts > 200  # it kept coming back
    finally:
        server.stop()


def test_handshake_deadline_drops_a_silent_client_with_a_reason(
        env: dict[str, Path]) -> None:
    server = CliServer(env["root"], env["token"], env["log"], "--handshake-timeout", "0.5")
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            got = b""
            while chunk := sock.recv(4096):
                got += chunk
        frames = list(FrameParser().feed(got))
        assert len(frames) == 1 and isinstance(frames[0], m.Error)
        assert frames[0].code == m.ErrorCode.BAD_REQUEST
        assert "handshake did not complete within 0.5 s" in frames[0].message
        deadline = time.monotonic() + 10
        while "handshake did not complete" not in env["log"].read_text():
            assert time.monotonic() < deadline, env["log"].read_text()
            time.sleep(0.05)
        _send(env, server.port, "after")  # and the server goes on serving
    finally:
        server.stop()
