"""A second server on a busy port fails, on every transport, and says why.

UDP sockets once set SO_REUSEADDR, with which Linux lets a second socket bind a busy UDP
port and take part of its traffic: a second ``tftp-serve`` silently took over.  Each
transport here: a first server as a subprocess, then a second on its port, which must
exit with the network exit code (3) and one sentence saying the address is in use."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.ferry.harness import write_token

ADDRESS = re.compile(rb"127\.0\.0\.1:(\d+)")


@contextmanager
def first_server(*argv: str) -> Iterator[int]:
    """``sockferry ARGV`` running, and the port it printed (stdout or stderr)."""
    process = subprocess.Popen([sys.executable, "-m", "sockferry", *argv],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert process.stdout is not None
        for _ in range(20):  # its first lines name the address
            line = process.stdout.readline()
            match = ADDRESS.search(line)
            if match:
                yield int(match.group(1))
                break
        else:
            raise AssertionError("the first server printed no address")
    finally:
        process.terminate()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()


def second(*argv: str) -> tuple[int, str]:
    result = subprocess.run([sys.executable, "-m", "sockferry", *argv],
                            capture_output=True, timeout=30, check=False)
    return result.returncode, result.stderr.decode()


@pytest.mark.parametrize("transport", ["tcp", "tftp", "sctp-udp"])
def test_a_second_server_on_a_busy_port_fails(tmp_path: Path, transport: str) -> None:
    token = str(write_token(tmp_path / "token"))
    root = str(tmp_path)
    commands = {
        "tcp": ["serve", root, "--token-file", token, "--listen"],
        "tftp": ["tftp-serve", root, "--listen"],
        "sctp-udp": ["sctp-serve", "--transport", "udp", "--listen"],
    }
    command = commands[transport]
    with first_server(*command, "127.0.0.1:0") as port:
        code, err = second(*command, f"127.0.0.1:{port}")
    assert code == 3, err
    assert f"127.0.0.1:{port} is already in use" in err
    assert err.count("\n") == 1, err


@pytest.mark.kernel_sctp
@pytest.mark.parametrize("command", [["sctp-serve", "--transport", "kernel"],
                                     ["serve", "--transport", "sctp", "--sctp-stack",
                                      "kernel"]], ids=["sctp-serve", "serve"])
def test_a_second_kernel_sctp_server_on_a_busy_port_fails(tmp_path: Path,
                                                          command: list[str]) -> None:
    """The same with the kernel's SCTP (run in the VM guest by scripts/vm-test)."""
    if command[0] == "serve":
        command = [*command, str(tmp_path), "--token-file",
                   str(write_token(tmp_path / "token"))]
    with first_server(*command, "--listen", "127.0.0.1:0") as port:
        code, err = second(*command, "--listen", f"127.0.0.1:{port}")
    assert code == 3, err
    assert f"127.0.0.1:{port} is already in use" in err
    assert err.count("\n") == 1, err
