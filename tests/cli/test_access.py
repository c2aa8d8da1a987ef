"""--allow/--deny of sctp-serve and tftp-serve through the real command line."""

from __future__ import annotations

import subprocess
from pathlib import Path

from sockferry.cli.runtime import ExitCode
from tests.cli.server_process import running
from tests.conftest import require_program
from tests.ferry.harness import run_cli


def test_sctp_serve_aborts_a_denied_association_and_shows_nothing_of_it() -> None:
    with running("sctp-serve", "--transport", "udp", "--listen", "127.0.0.1:0",
                 "--echo", "--deny", "127.0.0.0/8") as server:
        port = server.wait_for(r"SCTP server on 127\.0\.0\.1:(\d+)").group(1)
        code, out, err = run_cli("sctp-send", "--transport", "udp", f"127.0.0.1:{port}",
                                 "secret")
        server.wait_for(r"\[assoc \d+\] refused 127\.0\.0\.1:\d+: not allowed by "
                        "--allow/--deny")
        _status, log = server.stop()
    assert code == ExitCode.REFUSED
    assert "not allowed by the server's --allow/--deny" in err
    assert "secret" not in out and "secret" not in log
    assert "COMM_UP" not in log


def test_tftp_serve_allow_list_serves_curl(tmp_path: Path) -> None:
    curl = require_program("curl")
    (tmp_path / "f").write_bytes(b"data\n")
    with running("tftp-serve", str(tmp_path), "--listen", "127.0.0.1:0",
                 "--allow", "127.0.0.1", "--deny", "10.0.0.0/8") as server:
        port = server.wait_for(r"over TFTP on 127\.0\.0\.1:(\d+)$").group(1)
        result = subprocess.run([curl, "-sS", "--max-time", "20",
                                 f"tftp://127.0.0.1:{port}/f"], capture_output=True,
                                check=False)
        _status, log = server.stop()
    assert result.returncode == 0 and result.stdout == b"data\n"
    assert "access: allow 127.0.0.1/32; deny 10.0.0.0/8" in log


def test_bad_network_is_a_usage_error() -> None:
    code, _, err = run_cli("serve", ".", "--allow", "10.0.0.1/8")
    assert code == ExitCode.USAGE
    assert err.startswith("sockferry: error: '10.0.0.1/8' is not a network: write an "
                          "address or ADDRESS/PREFIX")
