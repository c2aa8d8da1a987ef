"""``send`` / ``get --retry N``: a client that loses its server connects again and goes on
where it stopped.  Real processes on loopback: the server is SIGKILLed mid-transfer and a
new one started on the same port, as a restart or a balancer's other backend would be."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import blake3
import pytest

from sockferry.errors import AuthenticationFailed, NetworkError, StorageError, TransferTimeout
from sockferry.ferry.retrying import waits, with_retries, worth_retrying
from sockferry.storage.names import PARTIAL_PREFIX
from tests.ferry.harness import CliServer, run_cli, write_token

SIZE = 48 * 1024 * 1024
RATE = "24M"  # two seconds a copy: time to kill the server in the middle


def _cli(*argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "sockferry", *argv], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _partial_size(directory: Path) -> int:
    if not directory.is_dir():
        return 0
    sizes = [p.stat().st_size for p in directory.iterdir() if p.name.startswith(PARTIAL_PREFIX)]
    return max(sizes, default=0)


def _kill_midway(server: CliServer, watched: Path, client: subprocess.Popen[str]) -> int:
    """SIGKILL the server once a quarter of the file reached the receiver's partial file;
    the partial's size once the server is gone."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if _partial_size(watched) >= SIZE // 4:
            server.stop(signal.SIGKILL)  # waits for it to be gone
            return _partial_size(watched)  # what it left (its writes went on till the kill)
        assert client.poll() is None, client.communicate()
        time.sleep(0.005)
    raise AssertionError("the partial file never reached a quarter of the file")


def _cut_and_restarted(env: dict[str, Path], server: CliServer, watched: Path,
                       client: subprocess.Popen[str],
                       when_killed: Callable[[], None] = lambda: None) -> tuple[int, str, str]:
    """Kill ``server`` midway through ``client``'s copy, start another on its port, and
    let the client finish: (bytes the receiver had at the kill, stdout, stderr)."""
    restarted = None
    try:
        kept = _kill_midway(server, watched, client)
        when_killed()
        time.sleep(0.3)  # the client finds the port closed at least once
        restarted = CliServer(env["root"], env["token"], env["tmp"] / "second.log",
                              port=server.port)
        out, err = client.communicate(timeout=60)
    finally:
        if client.poll() is None:
            client.kill()
        if restarted is not None:
            restarted.stop()
    return kept, out, err


def _digest(path: Path) -> bytes:
    return blake3.blake3(path.read_bytes()).digest()


@pytest.fixture()
def env(tmp_path: Path) -> dict[str, Path]:
    root, local = tmp_path / "root", tmp_path / "local"
    root.mkdir()
    local.mkdir()
    (tmp_path / "data").write_bytes(blake3.blake3(b"retry").digest(length=SIZE))
    write_token(tmp_path / "token")
    return {"tmp": tmp_path, "root": root, "local": local, "token": tmp_path / "token"}


@pytest.mark.parametrize("direction", ["send", "get"])
def test_a_copy_whose_server_dies_goes_on_with_the_next_one(env: dict[str, Path],
                                                              direction: str) -> None:
    tmp, root, local = env["tmp"], env["root"], env["local"]
    if direction == "get":
        shutil.copyfile(tmp / "data", root / "data")
    server = CliServer(root, env["token"], tmp / "first.log")
    port = server.port
    common = ["-v", "--retry", "4", "--limit-rate", RATE, "-P", str(port),
              "--token-file", str(env["token"])]
    argv = ["send", *common, str(tmp / "data"), "127.0.0.1:data"] if direction == "send" \
        else ["get", *common, "127.0.0.1:data", str(local / "data")]
    client = _cli(*argv)
    kept, out, err = _cut_and_restarted(env, server, root if direction == "send" else local,
                                        client)
    assert client.returncode == 0, err
    assert re.search(r"\(retry 1 of 4 in 1 s\)", err), err
    assert "Traceback" not in err and "never retrieved" not in err, err
    resumed = re.search(r"resumed at [^(]*\((\d+) bytes\)", out)
    assert resumed is not None, out
    # what the receiver had when the server died is kept, not moved again (a client
    # receiving still drains what its socket buffered after the kill)
    offset = int(resumed.group(1))
    assert SIZE // 8 <= offset < SIZE
    assert offset <= kept if direction == "send" else offset >= kept
    result = root / "data" if direction == "send" else local / "data"
    assert _digest(result) == _digest(tmp / "data")
    assert _partial_size(root) == 0 and _partial_size(local) == 0


