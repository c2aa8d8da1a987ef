"""``send - HOST:NAME`` and ``get HOST:NAME -`` through real pipes to a real server."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from sockferry.cli.runtime import ExitCode
from sockferry.ferry import messages as m
from tests.ferry.harness import ServerThread, write_token

STREAM_BYTES = 100 * 1024 * 1024
PIPE_TIMEOUT_S = 120


def _cli(port: int, token: Path, *argv: str) -> list[str]:
    return [sys.executable, "-m", "sockferry", *argv, "-P", str(port), "--token-file",
            str(token)]


def _producer(seed: int, count: int) -> subprocess.Popen[bytes]:
    """A separate process writing ``count`` pseudo-random bytes to its stdout pipe."""
    code = ("import random, sys\n"
            f"r = random.Random({seed}); left = {count}\n"
            "while left:\n"
            "    n = min(left, 1 << 20); sys.stdout.buffer.write(r.randbytes(n)); left -= n\n")
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)


def _expected_digest(seed: int, count: int) -> str:
    import random  # noqa: PLC0415

    r, left, digest = random.Random(seed), count, hashlib.sha256()
    while left:
        n = min(left, 1 << 20)
        digest.update(r.randbytes(n))
        left -= n
    return digest.hexdigest()


def test_100_mib_through_pipes_both_ways(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    token = write_token(tmp_path / "token")
    spool = tmp_path / "tmp"
    spool.mkdir()
    env = dict(os.environ, TMPDIR=str(spool))
    expected = _expected_digest(7, STREAM_BYTES)
    with ServerThread(root) as server:
        producer = _producer(7, STREAM_BYTES)
        assert producer.stdout is not None
        send = subprocess.run(_cli(server.port, token, "send", "-v", "-", ":backup.bin"),
                              stdin=producer.stdout, capture_output=True, env=env,
                              timeout=PIPE_TIMEOUT_S, check=False)
        producer.stdout.close()
        assert producer.wait(PIPE_TIMEOUT_S) == 0
        assert send.returncode == ExitCode.OK, send.stderr
        assert b"sent standard input -> backup.bin" in send.stdout
        assert (root / "backup.bin").stat().st_size == STREAM_BYTES
        assert (root / "backup.bin").stat().st_mode & 0o777 == 0o666 & ~_umask() & ~0o022
        assert list(spool.iterdir()) == [], "the spooled copy of stdin is removed"

        get = subprocess.Popen(_cli(server.port, token, "get", "-v", ":backup.bin", "-"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        assert get.stdout is not None
        digest, total = hashlib.sha256(), 0
        while chunk := get.stdout.read(1 << 20):
            digest.update(chunk)
            total += len(chunk)
        _, err = get.communicate(timeout=PIPE_TIMEOUT_S)
    assert get.returncode == ExitCode.OK, err
    assert total == STREAM_BYTES
    assert digest.hexdigest() == expected
    # -v's per-file line and the summary go to stderr: stdout is the file alone.
    assert b"received backup.bin -> standard output" in err
    assert list(spool.iterdir()) == []


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_reader_that_leaves_early_ends_quietly(tmp_path: Path) -> None:
    token = write_token(tmp_path / "token")
    (tmp_path / "big.bin").write_bytes(os.urandom(8 * 1024 * 1024))
    with ServerThread(tmp_path) as server:
        result = subprocess.run(
            ["bash", "-o", "pipefail", "-c",
             " ".join(_cli(server.port, token, "get", ":big.bin", "-")) + " | head -c 10"],
            capture_output=True, timeout=PIPE_TIMEOUT_S, check=False)
    assert len(result.stdout) == 10
    assert result.returncode == ExitCode.STORAGE  # not everything was delivered
    assert b"Traceback" not in result.stderr
    assert result.stderr == b""


def test_a_file_that_fails_never_reaches_stdout(tmp_path: Path) -> None:
    token = write_token(tmp_path / "token")
    with ServerThread(tmp_path) as server:
        result = subprocess.run(_cli(server.port, token, "get", ":missing", "-"),
                                capture_output=True, timeout=PIPE_TIMEOUT_S, check=False)
    assert result.returncode == ExitCode.REFUSED
    assert result.stdout == b""
    assert b"'missing' does not exist" in result.stderr


@pytest.mark.parametrize(("argv", "message"), [
    (["send", "-", ":"], "send - needs the name of the file to create"),
    (["send", "-", ":dir/"], "send - needs the name of the file to create"),
    (["send", "-", ":sub"], "'sub' is a directory on the server"),
    (["send", "-r", "-", ":x"], "send - carries one file: drop -r"),
    (["send", "--resume", "-", ":x"], "cannot resume or retry: a pipe cannot be read again"),
    (["get", ":a", ":b", "-"], "give one source"),
])
def test_pipe_misuse_is_one_sentence(tmp_path: Path, argv: list[str], message: str) -> None:
    token = write_token(tmp_path / "token")
    (tmp_path / "sub").mkdir()
    with ServerThread(tmp_path) as server:
        result = subprocess.run(_cli(server.port, token, *argv), input=b"data",
                                capture_output=True, timeout=PIPE_TIMEOUT_S, check=False)
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert message.encode() in result.stderr
    assert b"Traceback" not in result.stderr
    assert not (tmp_path / "x").exists()


def _temporaries(root: Path) -> list[Path]:
    return list(root.rglob(".sockferry-*.part"))


def test_stdin_streams_before_it_ends(tmp_path: Path) -> None:
    """The server holds bytes of the upload while standard input is still open: the
    producer writes 8 MiB, waits until the server's temporary has grown, then ends."""
    root = tmp_path / "root"
    root.mkdir()
    token = write_token(tmp_path / "token")
    code = ("import os, sys, time, glob\n"
            "sys.stdout.buffer.write(b'a' * (8 << 20)); sys.stdout.flush()\n"
            "deadline = time.monotonic() + 30\n"
            f"pattern = {str(root / '.sockferry-*.part')!r}\n"
            "while not any(os.path.getsize(p) >= 1 << 20 for p in glob.glob(pattern)):\n"
            "    if time.monotonic() > deadline: sys.exit(3)\n"
            "    time.sleep(0.01)\n"
            "sys.stdout.buffer.write(b'b' * 1000)\n")
    with ServerThread(root) as server:
        producer = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
        assert producer.stdout is not None
        send = subprocess.run(_cli(server.port, token, "send", "-", ":stream.bin"),
                              stdin=producer.stdout, capture_output=True,
                              timeout=PIPE_TIMEOUT_S, check=False)
        producer.stdout.close()
        assert producer.wait(PIPE_TIMEOUT_S) == 0, "the server never held streamed bytes"
    assert send.returncode == ExitCode.OK, send.stderr
    assert (root / "stream.bin").read_bytes() == b"a" * (8 << 20) + b"b" * 1000
    assert _temporaries(root) == []


