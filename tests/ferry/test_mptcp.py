"""Multipath TCP: ``--mptcp`` on loopback, its fallbacks, and two real paths between
network namespaces made for the test (one of them cut mid-transfer)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sockferry.addresses import HostPort, UnixPath
from sockferry.sockets import Multipath, StreamProtocol, connect, multipath, open_listeners
from tests.ferry.harness import ServerThread, run_cli
from tests.netns import (
    Namespace,
    TwoPaths,
    mptcp_missing_reason,
    namespace,
    netns_missing_reason,
    two_paths,
)

PORT = 2345  # inside namespaces made for the test: nothing else listens there
SERVER_READY_S = 20.0
TRANSFER_TIMEOUT_S = 120.0
POLL_S = 0.02


def need(reason: str | None) -> None:
    """Skip where the machine genuinely lacks something; in CI (SOCKFERRY_REQUIRE_PEERS=1)
    that is a failure, as in ``require_program``."""
    if reason is None:
        return
    if os.environ.get("SOCKFERRY_REQUIRE_PEERS") == "1":
        pytest.fail(f"{reason} (SOCKFERRY_REQUIRE_PEERS=1)")
    pytest.skip(reason)


@pytest.fixture
def mptcp() -> None:
    need(mptcp_missing_reason())


@pytest.fixture
def netns(mptcp: None) -> None:
    need(netns_missing_reason())


def protocol(sock: socket.socket) -> int:
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL)


async def _pair(host: str, *, listen_mptcp: bool, connect_mptcp: bool,
                ) -> tuple[socket.socket, socket.socket]:
    """(connected client socket, accepted server socket) over ``host``."""
    [listener] = await open_listeners(HostPort(host, 0), mptcp=listen_mptcp)
    with listener:
        port = listener.getsockname()[1]
        client = await connect(HostPort(host, port), 5.0, mptcp=connect_mptcp)
        accepted, _ = await asyncio.get_running_loop().sock_accept(listener)
    return client, accepted


# ---- the socket layer ------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_mptcp_at_both_ends_is_multipath(mptcp: None, host: str) -> None:
    client, accepted = asyncio.run(_pair(host, listen_mptcp=True, connect_mptcp=True))
    with client, accepted:
        assert protocol(client) == protocol(accepted) == StreamProtocol.MPTCP
        assert multipath(client) is Multipath.YES
        assert multipath(accepted) is Multipath.YES


def test_mptcp_listener_accepts_a_plain_tcp_client(mptcp: None) -> None:
    client, accepted = asyncio.run(_pair("127.0.0.1", listen_mptcp=True,
                                         connect_mptcp=False))
    with client, accepted:
        # The kernel hands over the plain TCP subflow itself.
        assert protocol(accepted) == StreamProtocol.TCP
        assert multipath(accepted) is Multipath.NO
        assert multipath(client) is Multipath.NO
        client.sendall(b"ping")
        accepted.settimeout(5)
        assert accepted.recv(4) == b"ping"


def test_mptcp_client_talks_to_a_plain_tcp_listener(mptcp: None) -> None:
    client, accepted = asyncio.run(_pair("127.0.0.1", listen_mptcp=False,
                                         connect_mptcp=True))
    with client, accepted:
        assert protocol(client) == StreamProtocol.MPTCP  # asked for, then fell back
        assert multipath(client) is Multipath.NO
        assert protocol(accepted) == StreamProtocol.TCP


def test_unix_sockets_ignore_mptcp(tmp_path: Path) -> None:
    async def go() -> None:
        path = str(tmp_path / "s.sock")
        [listener] = await open_listeners(UnixPath(path), mptcp=True)
        with listener, await connect(UnixPath(path), 5.0, mptcp=True) as client:
            assert listener.family == client.family == socket.AF_UNIX
            assert multipath(client) is Multipath.NO

    asyncio.run(go())


# ---- the CLI on loopback ---------------------------------------------------------------


def _token_args(env: dict[str, Path]) -> list[str]:
    return ["--token-file", str(env["token"])]


def test_send_and_get_over_mptcp(mptcp: None, env: dict[str, Path]) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    (env["src"] / "f.bin").write_bytes(data)
    with ServerThread(env["root"], mptcp=True) as server:
        code, _out, err = run_cli("send", "--mptcp", "-P", str(server.port),
                                  *_token_args(env), str(env["src"] / "f.bin"),
                                  "127.0.0.1:up.bin")
        assert code == 0, err
        assert "over Multipath TCP" in err
        code, _out, err = run_cli("get", "--mptcp", "-P", str(server.port),
                                  *_token_args(env), "127.0.0.1:up.bin",
                                  str(env["back"] / "down.bin"))
        assert code == 0, err
        code, out, err = run_cli("ls", "--mptcp", "-P", str(server.port),
                                 *_token_args(env), "127.0.0.1:")
        assert code == 0, err
        assert "up.bin" in out
        logs = server.logs
    assert (env["root"] / "up.bin").read_bytes() == data
    assert (env["back"] / "down.bin").read_bytes() == data
    # The server asked its accepted sockets (SO_PROTOCOL, TCP_IS_MPTCP), once per client.
    assert sum(line.endswith(": Multipath TCP") for line in logs) == 3, logs


@pytest.mark.parametrize(("server_mptcp", "client_mptcp"), [(False, True), (True, False)])
def test_falls_back_to_tcp_when_one_end_lacks_mptcp(
        mptcp: None, env: dict[str, Path], server_mptcp: bool, client_mptcp: bool) -> None:
    data = os.urandom(1024 * 1024 + 3)
    (env["src"] / "f.bin").write_bytes(data)
    with ServerThread(env["root"], mptcp=server_mptcp) as server:
        code, _out, err = run_cli("send", *(["--mptcp"] if client_mptcp else []),
                                  "-P", str(server.port), *_token_args(env),
                                  str(env["src"] / "f.bin"), "127.0.0.1:f.bin")
        assert code == 0, err
        logs = server.logs
    assert (env["root"] / "f.bin").read_bytes() == data
    if client_mptcp:
        assert "over plain TCP: MPTCP was not agreed" in err
    else:
        assert any("plain TCP: MPTCP was not agreed" in line for line in logs), logs


# ---- processes inside namespaces -------------------------------------------------------


@contextlib.contextmanager
def serving(ns: Namespace, root: Path, token: Path, log: Path,
            listen: str = f"0.0.0.0:{PORT}") -> Iterator[subprocess.Popen[bytes]]:
    """``sockferry serve --mptcp`` inside ``ns``, stopped (SIGTERM, then SIGKILL) on exit."""
    with log.open("wb") as stderr:
        server = subprocess.Popen(ns.command(sys.executable, "-m", "sockferry", "serve",
                                             str(root), "--listen", listen, "--mptcp",
                                             "--token-file", str(token)),
                                  stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + SERVER_READY_S
        while b"listening on" not in log.read_bytes():
            assert server.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"server not ready: {log.read_text()}"
            time.sleep(POLL_S)
        yield server
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)


def client_command(ns: Namespace, token: Path, *argv: str) -> list[str]:
    return ns.command(sys.executable, "-m", "sockferry", argv[0], "--mptcp",
                      "--token-file", str(token), "-v", *argv[1:])  # -v: logs too


def test_kernel_without_mptcp_falls_back_to_tcp(netns: None, env: dict[str, Path],
                                                tmp_path: Path) -> None:
    data = os.urandom(1024 * 1024)
    (env["src"] / "f.bin").write_bytes(data)
    with namespace("nomptcp") as ns:
        # MPTCP switched off in this namespace only: socket(IPPROTO_MPTCP) fails there.
        ns.run("sysctl", "-qw", "net.mptcp.enabled=0")
        log = tmp_path / "server.log"
        with serving(ns, env["root"], env["token"], log, f"127.0.0.1:{PORT}"):
            sent = subprocess.run(client_command(ns, env["token"], "send",
                                                 str(env["src"] / "f.bin"),
                                                 "127.0.0.1:f.bin"),
                                  capture_output=True, text=True,
                                  timeout=TRANSFER_TIMEOUT_S, check=False)
        assert sent.returncode == 0, sent.stderr
        server_log = log.read_text()
    assert (env["root"] / "f.bin").read_bytes() == data
    for text in (sent.stderr, server_log):
        assert "this kernel does not offer Multipath TCP" in text, text
    assert "over plain TCP" in sent.stderr


@pytest.fixture
def paths(netns: None) -> Iterator[TwoPaths]:
    with two_paths("200mbit") as made:
        made.announce_second_path()
        yield made


def _server_rx(paths: TwoPaths) -> tuple[int, int]:
    return (paths.server.rx_bytes(paths.paths[0].device),
            paths.server.rx_bytes(paths.paths[1].device))


def test_send_uses_both_paths(paths: TwoPaths, env: dict[str, Path],
                              tmp_path: Path) -> None:
    size = 24 * 1024 * 1024
    data = os.urandom(size)
    (env["src"] / "f.bin").write_bytes(data)
    first = paths.paths[0].server_address
    with serving(paths.server, env["root"], env["token"], tmp_path / "server.log"):
        before = _server_rx(paths)
        sent = subprocess.run(client_command(paths.client, env["token"], "send",
                                             str(env["src"] / "f.bin"), f"{first}:f.bin"),
                              capture_output=True, text=True, timeout=TRANSFER_TIMEOUT_S,
                              check=False)
        after = _server_rx(paths)
    assert sent.returncode == 0, sent.stderr
    assert "over Multipath TCP" in sent.stderr
    assert (env["root"] / "f.bin").read_bytes() == data
    # The second subflow joined (MP_JOIN handshake completed at the server) ...
    assert paths.server.mptcp_counters()["MPTcpExtMPJoinAckRx"] >= 1
    # ... and both veths carried a real share of the file, not just handshakes.
    carried = [a - b for a, b in zip(after, before, strict=True)]
    assert all(n > size // 10 for n in carried), carried


def test_transfer_survives_losing_a_path(paths: TwoPaths, env: dict[str, Path],
                                         tmp_path: Path) -> None:
    size = 128 * 1024 * 1024
    source = env["src"] / "f.bin"
    with source.open("wb") as out:
        for _ in range(size // (1 << 20)):
            out.write(os.urandom(1 << 20))
    first, second = paths.paths
    with serving(paths.server, env["root"], env["token"], tmp_path / "server.log"):
        before = _server_rx(paths)
        sender = subprocess.Popen(client_command(paths.client, env["token"], "send",
                                                 str(source),
                                                 f"{first.server_address}:f.bin"),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            # Cut the first path (the initial subflow's) once a quarter has arrived.
            deadline = time.monotonic() + TRANSFER_TIMEOUT_S
            while sum(_server_rx(paths)) - sum(before) < size // 4:
                assert sender.poll() is None, "the transfer ended before the cut"
                assert time.monotonic() < deadline, "the transfer made no progress"
                time.sleep(POLL_S)
            paths.take_down(first)
            assert sender.poll() is None, "the transfer ended before the cut"
            at_cut = paths.server.rx_bytes(second.device)
            _out, err = sender.communicate(timeout=TRANSFER_TIMEOUT_S)
        finally:
            if sender.poll() is None:
                sender.kill()
                sender.wait(5)
        after_second = paths.server.rx_bytes(second.device)
    assert sender.returncode == 0, err.decode()
    assert source.read_bytes() == (env["root"] / "f.bin").read_bytes()
    # What was left after the cut came over the second path.
    assert after_second - at_cut > size // 4


@pytest.mark.parametrize("command", ["serve", "send"])
def test_mptcp_and_sctp_are_a_usage_error(env: dict[str, Path], command: str) -> None:
    argv = ([str(env["root"])] if command == "serve"
            else [str(env["token"]), "127.0.0.1:x"])
    code, _out, err = run_cli(command, "--mptcp", "--transport", "sctp",
                              *_token_args(env), *argv)
    assert code == 2
    assert "--mptcp and --transport sctp do not go together" in err


def test_help_says_what_mptcp_needs() -> None:
    code, out, _err = run_cli("send", "--help")
    assert code == 0
    text = " ".join(out.split())
    for needed in ("several paths", "ip mptcp endpoint", "AF_UNIX", "Falls back"):
        assert needed in text, needed
