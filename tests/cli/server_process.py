"""A server command in a child process, its output read line by line as it comes."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class Server:
    """A server command in a child process; its output read line by line."""

    def __init__(self, *argv: str) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "sockferry", *argv],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.lines: list[str] = []
        self._partial: dict[int, bytes] = {}

    def wait_for(self, pattern: str, timeout_s: float = 20.0) -> re.Match[str]:
        """The first line (stdout or stderr) matching ``pattern``."""
        regex = re.compile(pattern)
        seen = 0
        deadline = time.monotonic() + timeout_s
        while True:
            for line in self.lines[seen:]:
                if (found := regex.search(line)) is not None:
                    return found
            seen = len(self.lines)
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(left):
                raise AssertionError(f"no line matching {pattern!r} in {self.lines}")

    def _read(self, timeout_s: float) -> bool:
        """Read what is there (raw, so nothing hides in a buffer); False at the end."""
        assert self.process.stdout is not None and self.process.stderr is not None
        fds = [self.process.stdout.fileno(), self.process.stderr.fileno()]
        ready, _, _ = select.select(fds, [], [], timeout_s)
        got = False
        for fd in ready:
            chunk = os.read(fd, 65536)
            got = got or bool(chunk)
            *lines, self._partial[fd] = (self._partial.get(fd, b"") + chunk).split(b"\n")
            self.lines += [line.decode(errors="replace") for line in lines]
        return got or not ready

    def ids(self) -> dict[str, list[int]]:
        """Uid, Gid (real, effective, saved, file system) and Groups of the process."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        found = {}
        for key in ("Uid", "Gid", "Groups"):
            line = re.search(rf"^{key}:(.*)$", status, re.MULTILINE)
            assert line is not None
            found[key] = [int(x) for x in line.group(1).split()]
        return found

    def stop(self) -> tuple[int, str]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        out, err = self.process.communicate(timeout=20)
        rest = b"".join(self._partial.values()) + out + err
        return self.process.returncode, "\n".join(self.lines) + "\n" + rest.decode()


@contextmanager
def running(*argv: str) -> Iterator[Server]:
    server = Server(*argv)
    try:
        yield server
    finally:
        server.stop()