def test_an_empty_stream_makes_an_empty_file(tmp_path: Path) -> None:
    token = write_token(tmp_path / "token")
    with ServerThread(tmp_path) as server:
        send = subprocess.run(_cli(server.port, token, "send", "-", ":empty"), input=b"",
                              capture_output=True, timeout=PIPE_TIMEOUT_S, check=False)
    assert send.returncode == ExitCode.OK, send.stderr
    assert (tmp_path / "empty").read_bytes() == b""


def test_an_older_server_gets_the_stream_spooled(tmp_path: Path) -> None:
    """A server without STREAM (every server before it) still gets ``send -``."""
    root = tmp_path / "root"
    root.mkdir()
    token = write_token(tmp_path / "token")
    body = os.urandom(3 * 1024 * 1024 + 5)
    with ServerThread(root, features=m.ALL_FEATURES & ~m.Feature.STREAM) as server:
        send = subprocess.run(_cli(server.port, token, "send", "-v", "-", ":old.bin"),
                              input=body, capture_output=True, timeout=PIPE_TIMEOUT_S,
                              check=False)
    assert send.returncode == ExitCode.OK, send.stderr
    assert b"does not take streams" in send.stderr
    assert (root / "old.bin").read_bytes() == body


ENDLESS = ("import sys\n"
           "try:\n"
           "    while True: sys.stdout.buffer.write(b'x' * 65536)\n"
           "except BrokenPipeError:\n"
           "    pass\n")


