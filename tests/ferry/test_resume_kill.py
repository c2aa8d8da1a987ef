"""Resume after SIGKILL: real processes (python -m sockferry), loopback, files on tmpfs.

Each case starts a 256 MiB transfer, kills the client or the server once the receiver's
partial file holds a given share, then resumes with --resume: the result must be
byte-identical and only about the missing part may cross the wire.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest

from sockferry.storage.names import PARTIAL_PREFIX
from tests.ferry.harness import CliServer, write_token

SIZE = 256 * 1024 * 1024
SLACK = 2 * 1024 * 1024  # frames, handshake, rounding of the logged figures
_UNITS = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}


@pytest.fixture(scope="module")
def shm() -> Iterator[Path]:
    base = Path("/dev/shm") if os.path.isdir("/dev/shm") else None
    path = Path(tempfile.mkdtemp(prefix="sockferry-resume-", dir=base))
    (path / "data").write_bytes(blake3.blake3(b"resume").digest(length=SIZE))
    write_token(path / "token")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _cli(*argv: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "sockferry", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _partial(directory: Path) -> Path | None:
    found = [p for p in directory.iterdir() if p.name.startswith(PARTIAL_PREFIX)]
    return found[0] if found else None


def _kill_when(directory: Path, share: float, victim: subprocess.Popen[bytes]) -> int:
    """SIGKILL ``victim`` once the partial file in ``directory`` holds ``share`` of it."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        partial = _partial(directory)
        if partial is not None:
            with_size = partial.stat().st_size if partial.exists() else 0
            if with_size >= share * SIZE:
                victim.send_signal(signal.SIGKILL)
                victim.wait(30)
                return with_size
        assert victim.poll() is None, "the transfer ended before the kill point"
        time.sleep(0.001)
    raise AssertionError("the partial file never reached the kill point")


def _logged_bytes(line: str, which: str) -> int:
    number, unit = re.search(rf"([\d.]+) (B|KiB|MiB|GiB) {which}", line).groups()  # type: ignore[union-attr]
    return int(float(number) * _UNITS[unit])


def _wait_lines(server: CliServer, count: int) -> list[str]:
    deadline = time.monotonic() + 30
    while len(lines := server.connection_lines()) < count:
        assert time.monotonic() < deadline, server.log.read_text()
        time.sleep(0.02)
    return lines


# Each direction: both victims, three kill points (all twelve take ~100 s on 2 cores).
CASES = [("send", "client", 0.25), ("send", "server", 0.6), ("send", "client", 0.9),
         ("get", "client", 0.25), ("get", "server", 0.6), ("get", "server", 0.9)]


@pytest.mark.parametrize(("direction", "victim", "share"), CASES)
def test_resume_after_sigkill(shm: Path, direction: str, victim: str, share: float) -> None:
    case = shm / f"{direction}-{victim}-{share}"
    root, local = case / "root", case / "local"
    root.mkdir(parents=True)
    local.mkdir()
    token = str(shm / "token")
    if direction == "get":
        shutil.copyfile(shm / "data", root / "data")
    server = CliServer(root, shm / "token", case / "server.log")
    try:
        watched = root if direction == "send" else local

        def argv(verbosity: str) -> list[str]:
            common = ["-P", str(server.port), "--token-file", token, verbosity]
            if direction == "send":
                return ["send", "--resume", *common, str(shm / "data"), "127.0.0.1:data"]
            return ["get", "--resume", *common, "127.0.0.1:data", str(local / "data")]

        first = _cli(*argv("-q"))
        target = first if victim == "client" else server.proc
        _kill_when(watched, share, target)
        first.communicate(timeout=30)
        assert first.returncode != 0
        if victim == "client":
            _wait_lines(server, 1)  # the server has seen the client go
        else:
            server = CliServer(root, shm / "token", case / "restarted.log")
        before = len(server.connection_lines())
        kept = _partial(watched)
        assert kept is not None and kept.stat().st_size >= share * SIZE
        again = _cli(*argv("-v"))
        out, err = again.communicate(timeout=60)
        assert again.returncode == 0, err.decode()
        resumed = int(re.search(rb"resumed at [^(]*\((\d+) bytes\)", out).group(1))  # type: ignore[union-attr]
        assert resumed >= share * SIZE
        line = _wait_lines(server, before + 1)[before]
        moved = _logged_bytes(line, "in" if direction == "send" else "out")
        assert SIZE - resumed <= moved + SLACK and moved <= SIZE - resumed + SLACK, line
    finally:
        server.stop()
    result = root / "data" if direction == "send" else local / "data"
    assert blake3.blake3(result.read_bytes()).digest() == \
        blake3.blake3((shm / "data").read_bytes()).digest()
    assert _partial(root) is None and _partial(local) is None