@pytest.mark.parametrize("direction", ["send", "get"])
def test_files_that_arrived_whole_are_left_alone_on_the_retry(env: dict[str, Path],
                                                              direction: str) -> None:
    tmp, root, local = env["tmp"], env["root"], env["local"]
    tree = tmp / "tree" if direction == "send" else root / "tree"
    (tree / "z").mkdir(parents=True)
    for i in range(20):
        (tree / f"f{i:02}").write_bytes(os.urandom(4096))
    shutil.copyfile(tmp / "data", tree / "z" / "big")  # copied after the small ones
    server = CliServer(root, env["token"], tmp / "first.log")
    common = ["-v", "-r", "--retry", "3", "--limit-rate", RATE, "-P", str(server.port),
              "--token-file", str(env["token"])]
    client = _cli("send", *common, str(tree), "127.0.0.1:tree") if direction == "send" \
        else _cli("get", *common, "127.0.0.1:tree", str(local / "tree"))
    copy = root / "tree" if direction == "send" else local / "tree"

    def all_small_ones_there() -> None:
        assert len([p for p in copy.iterdir() if p.name.startswith("f")]) == 20

    _kept, _out, err = _cut_and_restarted(env, server, copy / "z", client,
                                          all_small_ones_there)
    assert client.returncode == 0, err
    # the twenty small files the first server answered for are left alone (not hashed
    # again on both sides, which said "20 unchanged"), the big one resumed, and the
    # summary counts all of them as copied
    verb = "sent" if direction == "send" else "received"
    assert f"{verb} 21 file(s), 48.1 MiB in" in err, err
    assert "unchanged" not in err, err
    for path in tree.rglob("*"):
        if path.is_file():
            assert _digest(copy / path.relative_to(tree)) == _digest(path)


def test_giving_up_after_the_last_retry_says_why(env: dict[str, Path]) -> None:
    server = CliServer(env["root"], env["token"], env["tmp"] / "gone.log")
    port = server.port
    server.stop()
    started = time.monotonic()
    code, _out, err = run_cli("send", "--retry", "2", "-P", str(port), "--token-file",
                              str(env["token"]), str(env["tmp"] / "data"), "127.0.0.1:data")
    elapsed = time.monotonic() - started
    assert code == 3, err
    assert "(retry 1 of 2 in 1 s)" in err and "(retry 2 of 2 in 2 s)" in err, err
    assert err.count("connection refused") == 3, err
    assert 3.0 <= elapsed < 20, elapsed


def test_a_refused_token_is_not_tried_again(env: dict[str, Path]) -> None:
    other = write_token(env["tmp"] / "other", b"Qm9vZ3lib29neWJvb2d5Ym9vZ3lib29neQ" * 2)
    server = CliServer(env["root"], env["token"], env["tmp"] / "auth.log")
    try:
        started = time.monotonic()
        code, _out, err = run_cli("send", "--retry", "5", "-P", str(server.port),
                                  "--token-file", str(other), str(env["tmp"] / "data"),
                                  "127.0.0.1:data")
    finally:
        server.stop()
    assert code == 4, err
    assert "retry" not in err and time.monotonic() - started < 5


@pytest.mark.parametrize("argv", [["send", "--retry", "1", "-", "127.0.0.1:x"],
                                  ["get", "--retry", "1", "127.0.0.1:x", "-"]])
def test_pipes_cannot_be_retried(argv: list[str]) -> None:
    code, _out, err = run_cli(*argv)
    assert code == 2 and "cannot resume or retry: a pipe cannot be read again" in err, err


@pytest.mark.parametrize("text", ["-1", "101", "many"])
def test_retry_counts_out_of_range_are_usage_errors(text: str) -> None:
    code, _out, err = run_cli("send", "--retry", text, "a", "127.0.0.1:b")
    assert code == 2 and "--retry" in err, err


def test_retry_does_not_go_with_update() -> None:
    code, _out, err = run_cli("send", "--retry", "1", "-u", "a", "127.0.0.1:b")
    assert code == 2 and "nor does --retry, which resumes" in err, err


def test_waits_double_up_to_the_cap() -> None:
    assert list(waits(8)) == [1, 2, 4, 8, 16, 30, 30, 30]
    assert list(waits(0)) == []


def test_only_a_lost_server_is_worth_retrying() -> None:
    assert worth_retrying(NetworkError("reset"))
    assert worth_retrying(TransferTimeout("silent"))
    assert not worth_retrying(AuthenticationFailed("no"))
    assert not worth_retrying(StorageError("full"))


def test_with_retries_stops_at_the_first_success() -> None:
    calls: list[int] = []
    told: list[tuple[str, float, int]] = []

    async def attempt() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise NetworkError(f"lost {len(calls)}")
        return "done"

    result = asyncio.run(with_retries(attempt, 5, lambda e, w, n: told.append((str(e), w, n)),
                                      first_wait_s=0.001))
    assert result == "done" and len(calls) == 3
    assert told == [("lost 1", 0.001, 1), ("lost 2", 0.002, 2)]
