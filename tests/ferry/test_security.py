"""Hostile clients, wrong tokens, broken peers: refused cleanly, others unharmed."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest

from sockferry.cli.runtime import ExitCode
from sockferry.entries import MAX_PATH_BYTES
from sockferry.errors import AuthenticationFailed, PathRefused
from sockferry.ferry import codec
from sockferry.ferry import messages as m
from sockferry.ferry.client_session import ClientSession
from sockferry.ferry.copy_get import safe_relative
from sockferry.ferry.parser import FrameParser
from sockferry.ferry.session import ConnState
from sockferry.storage.names import is_temporary_name
from tests.conftest import wait_until
from tests.ferry.harness import (
    TOKEN,
    RawClient,
    ServerThread,
    run_cli,
    spawn_cli,
    write_token,
)

HOSTILE = [
    "/etc/passwd", "../outside/secret", "sub/../../outside/secret", "link-out/secret",
    "abs-link", "a\0b", "x" * 256, "/".join(["d"] * 2049), ".sockferry-0.part",
    "sub/../..", "..",
]


@pytest.fixture
def sandbox(tmp_path: Path) -> tuple[Path, Path]:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret").write_text("do not touch")
    (root / "link-out").symlink_to("../outside")
    (root / "abs-link").symlink_to(outside / "secret")
    return root, outside


def snapshot(path: Path) -> dict[str, tuple[int, int, float, bytes]]:
    return {str(p): (p.lstat().st_mode, p.lstat().st_size, p.lstat().st_mtime,
                     p.read_bytes() if p.is_file() and not p.is_symlink() else b"")
            for p in sorted(path.rglob("*"))}


def test_hostile_paths_are_refused_on_the_wire(sandbox: tuple[Path, Path]) -> None:
    root, outside = sandbox
    before_outside, before_root = snapshot(outside), snapshot(root)
    with ServerThread(root) as server:
        raw = RawClient(server.port)
        request = 1
        for path in HOSTILE:
            wire_path = path.encode("utf-8", "surrogateescape")
            if len(wire_path) > MAX_PATH_BYTES:
                continue  # cannot even be encoded; covered by the codec tests
            frames = [
                codec.encode(m.Put(request, path, 4, 0o4777, 0)), codec.data_header(request, 4),
                b"evil", codec.encode(m.Done(request, b"\0" * 32)),
                codec.encode(m.Mkdir(request + 1, path + "/d", 0o777)),
                codec.encode(m.Get(request + 2, path)),
                codec.encode(m.Stat(request + 3, path)),
                codec.encode(m.ListDir(request + 4, path, m.ListFlag.RECURSIVE)),
            ]
            raw.send(*frames)
            replies = raw.replies(5)
            assert len(replies) == 5, (path, replies)
            for reply in replies:
                assert isinstance(reply, m.Error), (path, reply)
                assert reply.code in (m.ErrorCode.PERMISSION, m.ErrorCode.NOT_FOUND,
                                      m.ErrorCode.IS_DIRECTORY, m.ErrorCode.NOT_A_FILE), reply
            request += 5
        # An over-long path is refused by the frame limit itself.
        raw.close()
        code, _, _ = run_cli("ls", "-P", str(server.port), "--token-file",
                             str(write_token(root.parent / "tok")), "127.0.0.1:")
        assert code == ExitCode.OK, "the server keeps serving"
    assert snapshot(outside) == before_outside
    assert snapshot(root) == before_root


def test_digest_mismatch_commits_nothing(sandbox: tuple[Path, Path]) -> None:
    root, _ = sandbox
    with ServerThread(root) as server:
        raw = RawClient(server.port)
        raw.send(codec.encode(m.Put(1, "f", 3, 0o644, 0)), codec.data_header(1, 3), b"abc",
                 codec.encode(m.Done(1, b"\1" * 32)))
        [reply] = raw.replies(1)
        raw.close()
    assert isinstance(reply, m.Error) and reply.code == m.ErrorCode.DIGEST_MISMATCH
    assert "digest mismatch for 'f'" in reply.message
    assert not (root / "f").exists()
    assert not [p for p in root.iterdir() if is_temporary_name(p.name)]


def test_garbage_and_silence_cost_only_their_connection(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    token = write_token(tmp_path / "token")
    (tmp_path / "f").write_bytes(os.urandom(100_000))
    with ServerThread(root, idle_timeout_s=1.0) as server:
        silent = socket.create_connection(("127.0.0.1", server.port))
        garbage = socket.create_connection(("127.0.0.1", server.port))
        garbage.sendall(os.urandom(5000))
        code, _, err = run_cli("send", "-P", str(server.port), "--token-file", str(token),
                               str(tmp_path / "f"), "127.0.0.1:")
        assert code == ExitCode.OK, err
        garbage.settimeout(5)
        reply = garbage.recv(65536)
        assert reply == b"" or reply[0] == m.FrameType.ERROR
        silent.settimeout(5)
        assert silent.recv(1) == b"", "the silent client is dropped after the idle timeout"
        garbage.close()
        silent.close()
    assert (root / "f").read_bytes() == (tmp_path / "f").read_bytes()


def test_connection_limit_says_busy(tmp_path: Path) -> None:
    token = write_token(tmp_path / "token")
    with ServerThread(tmp_path, max_connections=1) as server:
        holder = RawClient(server.port)
        wait_until(lambda: server.connection_count() >= 1, 5, "the server to count the "
                   "holding connection")
        code, _, err = run_cli("ls", "-P", str(server.port), "--token-file", str(token),
                               "127.0.0.1:")
        holder.close()
    assert code == ExitCode.REFUSED
    assert "server busy: 1 connections already — try again later" in err


def test_request_window_violation_closes_connection(tmp_path: Path) -> None:
    with ServerThread(tmp_path, max_requests=2) as server:
        raw = RawClient(server.port)
        raw.send(*(codec.encode(m.Get(i, f"missing{i}")) for i in range(1, 40)))
        replies = raw.replies(50, timeout_s=5)
        raw.close()
    assert any(isinstance(r, m.Error) and r.request == 0 and r.code == m.ErrorCode.BUSY
               for r in replies)


def test_wrong_token_both_ways(tmp_path: Path) -> None:
    good = write_token(tmp_path / "good")
    bad = write_token(tmp_path / "bad", b"oThEr-Wq8Zk3Vn6Rt1Yb9Lm4Xs7Pd2Gf5Hj0Ca")
    with ServerThread(tmp_path) as server:
        code, _, err = run_cli("ls", "-P", str(server.port), "--token-file", str(bad),
                               "127.0.0.1:")
        assert code == ExitCode.AUTH
        [line] = [x for x in err.splitlines() if x.startswith("sockferry: error:")]
        assert line.startswith("sockferry: error: authentication failed — ")
        assert f"the token file {bad} holds the server's token" in line
        assert run_cli("ls", "-P", str(server.port), "--token-file", str(good),
                       "127.0.0.1:")[0] == 0
        server.stop()
    summaries = [line for line in server.logs if " -> 127.0.0.1:" in line]
    assert len(summaries) == 2, server.logs
    assert "authentication failed (the client hung up" in summaries[0]
    assert "authenticated (client sockferry/" in summaries[1]


def test_forged_client_proof_is_logged(tmp_path: Path) -> None:
    with ServerThread(tmp_path) as server:
        sock = socket.create_connection(("127.0.0.1", server.port))
        client = ClientSession(TOKEN, os.urandom(32))
        sock.sendall(client.data_to_send())
        while client.state is ConnState.AWAIT_REPLY:
            client.receive_data(sock.recv(65536))
        sock.sendall(codec.encode(m.Auth(b"\0" * 32)))
        parser = FrameParser()
        sock.settimeout(5)
        [reply] = list(parser.feed(sock.recv(65536)))
        assert sock.recv(1) == b""
        sock.close()
        server.stop()
    assert reply == m.Error(0, m.ErrorCode.AUTH_FAILED, "authentication failed")
    assert any(": authentication failed; closed" in line for line in server.logs)


def test_server_with_a_different_token_is_refused_before_client_proves_itself(
        tmp_path: Path) -> None:
    """The client checks the server's proof first and never sends its own."""
    with ServerThread(tmp_path, token=b"the-server-token-differs-0123") as server:
        raw_sock = socket.create_connection(("127.0.0.1", server.port))
        client = ClientSession(TOKEN, os.urandom(32))
        raw_sock.sendall(client.data_to_send())
        with pytest.raises(AuthenticationFailed):
            while client.state is ConnState.AWAIT_REPLY:
                client.receive_data(raw_sock.recv(65536))
        assert client.data_to_send() == b""
        raw_sock.close()


