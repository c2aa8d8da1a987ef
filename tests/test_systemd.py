"""Socket activation and readiness reports, for real: each server started by
``systemd-socket-activate`` on a socket it did not bind, reporting READY=1 and
STOPPING=1 to a notify socket of the test's own, and serving a real transfer."""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from sockferry import systemd
from sockferry.cli import main
from tests.conftest import require_program
from tests.ferry.harness import write_token

pytestmark = pytest.mark.timeout(120)


def free_port(kind: socket.SocketKind) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(30)
        yield sock


@contextmanager
def activated(tmp_path: Path, listen: str, *argv: str,
              datagram: bool = False) -> Iterator[subprocess.Popen[str]]:
    """``sockferry ARGV`` under systemd-socket-activate on ``listen``, which starts it on
    the first client (the body's); then READY=1 must have come, and after SIGTERM
    STOPPING=1 and exit 0."""
    activate = require_program("systemd-socket-activate")
    with notify_socket(tmp_path) as notify:
        env = {**os.environ, "NOTIFY_SOCKET": notify.getsockname()}
        # systemd-socket-activate passes on only the variables named with -E.
        passed = ["-E", "NOTIFY_SOCKET", "-E", "PYTHONPATH"]
        with subprocess.Popen([activate, *(["--datagram"] if datagram else []), *passed,
                               "-l", listen, sys.executable, "-m", "sockferry", *argv], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) as proc:
            try:
                assert proc.stderr is not None
                assert proc.stderr.readline().startswith("Listening on "), "no listener"
                yield proc
                assert notify.recv(4096) == b"READY=1", "no readiness report"
                proc.send_signal(signal.SIGTERM)
                assert notify.recv(4096) == b"STOPPING=1"
                _, err = proc.communicate(timeout=30)
                assert proc.returncode == 0, err
                assert "Traceback" not in err
            finally:
                if proc.poll() is None:
                    proc.kill()


def test_serve_takes_its_listener_from_socket_activation(tmp_path: Path) -> None:
    root, token = tmp_path / "root", write_token(tmp_path / "token")
    root.mkdir()
    port = free_port(socket.SOCK_STREAM)
    (tmp_path / "hello.txt").write_bytes(b"activated\n" * 1000)
    with activated(tmp_path, f"127.0.0.1:{port}", "serve", str(root), "--token-file",
                   str(token)):
        err = io.StringIO()
        code = main(["send", "--token-file", str(token), "-P", str(port),
                     str(tmp_path / "hello.txt"), "127.0.0.1:"], stdout=io.StringIO(),
                    stderr=err)
        assert code == 0, err.getvalue()
    assert (root / "hello.txt").read_bytes() == b"activated\n" * 1000


def test_tftp_serve_takes_its_socket_from_socket_activation(tmp_path: Path) -> None:
    tftp = require_program("tftp")  # tftp-hpa, a real peer
    root = tmp_path / "root"
    root.mkdir()
    (root / "boot.img").write_bytes(os.urandom(100_000))
    port = free_port(socket.SOCK_DGRAM)
    with activated(tmp_path, f"127.0.0.1:{port}", "tftp-serve", str(root), datagram=True):
        result = subprocess.run([tftp, "127.0.0.1", str(port), "-m", "binary", "-c", "get",
                                 "boot.img", str(tmp_path / "got.img")], capture_output=True,
                                text=True, timeout=30, check=False)
        assert result.returncode == 0, result.stderr
    assert (tmp_path / "got.img").read_bytes() == (root / "boot.img").read_bytes()


def test_sctp_serve_carries_sctp_in_the_activated_udp_socket(tmp_path: Path) -> None:
    port = free_port(socket.SOCK_DGRAM)
    with activated(tmp_path, f"127.0.0.1:{port}", "sctp-serve", "--transport", "udp",
                   "--echo", datagram=True):
        out, err = io.StringIO(), io.StringIO()
        code = main(["sctp-send", "--transport", "udp", f"127.0.0.1:{port}", "over udp"],
                    stdout=out, stderr=err)
        assert code == 0, err.getvalue()
        assert "over udp" in out.getvalue()  # the echo came back


def test_a_socket_of_the_wrong_kind_is_one_sentence(tmp_path: Path) -> None:
    activate = require_program("systemd-socket-activate")
    port = free_port(socket.SOCK_STREAM)
    with subprocess.Popen([activate, "-E", "PYTHONPATH", "-l", f"127.0.0.1:{port}",
                           sys.executable, "-m",
                           "sockferry", "tftp-serve", str(tmp_path)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stderr is not None
        assert proc.stderr.readline().startswith("Listening on ")
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            _, err = proc.communicate(timeout=30)  # the first client starts the server
    assert proc.returncode == 2, err
    assert "is a AF_INET SOCK_STREAM socket; sockferry tftp-serve needs datagram sockets " \
        "(ListenDatagram=): fix the .socket unit" in err
    ours = [line for line in err.splitlines() if line.startswith("sockferry")]
    assert len(ours) == 1 and "Traceback" not in err


def test_variables_for_another_process_are_ignored_and_cleared() -> None:
    env = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "x"}
    assert systemd.inherited_sockets(socket.SOCK_STREAM, "test", env) == []
    assert env == {}  # nothing started from here takes them for its own
    assert systemd.inherited_sockets(socket.SOCK_STREAM, "test", {}) == []


def test_notify_reaches_an_abstract_socket_and_is_quiet_without_one() -> None:
    name = f"sockferry-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert systemd.notify("STATUS=serving", {"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(100) == b"STATUS=serving"
    assert not systemd.notify("READY=1", {})
    assert not systemd.notify("READY=1", {"NOTIFY_SOCKET": "relative/path"})


UNITS = Path(__file__).resolve().parent.parent / "contrib" / "systemd"


def test_the_unit_files_verify_and_are_hardened(tmp_path: Path) -> None:
    """``systemd-analyze verify`` on the units as shipped (ExecStart pointed at this
    installation's sockferry), and an exposure score of 2.0 or less (\"OK\") for both."""
    analyze = require_program("systemd-analyze")
    executable = Path(sys.executable).parent / "sockferry"
    assert executable.exists(), executable
    for unit in UNITS.iterdir():
        text = unit.read_text().replace("/usr/local/bin/sockferry", str(executable))
        name = unit.name.replace("@.", "@srv-files.")  # an instance, as systemctl starts
        (tmp_path / name).write_text(text)
    units = sorted(str(p) for p in tmp_path.iterdir())
    assert len(units) == 3, units
    verify = subprocess.run([analyze, "verify", "--man=no", *units], capture_output=True,
                            text=True, timeout=60, check=False)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    for service in ("sockferry-tftp.service", "sockferry-serve@srv-files.service"):
        security = subprocess.run([analyze, "security", "--offline=yes",
                                   str(tmp_path / service)], capture_output=True, text=True,
                                  timeout=60, check=False)
        match = re.search(r"Overall exposure level for \S+: (\d+\.\d)", security.stdout)
        assert match, security.stdout + security.stderr
        assert float(match.group(1)) <= 2.0, security.stdout
