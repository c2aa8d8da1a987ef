"""``sockferry probe`` against real listeners."""

from __future__ import annotations

import socket
from pathlib import Path

from sockferry.cli.runtime import ExitCode
from tests.ferry.harness import run_cli


def test_probe_reports_each_address_and_answers() -> None:
    with socket.socket(socket.AF_INET6) as v6, socket.socket() as v4:
        v4.bind(("127.0.0.1", 0))
        port = v4.getsockname()[1]
        v4.listen()
        v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            v6.bind(("::1", port))
            v6.listen()
        except OSError:
            v6.close()  # the port is taken on ::1; the probe then reports a refusal
        code, out, err = run_cli("probe", "--timeout", "2", f"localhost:{port}")
    assert code == ExitCode.OK, err
    assert f"returned 2 addresses:\n  [::1]:{port}\n  127.0.0.1:{port}" in out
    line = next(x for x in out.splitlines() if x.startswith(f"127.0.0.1:{port} (IPv4)"))
    assert "connected in" in line and f"peer 127.0.0.1:{port}" in line
    assert "local 127.0.0.1:" in line


def test_probe_nothing_answers() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        code, out, _ = run_cli("probe", f"127.0.0.1:{port}")
    assert code == ExitCode.NETWORK
    assert f"connection refused by 127.0.0.1:{port} — is the server running?" in out


def test_probe_unix_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        listener.listen()
        code, out, _ = run_cli("probe", f"unix:{path}")
    assert code == ExitCode.OK
    assert f"unix:{path} (unix): connected" in out


def test_probe_bad_address_is_usage_error() -> None:
    code, _, err = run_cli("probe", "host:notaport")
    assert code == ExitCode.USAGE
    assert "'notaport' is not a port number" in err


def test_help_and_unknown_command() -> None:
    code, out, _ = run_cli("--help")
    assert code == 0 and "Exit codes" in out
    code, out, _ = run_cli("--version")
    assert code == 0 and out.startswith("sockferry 0.")
    code, _, err = run_cli("frobnicate")
    assert code == ExitCode.USAGE and "invalid choice" in err