def test_missing_and_unsafe_token_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        ) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "nothing-here"))
    monkeypatch.delenv("SOCKFERRY_TOKEN", raising=False)
    code, _, err = run_cli("ls", "127.0.0.1:")
    assert code == ExitCode.USAGE
    assert "no token: pass --token-file FILE, set $SOCKFERRY_TOKEN" in err
    loose = write_token(tmp_path / "loose")
    loose.chmod(0o644)
    code, _, err = run_cli("ls", "--token-file", str(loose), "127.0.0.1:")
    assert code == ExitCode.USAGE
    assert f"chmod 600 {loose}" in err


def test_token_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "nothing-here"))
    monkeypatch.setenv("SOCKFERRY_TOKEN", TOKEN.decode())
    with ServerThread(tmp_path) as server:
        assert run_cli("ls", "-P", str(server.port), "127.0.0.1:")[0] == 0


def test_serve_creates_default_token_and_client_finds_it(tmp_path: Path) -> None:
    config = tmp_path / "config"
    env = {**os.environ, "XDG_CONFIG_HOME": str(config)}
    env.pop("SOCKFERRY_TOKEN", None)
    (tmp_path / "root").mkdir()
    server = spawn_cli("serve", str(tmp_path / "root"), "--listen", "127.0.0.1:0", env=env)
    seen: list[str] = []
    try:
        port = _wait_for_port(server, seen)
        token = config / "sockferry" / "token"
        assert token.stat().st_mode & 0o777 == 0o600
        client = spawn_cli("ls", "-P", str(port), "127.0.0.1:", env=env)
        _out, err = client.communicate(timeout=30)
        assert client.returncode == 0, err
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=30)
    assert any("created a new token in" in line for line in seen)


