"""Every row of the README's exit-code table, triggered for real (issue 13).

The table is read from README.md, so the test fails when README and code drift apart: a
code documented but not returned, returned for another cause, or without a row.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from sockferry import errors
from sockferry.cli.runtime import ExitCode, exit_code_for
from tests.ferry.harness import ServerThread, run_cli, write_token

README = Path(__file__).resolve().parents[2] / "README.md"


def documented_codes() -> dict[int, str]:
    """code -> meaning, from the table under '### Exit codes'."""
    section = README.read_text().split("### Exit codes", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| (\d+) \| (.+) \|$", section, re.MULTILINE)
    assert rows, "no exit-code table in README.md"
    return {int(code): meaning for code, meaning in rows}


@contextmanager
def silent_listener() -> Iterator[socket.socket]:
    """A TCP port whose kernel completes connections that nobody ever answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener


def _ok(tmp: Path) -> int:
    (tmp / "root").mkdir()
    with ServerThread(tmp / "root") as server:
        return run_cli("ls", "-P", str(server.port), "--token-file",
                       str(write_token(tmp / "token")), "127.0.0.1:")[0]


def _failure(tmp: Path) -> int:
    # No command path raises a bare SockferryError on demand (privilege dropping does,
    # and only when the kernel misbehaves): the mapping itself is what is checked.
    return exit_code_for(errors.SockferryError("something else"))


def _usage(tmp: Path) -> int:
    code, _, err = run_cli("ls", "--token-file", str(tmp / "missing"), "127.0.0.1:")
    assert "the token file" in err and str(tmp / "missing") in err, err
    return code


def _network(tmp: Path) -> int:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        return run_cli("ls", "-P", str(port), "--token-file",
                       str(write_token(tmp / "token")), "127.0.0.1:")[0]


def _auth(tmp: Path) -> int:
    (tmp / "root").mkdir()
    wrong = write_token(tmp / "wrong", b"wRoNg-8Kq3Zt5Vx1Lm9Pb7Nc2Hd4Jf6Gs0Aw3Ey5Ru7")
    with ServerThread(tmp / "root") as server:
        return run_cli("ls", "-P", str(server.port), "--token-file", str(wrong),
                       "127.0.0.1:")[0]


def _refused(tmp: Path) -> int:
    (tmp / "root").mkdir()
    with ServerThread(tmp / "root") as server:
        return run_cli("get", "-P", str(server.port), "--token-file",
                       str(write_token(tmp / "token")), "127.0.0.1:no-such-file",
                       str(tmp))[0]


def _storage(tmp: Path) -> int:
    (tmp / "root").mkdir()
    with ServerThread(tmp / "root") as server:
        return run_cli("send", "-P", str(server.port), "--token-file",
                       str(write_token(tmp / "token")), str(tmp / "no-such-file"),
                       "127.0.0.1:")[0]


def _protocol(tmp: Path) -> int:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(20)

        def garbage() -> None:  # one connection, answered with bytes no frame starts with
            conn, _ = listener.accept()
            with conn:
                conn.sendall(b"\xff" * 256)
                conn.settimeout(20)
                conn.recv(1 << 16)

        peer = threading.Thread(target=garbage, daemon=True)
        peer.start()
        code = run_cli("ls", "-P", str(listener.getsockname()[1]), "--token-file",
                       str(write_token(tmp / "token")), "127.0.0.1:")[0]
        peer.join(20)
        return code


def _timeout(tmp: Path) -> int:
    with silent_listener() as listener:
        code, _, err = run_cli("ls", "-P", str(listener.getsockname()[1]), "--timeout",
                               "0.3", "--token-file", str(write_token(tmp / "token")),
                               "127.0.0.1:")
    assert "did not complete the handshake" in err, err
    return code


def _not_available(tmp: Path) -> int:
    # The kernel speaks SCTP over UDP from its one sysctl port only (0 when off); port 1
    # is never it.
    return run_cli("sctp-send", "--transport", "kernel", "--udp-port", "1", "127.0.0.1:9",
                   "hi")[0]


def _interrupted(tmp: Path) -> int:
    with silent_listener() as listener:
        listener.settimeout(20)
        child = subprocess.Popen(
            [sys.executable, "-m", "sockferry", "ls", "-P", str(listener.getsockname()[1]),
             "--timeout", "60", "--token-file", str(write_token(tmp / "token")),
             "127.0.0.1:"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            conn, _ = listener.accept()  # the client is connected and waiting: Ctrl-C
            conn.settimeout(20)
            conn.recv(1 << 16)  # its hello: it is inside the event loop by now
            child.send_signal(signal.SIGINT)
            _, err = child.communicate(timeout=20)
            conn.close()
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(10)
    assert b"interrupted" in err, err
    return child.returncode


TRIGGERS: dict[int, Callable[[Path], int]] = {
    ExitCode.OK: _ok,
    ExitCode.FAILURE: _failure,
    ExitCode.USAGE: _usage,
    ExitCode.NETWORK: _network,
    ExitCode.AUTH: _auth,
    ExitCode.REFUSED: _refused,
    ExitCode.STORAGE: _storage,
    ExitCode.PROTOCOL: _protocol,
    ExitCode.TIMEOUT: _timeout,
    ExitCode.NOT_AVAILABLE: _not_available,
    ExitCode.INTERRUPTED: _interrupted,
}


def test_the_table_lists_every_exit_code_and_nothing_else() -> None:
    defined = {v for k, v in vars(ExitCode).items() if not k.startswith("_")}
    assert set(documented_codes()) == defined == set(TRIGGERS)


@pytest.mark.parametrize("code", sorted(documented_codes()))
def test_each_documented_exit_code_is_returned(code: int, tmp_path: Path) -> None:
    assert code in TRIGGERS, f"README documents exit code {code}, which nothing returns"
    assert TRIGGERS[code](tmp_path) == code, documented_codes()[code]


def test_a_tls_handshake_that_never_completes_is_a_timeout(tmp_path: Path) -> None:
    with silent_listener() as listener:
        code, _, err = run_cli("ls", "--tls", "--known-hosts", str(tmp_path / "kh"), "-P",
                               str(listener.getsockname()[1]), "--timeout", "0.3",
                               "--token-file", str(write_token(tmp_path / "token")),
                               "127.0.0.1:")
    assert "did not complete the TLS handshake in 0.3 s" in err, err
    assert code == ExitCode.TIMEOUT
