"""One rule for output in every command (issue 13): -q leaves errors and the results
asked for; a summary goes to stderr on a terminal or with -v; stdout has results only."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sockferry.cli.runtime import ExitCode
from tests.cli.server_process import running
from tests.ferry.harness import run_cli, write_token


@contextmanager
def serving(tmp_path: Path) -> Iterator[str]:
    """A ``sockferry serve`` in a child process (its logs stay out of our stderr): its
    port."""
    (tmp_path / "root").mkdir()
    with running("serve", str(tmp_path / "root"), "--listen", "127.0.0.1:0",
                 "--token-file", str(write_token(tmp_path / "token"))) as server:
        yield server.wait_for(r"listening on 127\.0\.0\.1:(\d+)").group(1)


def _client(port: str, token: Path, *argv: str) -> tuple[int, str, str]:
    command, *rest = argv
    return run_cli(command, "-P", port, "--token-file", str(token), *rest)


def test_copies_print_nothing_unless_asked(tmp_path: Path) -> None:
    token = tmp_path / "token"
    src = tmp_path / "a.txt"
    src.write_bytes(b"hello")
    with serving(tmp_path) as port:
        assert _client(port, token, "send", str(src), "127.0.0.1:") == (ExitCode.OK, "", "")
        code, out, err = _client(port, token, "send", str(src), "-v", "127.0.0.1:b.txt")
        assert code == ExitCode.OK
        assert out.startswith(f"sent {src} -> b.txt (5 B") and out.count("\n") == 1, out
        assert err.startswith("sockferry: sent 1 file(s), 5 B in "), err
        for flag in ("-q", "--quiet"):
            assert _client(port, token, "get", flag, "127.0.0.1:b.txt",
                           str(tmp_path / "c.txt")) == (ExitCode.OK, "", "")
        # -q still says what failed.
        code, out, err = _client(port, token, "get", "-q", "127.0.0.1:nothing",
                                 str(tmp_path))
        assert (code, out) == (ExitCode.REFUSED, "")
        assert err.startswith("sockferry: error: ") and err.count("\n") == 1, err
        # The listing is the result ls is asked for: -q keeps it.
        code, out, err = _client(port, token, "ls", "-q", "127.0.0.1:")
        assert (code, err) == (ExitCode.OK, "") and "a.txt" in out and "b.txt" in out


def test_quiet_token_commands_keep_only_the_token(tmp_path: Path) -> None:
    path = tmp_path / "tok"
    assert run_cli("token", "new", str(path), "-q") == (ExitCode.OK, "", "")
    code, out, err = run_cli("-q", "token", "show", str(path))
    assert (code, out, err) == (ExitCode.OK, path.read_text(), "")
    code, _, err = run_cli("token", "show", str(path))
    assert code == ExitCode.OK and "on a client, put this line in" in err


def test_a_terminal_gets_the_summary_without_v(tmp_path: Path) -> None:
    src = tmp_path / "a.txt"
    src.write_bytes(b"hello")
    master, slave = os.openpty()
    with serving(tmp_path) as port:
        child = subprocess.run(
            [sys.executable, "-m", "sockferry", "send", "-P", port,
             "--token-file", str(tmp_path / "token"), str(src), "127.0.0.1:"],
            stdout=subprocess.PIPE, stderr=slave, timeout=60, check=False)
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the terminal's other side is closed and drained
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    assert (child.returncode, child.stdout) == (ExitCode.OK, b"")
    assert b"sockferry: sent 1 file(s), 5 B in " in seen, seen