def _wait_for_port(server: object, seen: list[str] | None = None,
                   timeout_s: float = 30.0) -> int:
    """Read the server's stderr until it says where it listens."""
    stream = server.stderr  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = stream.readline().decode()
        if seen is not None:
            seen.append(line)
        if "listening on" in line:
            return int(line.rsplit(":", 1)[1].split(",")[0])
        if not line:
            break
    raise AssertionError("server did not start")


def test_network_errors_are_one_sentence(tmp_path: Path) -> None:
    token = write_token(tmp_path / "token")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        code, _, err = run_cli("ls", "-P", str(port), "--token-file", str(token),
                               "127.0.0.1:")
    assert code == ExitCode.NETWORK
    assert err == f"sockferry: error: connection refused by 127.0.0.1:{port} — is the " \
        "server running?\n"
    code, _, err = run_cli("ls", "--token-file", str(token), "no-such-host.invalid:")
    assert code == ExitCode.NETWORK
    assert err.startswith("sockferry: error: cannot resolve 'no-such-host.invalid'")
    assert "Traceback" not in err


def test_listen_address_in_use(tmp_path: Path) -> None:
    token = write_token(tmp_path / "token")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = run_cli("serve", str(tmp_path), "--token-file", str(token),
                               "--listen", f"127.0.0.1:{port}")
    assert code == ExitCode.NETWORK
    assert f"127.0.0.1:{port} is already in use — stop the other server or pick another " \
        "port" in err


def test_client_killed_mid_upload_leaves_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    token = write_token(tmp_path / "token")
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate(0)
        for _ in range(64):
            f.write(os.urandom(4 * 1024 * 1024))
    with ServerThread(root) as server:
        # Slow the client's reads down to a crawl: its send buffer stays busy.
        client = spawn_cli("send", "-P", str(server.port), "--token-file", str(token),
                           str(big), "127.0.0.1:big.bin")
        wait_until(lambda: any(is_temporary_name(p.name) for p in root.iterdir()), 30,
                   "the upload's temporary file", interval_s=0.005)
        client.kill()
        client.communicate(timeout=10)
        wait_until(lambda: not server.connection_count(), 10,
                   "the server to notice the killed client")
        assert not (root / "big.bin").exists()
        assert not [p for p in root.iterdir() if is_temporary_name(p.name)]
        (tmp_path / "small").write_text("still serving")
        code, _, err = run_cli("send", "-P", str(server.port), "--token-file", str(token),
                               str(tmp_path / "small"), "127.0.0.1:")
        assert code == ExitCode.OK, err
    assert (root / "small").read_text() == "still serving"


def test_sigterm_waits_for_transfers_then_aborts_the_rest(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    token = write_token(tmp_path / "token")
    server = spawn_cli("serve", str(root), "--listen", "127.0.0.1:0", "--token-file",
                       str(token), "--grace", "1")
    try:
        port = _wait_for_port(server)
        raw = RawClient(port)
        raw.send(codec.encode(m.Put(1, "stalled", 1000, 0o644, 0)), codec.data_header(1, 10),
                 b"0123456789")  # and then nothing more
        deadline = time.monotonic() + 10
        while not any(is_temporary_name(p.name) for p in root.iterdir()):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        started = time.monotonic()
        server.send_signal(signal.SIGTERM)
        _out, err = server.communicate(timeout=30)
        assert server.returncode == 0
        assert time.monotonic() - started < 10
        replies = raw.replies(1, timeout_s=5)
        raw.close()
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    assert replies and isinstance(replies[0], m.Error)
    assert replies[0].code == m.ErrorCode.SHUTTING_DOWN
    assert list(root.iterdir()) == []
    log = err.decode()
    assert "aborted: the server is shutting down" in log
    assert "PUT 'stalled'" in log


@pytest.mark.parametrize("path", ["../x", "/etc/x", "a/../../x", "", "a/\0"])
def test_client_refuses_unsafe_paths_from_a_server(path: str) -> None:
    with pytest.raises(PathRefused):
        safe_relative(path)


def test_safe_relative_accepts_plain_paths() -> None:
    assert safe_relative("a/b/c.txt") == ["a", "b", "c.txt"]
