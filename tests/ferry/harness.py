"""A real ferry server on loopback for tests, and ways to talk to it."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from sockferry.addresses import Address, HostPort
from sockferry.api import run_ferry_server
from sockferry.cli import main
from sockferry.ferry import messages as m
from sockferry.ferry.client import FerryClient
from sockferry.ferry.client_session import ClientSession
from sockferry.ferry.copy_send import send_paths
from sockferry.ferry.parser import FrameParser
from sockferry.ferry.server import FerryServer
from sockferry.ferry.server_config import FerryServerConfig
from sockferry.ferry.session import ConnState
from sockferry.library import Server

T = TypeVar("T")
# Random-looking, as the token floor (tokens.MIN_TOKEN_BITS) requires.
TOKEN = b"tEsT-h5Q2v9LrW0xKc7mZp3YbN8dF1gJsA6uQe4iOk"


def write_token(path: Path, token: bytes = TOKEN) -> Path:
    path.write_bytes(token + b"\n")
    path.chmod(0o600)
    return path


class _Collect(logging.Handler):
    def __init__(self, thread: threading.Thread) -> None:
        super().__init__(logging.DEBUG)
        self.thread = thread
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread.ident:
            self.lines.append(record.getMessage())


class ServerThread:
    """A ``FerryServer`` running on its own event loop in a background thread."""

    def __init__(self, root: Path, addresses: Sequence[Address] = (HostPort("127.0.0.1", 0),),
                 *, sctp_stack: str | None = None, **config: Any) -> None:
        """``sctp_stack`` (auto, kernel or udp): serve over SCTP instead of TCP."""
        config.setdefault("token", TOKEN)
        self.config = FerryServerConfig(**config)
        self.root = root
        self._addresses = list(addresses)
        self._sctp_stack = sctp_stack
        self._running: Server | None = None
        self.grace_s = 2.0  # how long stop() lets connections in flight finish
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.server: FerryServer | None = None
        self.addresses: list[str] = []
        self._error: BaseException | None = None
        self._logs = _Collect(self._thread)
        self._logger = logging.getLogger("sockferry.ferry")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.server = FerryServer(str(self.root), self.config)
            self.addresses = self.loop.run_until_complete(self._start(self.server))
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            self.loop.close()
            return
        self._ready.set()
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    async def _start(self, server: FerryServer) -> list[str]:
        self._running = await run_ferry_server(server, self._addresses,
                                               grace=self.grace_s,
                                               sctp_stack=self._sctp_stack)
        return self._running.addresses

    async def _stop(self) -> None:
        assert self._running is not None
        self._running.close()
        await self._running.wait_closed()

    @property
    def logs(self) -> list[str]:
        """Every log line the server wrote so far."""
        return list(self._logs.lines)

    def __enter__(self) -> ServerThread:
        self._logger.addHandler(self._logs)
        self._logger.setLevel(logging.DEBUG)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.server is None or not self._thread.is_alive():
            return
        future = asyncio.run_coroutine_threadsafe(self._stop(), self.loop)
        future.result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self._logger.removeHandler(self._logs)

    @property
    def port(self) -> int:
        assert self._running is not None
        return self._running.port

    def connection_count(self) -> int:
        assert self.server is not None
        return len(self.server._connections)


def run_cli(*argv: str) -> tuple[int, str, str]:
    """``sockferry ARGV`` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def send_at_once(port: int, sources: Sequence[Path], *, recursive: bool = False) -> None:
    """Each source sent to the server's root by a client of its own, all at the same
    time; every one must succeed."""

    async def one(source: Path) -> None:
        client = await FerryClient.connect(HostPort("127.0.0.1", port), TOKEN)
        outcomes = await send_paths(client, [str(source)], "", recursive=recursive,
                                    keep_mtime=False)
        assert [o.error for o in outcomes if o.error] == []

    async def all_at_once() -> None:
        async with asyncio.TaskGroup() as group:
            for source in sources:
                group.create_task(one(source))

    run(all_at_once())


def spawn_cli(*argv: str, **kwargs: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "sockferry", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


class RawClient:
    """Authenticates like a real client, then sends whatever frames a test crafts."""

    def __init__(self, port: int, token: bytes = TOKEN) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.session = ClientSession(token, os.urandom(32))
        self.sock.sendall(self.session.data_to_send())
        while self.session.state is ConnState.AWAIT_REPLY:
            data = self.sock.recv(65536)
            assert data, "server closed during the handshake"
            self.session.receive_data(data)
        self.sock.sendall(self.session.data_to_send())
        self.parser = FrameParser()

    def send(self, *frames: bytes) -> None:
        self.sock.sendall(b"".join(frames))

    def replies(self, count: int, timeout_s: float = 10.0) -> list[m.Message]:
        """The next ``count`` non-DATA frames from the server."""
        got: list[m.Message] = []
        deadline = time.monotonic() + timeout_s
        while len(got) < count:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            data = self.sock.recv(65536)
            if not data:
                break
            got += [x for x in self.parser.feed(data)
                    if not isinstance(x, m.Data | m.BodyPiece)]
        return got

    def close(self) -> None:
        self.sock.close()


class CliServer:
    """``sockferry serve`` as a process on 127.0.0.1 (a free port), its log in a file."""

    def __init__(self, root: Path, token: Path, log: Path, *extra: str,
                 prefix: Sequence[str] = (), port: int = 0) -> None:
        self.log = log
        with log.open("ab") as stderr:
            self.proc = subprocess.Popen(
                [*prefix, sys.executable, "-m", "sockferry", "serve", str(root), "--listen",
                 f"127.0.0.1:{port}", "--token-file", str(token), "--grace", "1", *extra],
                stdout=subprocess.DEVNULL, stderr=stderr)
        self.port = self._port()

    def _port(self) -> int:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            found = re.search(r"listening on 127\.0\.0\.1:(\d+)", self.log.read_text())
            if found:
                return int(found.group(1))
            assert self.proc.poll() is None, self.log.read_text()
            time.sleep(0.02)
        raise AssertionError("the server did not start")

    def connection_lines(self) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if " file(s), " in line]

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)
