"""``sockferry token new|show`` and the failed-authentication message, as a user runs
them: ``python -m sockferry`` in a child process, with its own HOME."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from sockferry.cli.runtime import ExitCode
from tests.cli.server_process import running


def sockferry(home: Path, *argv: str,
              token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("SOCKFERRY_TOKEN", "XDG_CONFIG_HOME")}
    env["HOME"] = str(home)
    if token is not None:
        env["SOCKFERRY_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "sockferry", *argv], capture_output=True,
                          text=True, env=env, timeout=60, check=False)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


def test_new_writes_a_random_token_mode_0600_and_says_where(home: Path) -> None:
    result = sockferry(home, "token", "new")
    default = home / ".config" / "sockferry" / "token"
    assert result.returncode == ExitCode.OK, result.stderr
    assert str(default) in result.stderr and result.stdout == ""
    assert stat.S_IMODE(default.stat().st_mode) == 0o600
    token = default.read_text().strip()
    assert len(token) >= 40
    other = home / "other"
    assert sockferry(home, "token", "new", str(other)).returncode == ExitCode.OK
    assert other.read_text().strip() != token


def test_new_refuses_to_overwrite_unless_forced(home: Path) -> None:
    path = home / "tok"
    assert sockferry(home, "token", "new", str(path)).returncode == ExitCode.OK
    first = path.read_text()
    refused = sockferry(home, "token", "new", str(path))
    assert refused.returncode == ExitCode.USAGE
    assert refused.stderr.startswith(f"sockferry: error: {path} already exists — pass "
                                     "--force")
    assert path.read_text() == first
    forced = sockferry(home, "token", "new", str(path), "--force")
    assert forced.returncode == ExitCode.OK, forced.stderr
    assert path.read_text() != first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in home.iterdir()) == ["tok"]  # no temporary file left


def test_show_prints_the_token_and_a_hint_for_clients(home: Path) -> None:
    path = home / "tok"
    assert sockferry(home, "token", "new", "--token-file", str(path)).returncode == 0
    shown = sockferry(home, "token", "show", "--token-file", str(path))
    assert shown.returncode == ExitCode.OK, shown.stderr
    assert shown.stdout == path.read_text()
    hint = shown.stderr.splitlines()
    assert len(hint) == 1
    assert str(home / ".config" / "sockferry" / "token") in hint[0]
    assert "SOCKFERRY_TOKEN" in hint[0]


def test_show_of_a_missing_or_unsafe_file_fails_plainly(home: Path) -> None:
    missing = sockferry(home, "token", "show")
    assert missing.returncode == ExitCode.USAGE  # the README's "missing token file"
    assert "cannot read the token file" in missing.stderr
    assert missing.stderr.count("\n") == 1 and "Traceback" not in missing.stderr
    path = home / "tok"
    assert sockferry(home, "token", "new", str(path)).returncode == ExitCode.OK
    path.chmod(0o644)
    unsafe = sockferry(home, "token", "show", str(path))
    assert unsafe.returncode == ExitCode.USAGE
    assert f"chmod 600 {path}" in unsafe.stderr


def test_a_client_with_another_token_is_told_what_to_check(home: Path,
                                                           tmp_path: Path) -> None:
    server_token = tmp_path / "server-token"
    client_token = tmp_path / "client-token"
    for path in (server_token, client_token):
        assert sockferry(home, "token", "new", str(path)).returncode == ExitCode.OK
    root = tmp_path / "root"
    root.mkdir()
    with running("serve", str(root), "--listen", "127.0.0.1:0", "--token-file",
                 str(server_token)) as server:
        port = server.wait_for(r"listening on 127\.0\.0\.1:(\d+)").group(1)
        by_file = sockferry(home, "ls", "--token-file", str(client_token),
                            "-P", port, "127.0.0.1:")
        by_env = sockferry(home, "ls", "-P", port, "127.0.0.1:",
                           token=client_token.read_text().strip())
        right = sockferry(home, "ls", "--token-file", str(server_token),
                          "-P", port, "127.0.0.1:")
    assert right.returncode == ExitCode.OK, right.stderr
    assert by_file.returncode == ExitCode.AUTH
    assert by_file.stderr.startswith("sockferry: error: authentication failed")
    assert f"the token file {client_token}" in by_file.stderr
    assert "sockferry token show" in by_file.stderr
    assert by_env.returncode == ExitCode.AUTH
    assert "$SOCKFERRY_TOKEN" in by_env.stderr
    for result in (by_file, by_env):
        assert result.stderr.count("\n") == 1, result.stderr
