"""--user/--group on every server: started as root, each binds, then runs as nobody
(checked in /proc/PID/status) and keeps serving; as root without --user, one warning."""

from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path

import pytest

from sockferry.cli.runtime import ExitCode
from tests.cli.server_process import Server, running
from tests.conftest import require_program
from tests.ferry.harness import run_cli, write_token

if os.geteuid() != 0:  # CI and this project's machines run the suite as root
    if os.environ.get("SOCKFERRY_REQUIRE_PEERS") == "1":
        pytest.fail("the privilege tests need root (SOCKFERRY_REQUIRE_PEERS=1)",
                    pytrace=False)
    pytest.skip("dropping privileges needs root", allow_module_level=True)

NOBODY = pwd.getpwnam("nobody")


def assert_nobody(server: Server) -> None:
    ids = server.ids()
    assert ids["Uid"] == [NOBODY.pw_uid] * 4
    assert ids["Gid"] == [NOBODY.pw_gid] * 4
    assert ids["Groups"] == [NOBODY.pw_gid]


def nobody_root(tmp_path: Path) -> Path:
    """A root directory the dropped server may write; the directories above it stay
    root's (pytest makes them 0700): the server reaches it through the descriptor it
    opened as root."""
    root = tmp_path / "root"
    root.mkdir()
    os.chown(root, NOBODY.pw_uid, NOBODY.pw_gid)
    return root


DROPPED = (r"dropped privileges: now user nobody \(uid 65534\), group \S+ \(gid 65534\); "
           "root cannot be regained")


def test_serve_drops_to_nobody_and_still_transfers(tmp_path: Path) -> None:
    root = nobody_root(tmp_path)
    token = write_token(tmp_path / "token")  # root's, mode 0600: read before the drop
    (tmp_path / "in").mkdir()
    source = tmp_path / "in" / "data.bin"
    source.write_bytes(os.urandom(3 << 20))
    (tmp_path / "in" / "small").write_bytes(b"tiny")  # PUT_INLINE: sealed with its mode
    with running("serve", str(root), "--listen", "127.0.0.1:0", "--token-file", str(token),
                 "--user", "nobody") as server:
        port = server.wait_for(r"listening on 127\.0\.0\.1:(\d+)").group(1)
        server.wait_for(DROPPED)
        assert_nobody(server)
        base = ("-P", port, "--token-file", str(token))
        code, _, err = run_cli("send", "-r", *base, str(tmp_path / "in"), "127.0.0.1:")
        assert code == ExitCode.OK, err
        code, _, err = run_cli("get", *base, "127.0.0.1:in/data.bin", str(tmp_path / "back"))
        assert code == ExitCode.OK, err
        assert_nobody(server)
    assert (tmp_path / "back").read_bytes() == source.read_bytes()
    written = root / "in" / "data.bin"
    assert (written.stat().st_uid, written.stat().st_gid) == (NOBODY.pw_uid, NOBODY.pw_gid)
    status, log = server.stop()
    assert status == 0 and "Traceback" not in log and "running as root" not in log


def test_tftp_serve_on_port_69_serves_curl_as_nobody(tmp_path: Path) -> None:
    curl = require_program("curl")
    root = nobody_root(tmp_path)
    (root / "boot.img").write_bytes(os.urandom(200_000))
    # A loopback address of its own: port 69 of 127.0.0.1 may be taken on a shared machine.
    upload = tmp_path / "up.bin"
    upload.write_bytes(os.urandom(100_000))
    with running("tftp-serve", str(root), "--listen", "127.0.0.69:69", "--user", "nobody",
                 "--group", "nogroup", "--allow-upload", "create") as server:
        server.wait_for(r"serving .* over TFTP on 127\.0\.0\.69:69$")
        server.wait_for(DROPPED)
        assert_nobody(server)
        copy = tmp_path / "copy"
        result = subprocess.run([curl, "-sS", "--max-time", "30", "-o", str(copy),
                                 "tftp://127.0.0.69/boot.img"], capture_output=True,
                                text=True, check=False)
        assert result.returncode == 0, result.stderr
        assert copy.read_bytes() == (root / "boot.img").read_bytes()
        result = subprocess.run([curl, "-sS", "--max-time", "30", "-T", str(upload),
                                 "tftp://127.0.0.69/up.bin"], capture_output=True,
                                text=True, check=False)
        assert result.returncode == 0, result.stderr
        assert_nobody(server)
        status, log = server.stop()
    assert status == 0 and "Traceback" not in log
    stored = root / "up.bin"
    assert stored.read_bytes() == upload.read_bytes()
    assert stored.stat().st_uid == NOBODY.pw_uid


def test_sctp_serve_drops_to_nobody_and_echoes(tmp_path: Path) -> None:
    with running("sctp-serve", "--transport", "udp", "--listen", "127.0.0.1:0", "--echo",
                 "--user", "65534") as server:
        port = server.wait_for(r"SCTP server on 127\.0\.0\.1:(\d+)").group(1)
        server.wait_for(DROPPED)
        assert_nobody(server)
        code, out, err = run_cli("sctp-send", "--transport", "udp", f"127.0.0.1:{port}",
                                 "hello")
        assert code == ExitCode.OK, err
        assert "hello" in out  # the echo
        server.wait_for(r"\[assoc \d+\] stream 0 ppid 0 from .*: hello")


def test_root_without_user_warns_once_naming_the_flag(tmp_path: Path) -> None:
    token = write_token(tmp_path / "token")
    with running("serve", str(tmp_path), "--listen", "127.0.0.1:0",
                 "--token-file", str(token)) as server:
        server.wait_for("listening on")
        warning = server.wait_for("running as root").string
        _status, log = server.stop()
    assert "--user NAME" in warning and "WARNING" in warning
    assert log.count("running as root") == 1


@pytest.mark.parametrize(("argv", "sentence"), [
    (("--user", "no-such-user-here"), "--user no-such-user-here: no such user on this "
     "machine (see getent passwd)"),
    (("--user", "nobody", "--group", "no-such-group-here"), "--group no-such-group-here: "
     "no such group on this machine (see getent group)"),
    (("--group", "nogroup"), "--group needs --user: name the user to run as too"),
    (("--user", "root"), "--user root is root: name an unprivileged user, such as nobody"),
])
def test_bad_identities_are_usage_errors_before_binding(tmp_path: Path, argv: tuple[str, ...],
                                                        sentence: str) -> None:
    code, _, err = run_cli("tftp-serve", str(tmp_path), "--listen", "127.0.0.1:0", *argv)
    assert (code, err) == (ExitCode.USAGE, f"sockferry: error: {sentence}\n")
