"""The tftp-serve, tftp-get and tftp-put commands: exit codes, sentences, log lines."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sockferry.cli import main
from sockferry.cli.runtime import ExitCode
from tests.conftest import wait_until


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


class ServerProcess:
    def __init__(self, root: Path, *extra: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sockferry", "tftp-serve", str(root),
             "--listen", "127.0.0.1:0", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        match = re.search(r"on 127\.0\.0\.1:(\d+)$", line.strip())
        assert match, f"unexpected first line {line!r}"
        self.address = f"127.0.0.1:{match.group(1)}"

    def stop(self) -> tuple[int, str]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        _, err = self.process.communicate(timeout=15)
        return self.process.returncode, err


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, ServerProcess]]:
    root = tmp_path / "root"
    root.mkdir()
    (root / "file.bin").write_bytes(os.urandom(300_000))
    server = ServerProcess(root, "--allow-upload", "create")
    try:
        yield root, server
    finally:
        server.stop()


def test_get_put_and_one_log_line_each(served: tuple[Path, ServerProcess],
                                       tmp_path: Path) -> None:
    root, server = served
    local = tmp_path / "copy.bin"
    # The summary: on stderr, with -v (or on a terminal); nothing on stdout.
    code, out, err = run_cli("tftp-get", "--windowsize", "8", server.address, "file.bin",
                             str(local), "-v")
    assert (code, out) == (ExitCode.OK, "")
    assert local.read_bytes() == (root / "file.bin").read_bytes()
    assert err.startswith(f"sockferry: received 'file.bin' into {local}: 300000 bytes in ")
    assert "blksize=1468 windowsize=8" in err
    code, out, err = run_cli("tftp-put", str(local), server.address, "again.bin")
    assert (code, out, err) == (ExitCode.OK, "", "")  # not a terminal, no -v: no summary
    assert (root / "again.bin").read_bytes() == local.read_bytes()
    status, log = server.stop()
    assert status == 0
    lines = [line for line in log.splitlines() if "sockferry.tftp" in line]
    assert len(lines) == 2, log
    assert re.search(r"127\.0\.0\.1:\d+ read 'file\.bin' octet blksize=1468 windowsize=8 "
                     r"tsize=300000: 300000 bytes in [\d.]+ s \([\d.]+ MB/s\).*, ok$", lines[0])
    assert re.search(r"write 'again\.bin' octet .*: 300000 bytes .*, ok$", lines[1])


def test_get_into_a_directory_uses_the_remote_name(served: tuple[Path, ServerProcess],
                                                   tmp_path: Path) -> None:
    _, server = served
    code, _, _ = run_cli("tftp-get", server.address, "file.bin", str(tmp_path))
    assert code == ExitCode.OK and (tmp_path / "file.bin").stat().st_size == 300_000


def test_refusal_is_one_sentence_and_leaves_no_file(served: tuple[Path, ServerProcess],
                                                    tmp_path: Path) -> None:
    _, server = served
    local = tmp_path / "nothing"
    code, out, err = run_cli("tftp-get", server.address, "missing.bin", str(local))
    assert code == ExitCode.REFUSED and out == ""
    assert err == (f"sockferry: error: {server.address} refused 'missing.bin': "
                   "'missing.bin' does not exist (TFTP error 1, file not found)\n")
    assert os.listdir(tmp_path) == ["root"]
    code, _, err = run_cli("tftp-put", str(tmp_path / "root" / "file.bin"), server.address,
                           "../escape")
    assert code == ExitCode.REFUSED and "leads outside the server's root" in err


def test_no_server_times_out_with_advice(tmp_path: Path) -> None:
    with __import__("socket").socket(2, 2) as sock:  # a port with nobody behind it
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        code, _, err = run_cli("tftp-get", "--timeout", "1", "--retries", "1",
                               f"127.0.0.1:{port}", "x", str(tmp_path / "x"))
    assert code == ExitCode.TIMEOUT
    assert "is a TFTP server running there?" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_server_killed_mid_transfer_leaves_no_partial_file(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "big").write_bytes(os.urandom(50_000_000))
    server = ServerProcess(root)
    local = tmp_path / "big.copy"
    child = subprocess.Popen([sys.executable, "-m", "sockferry", "tftp-get", "--timeout", "1",
                              "--retries", "2", "-q", server.address, "big", str(local)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Kill the server once bytes have reached the client's temporary file.
    wait_until(lambda: any(p.startswith(".sockferry-") and (tmp_path / p).stat().st_size
                           for p in os.listdir(tmp_path)), 20,
               "bytes in the client's temporary file")
    server.process.kill()
    server.stop()
    _, err = child.communicate(timeout=30)
    # On loopback the kernel reports the closed port at once (ICMP port unreachable on
    # the connected socket); elsewhere the retries run out.
    if child.returncode == ExitCode.NETWORK:
        assert "connection refused by" in err and "is the server running?" in err
    else:
        assert child.returncode == ExitCode.TIMEOUT and "stopped answering" in err, err
    assert sorted(os.listdir(tmp_path)) == ["root"]


@pytest.mark.parametrize(("argv", "message"), [
    (["tftp-get"], "the following arguments are required"),
    (["tftp-get", "--blksize", "4", "h", "f"], "'4' is not a whole number from 8 to 65464"),
    (["tftp-get", "--windowsize", "0", "h", "f"], "from 1 to 4096"),
    (["tftp-put", "--mode", "mail", "f", "h"], "invalid choice"),
    (["tftp-get", "unix:/x", "f"], "TFTP runs over UDP"),
    (["tftp-serve", "/no/such/dir"], "is not a directory"),
    (["tftp-serve"], "give the directory to serve (ROOT) or an S3 bucket (--store URL)"),
    (["tftp-serve", ".", "--store", "s3://bucket"], "give ROOT or --store, not both"),
    (["tftp-serve", "--store", "/srv/tftp"], "--store '/srv/tftp' is not an S3 location"),
    (["tftp-serve", "--timeout", "0", "."], "from 1 to 255"),
])
def test_usage_errors(argv: list[str], message: str) -> None:
    code, _, err = run_cli(*argv)
    assert code == ExitCode.USAGE and message in err and "Traceback" not in err


def test_local_file_missing_for_put(tmp_path: Path) -> None:
    code, _, err = run_cli("tftp-put", str(tmp_path / "absent"), "127.0.0.1:9")
    assert code == ExitCode.STORAGE and "does not exist" in err


def test_quiet_get_and_put_print_nothing_on_success(served: tuple[Path, ServerProcess],
                                                    tmp_path: Path) -> None:
    root, server = served
    local = tmp_path / "copy.bin"
    result = subprocess.run([sys.executable, "-m", "sockferry", "tftp-get", "-q",
                             server.address, "file.bin", str(local)],
                            capture_output=True, timeout=60, check=False)
    assert (result.returncode, result.stdout, result.stderr) == (ExitCode.OK, b"", b"")
    assert local.read_bytes() == (root / "file.bin").read_bytes()
    assert run_cli("tftp-put", "-q", str(local), server.address, "q.bin") == (
        ExitCode.OK, "", "")
    assert (root / "q.bin").read_bytes() == local.read_bytes()


@pytest.mark.parametrize("mode, new_ok, existing_ok", [
    ("create", True, False), ("overwrite", False, True), ("any", True, True)])
def test_upload_modes_create_overwrite_any(tmp_path: Path, mode: str, new_ok: bool,
                                           existing_ok: bool) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "old.txt").write_bytes(b"old\n")
    local = tmp_path / "up.txt"
    local.write_bytes(b"new contents\n")
    server = ServerProcess(root, "--allow-upload", mode)
    try:
        new = run_cli("tftp-put", str(local), server.address, "fresh.txt")
        existing = run_cli("tftp-put", str(local), server.address, "old.txt")
    finally:
        server.stop()
    assert (new[0] == ExitCode.OK) is new_ok, new
    assert (existing[0] == ExitCode.OK) is existing_ok, existing
    assert (root / "fresh.txt").exists() is new_ok
    assert (root / "old.txt").read_bytes() == (b"new contents\n" if existing_ok
                                               else b"old\n")
    if not new_ok:
        assert new[0] == ExitCode.REFUSED
        assert "only overwrites existing files (TFTP error 1" in new[2]
    if not existing_ok:
        assert existing[0] == ExitCode.REFUSED
        assert "only creates new files (TFTP error 6, file exists)" in existing[2]
    assert sorted(os.listdir(root)) == sorted(["old.txt"] + ["fresh.txt"] * new_ok)