@pytest.mark.parametrize(("limit", "message"), [
    ({"max_file_size": 2 * 1024 * 1024}, b"went over 2097152 bytes"),
    ({"max_bytes_per_connection": 3 * 1024 * 1024}, b"--max-bytes-per-connection"),
    ({"quota": 4 * 1024 * 1024}, b"quota"),
])
def test_a_stream_over_a_limit_is_refused_on_the_way(tmp_path: Path, limit: dict[str, int],
                                                     message: bytes) -> None:
    """An endless stdin against the server's size limits: refused once over, nothing
    left on the server, and the client ends although its stdin never does."""
    root = tmp_path / "root"
    root.mkdir()
    token = write_token(tmp_path / "token")
    with ServerThread(root, **limit) as server:
        producer = subprocess.Popen([sys.executable, "-c", ENDLESS], stdout=subprocess.PIPE)
        assert producer.stdout is not None
        try:
            send = subprocess.run(_cli(server.port, token, "send", "-", ":huge.bin"),
                                  stdin=producer.stdout, capture_output=True,
                                  timeout=PIPE_TIMEOUT_S, check=False)
        finally:
            producer.kill()
            producer.wait(PIPE_TIMEOUT_S)
            producer.stdout.close()
        logs = server.logs
    assert send.returncode == ExitCode.REFUSED, send.stderr
    assert message in send.stderr
    assert b"Traceback" not in send.stderr
    assert list(root.iterdir()) == []
    assert any("huge.bin" in line and "refused" in line for line in logs), logs


def test_a_device_or_named_pipe_as_destination_is_written_into(tmp_path: Path) -> None:
    """As cp and scp do: `get HOST:F /dev/null` once replaced the system's /dev/null by
    the renamed temporary of an atomic write.  A private null device and a FIFO stand in
    for it here (making a device needs root, as this suite runs)."""
    body = os.urandom(3 * 1024 * 1024 + 5)
    (tmp_path / "f").write_bytes(body)
    null = tmp_path / "null"
    os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    token = write_token(tmp_path / "token")
    with ServerThread(tmp_path) as server:
        result = subprocess.run(_cli(server.port, token, "get", ":f", str(null)),
                                capture_output=True, timeout=PIPE_TIMEOUT_S, check=False)
        assert result.returncode == ExitCode.OK, result.stderr
        assert stat.S_ISCHR(null.lstat().st_mode)
        with subprocess.Popen([sys.executable, "-c", "import sys, hashlib; print(hashlib."
                               f"sha256(open({str(fifo)!r}, 'rb').read()).hexdigest())"],
                              stdout=subprocess.PIPE, text=True) as reader:
            result = subprocess.run(_cli(server.port, token, "get", ":f", str(fifo)),
                                    capture_output=True, timeout=PIPE_TIMEOUT_S, check=False)
            out, _ = reader.communicate(timeout=PIPE_TIMEOUT_S)
        assert result.returncode == ExitCode.OK, result.stderr
        assert out.strip() == hashlib.sha256(body).hexdigest()
        assert stat.S_ISFIFO(fifo.lstat().st_mode)
        result = subprocess.run(_cli(server.port, token, "get", "-r", ":f", str(null)),
                                capture_output=True, timeout=PIPE_TIMEOUT_S, check=False)
    assert result.returncode == ExitCode.USAGE
    assert b"carries one file: drop -r" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "fifo", "null", "token"]


def test_a_link_to_a_file_as_destination_is_written_through(tmp_path: Path) -> None:
    """As cp does: the link stays a link (/dev/stdout redirected to a file is one, which
    the system needs kept), and the file it names gets the new content."""
    (tmp_path / "f").write_text("new content")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "old.txt").write_text("old")
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere" / "old.txt")
    token = write_token(tmp_path / "token")
    with ServerThread(tmp_path) as server:
        result = subprocess.run(_cli(server.port, token, "get", ":f", str(link)),
                                capture_output=True, timeout=PIPE_TIMEOUT_S, check=False)
        assert result.returncode == ExitCode.OK, result.stderr
    assert link.is_symlink() and link.read_text() == "new content"
    assert (tmp_path / "elsewhere" / "old.txt").read_text() == "new content"
    assert sorted(p.name for p in (tmp_path / "elsewhere").iterdir()) == ["old.txt"]
