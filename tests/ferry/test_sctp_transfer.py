"""File transfer over SCTP: the ferry protocol on an association, each file on its own
stream — userspace stack on the host (also through a lossy relay), kernel in the VM."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sockferry.addresses import HostPort
from sockferry.cli.runtime import ExitCode
from sockferry.errors import SockferryError
from sockferry.ferry.over_sctp import sctp_client
from sockferry.storage.names import is_temporary_name
from tests.conftest import require_program
from tests.ferry.harness import TOKEN, ServerThread, run_cli, write_token
from tests.lossy import Impairment, LossyUdpRelay

pytestmark = pytest.mark.timeout(240)

KiB = 1024
# Several DATA pieces each; the last one small enough for PUT_INLINE (which must open its
# request on stream 0 like any PUT).
SIZES = (0, 1, 100 * KiB, 1024 * KiB + 1, 3 * 1024 * KiB, 7)
STACKS = pytest.mark.parametrize("stack", [
    "udp", pytest.param("kernel", marks=pytest.mark.kernel_sctp)])


def make_files(directory: Path, sizes: tuple[int, ...], seed: int) -> list[Path]:
    rng = random.Random(seed)
    files = []
    for index, size in enumerate(sizes):
        path = directory / f"file{index}.bin"
        path.write_bytes(rng.randbytes(size))
        files.append(path)
    return files


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sctp_cli(stack: str, port: int, token: Path, verb: str, *argv: str) -> tuple[int, str, str]:
    return run_cli(verb, "--transport", "sctp", "--sctp-stack", stack, "-P", str(port),
                   "--token-file", str(token), *argv)


def no_temporaries(root: Path) -> bool:
    return not [p for p in root.rglob("*") if is_temporary_name(p.name)]


@STACKS
def test_several_files_each_way_and_ls(env: dict[str, Path], stack: str) -> None:
    files = make_files(env["src"], SIZES, seed=1)
    (env["root"] / "in").mkdir()
    with ServerThread(env["root"], sctp_stack=stack) as server:
        code, _out, err = sctp_cli(stack, server.port, env["token"], "send",
                                   *map(str, files), "127.0.0.1:in/")
        assert code == ExitCode.OK, err
        for path in files:
            assert digest(env["root"] / "in" / path.name) == digest(path)
        code, out, err = sctp_cli(stack, server.port, env["token"], "ls", "127.0.0.1:in")
        assert code == ExitCode.OK, err
        assert sorted(line.split()[-1] for line in out.splitlines()) == sorted(
            p.name for p in files)
        code, _out, err = sctp_cli(stack, server.port, env["token"], "get", "-r",
                                   "127.0.0.1:in", str(env["back"]))
        assert code == ExitCode.OK, err
    for path in files:
        assert digest(env["back"] / "in" / path.name) == digest(path)
    assert no_temporaries(env["root"]) and no_temporaries(env["back"])
    assert any("SCTP association" in line for line in server.logs)


@pytest.mark.parametrize("seed", [3, 4])
def test_files_in_parallel_through_a_lossy_network(env: dict[str, Path], seed: int) -> None:
    """5% of the datagrams lost each way: every file still arrives whole and verified."""
    files = make_files(env["src"], (300 * KiB,) * 6, seed=seed)
    with ServerThread(env["root"], sctp_stack="udp") as server, \
            LossyUdpRelay(("127.0.0.1", server.port),
                          Impairment(random.Random(seed), loss=0.05)) as relay:
        code, _out, err = run_cli("send", "--transport", "sctp", "--sctp-stack", "udp",
                                  "-P", str(server.port), "--udp-port", str(relay.port),
                                  "--token-file", str(env["token"]), *map(str, files),
                                  "127.0.0.1:")
        assert code == ExitCode.OK, err
        code, _out, err = run_cli("get", "--transport", "sctp", "--sctp-stack", "udp",
                                  "-P", str(server.port), "--udp-port", str(relay.port),
                                  "--token-file", str(env["token"]),
                                  *(f"127.0.0.1:{p.name}" for p in files), str(env["back"]))
        assert code == ExitCode.OK, err
    assert relay.dropped > 10  # the loss was real
    for path in files:
        assert digest(env["root"] / path.name) == digest(path)
        assert digest(env["back"] / path.name) == digest(path)


@pytest.fixture
def lossy_loopback() -> Iterator[Callable[[float], None]]:
    """Calling it makes lo lose that share of packets (tc netem); undone afterwards."""
    tc = require_program("tc")
    added = []

    def lose(share: float) -> None:
        subprocess.run([tc, "qdisc", "add", "dev", "lo", "root", "netem", "loss",
                        f"{share * 100:g}%"], check=True, timeout=30)
        added.append(True)

    yield lose
    if added:
        subprocess.run([tc, "qdisc", "del", "dev", "lo", "root"], check=True, timeout=30)


@pytest.mark.kernel_sctp
def test_kernel_files_in_parallel_through_loss(env: dict[str, Path],
                                               lossy_loopback: Callable[[float], None]
                                               ) -> None:
    files = make_files(env["src"], (300 * KiB,) * 6, seed=5)
    with ServerThread(env["root"], sctp_stack="kernel") as server:
        lossy_loopback(0.03)
        code, _out, err = sctp_cli("kernel", server.port, env["token"], "send",
                                   *map(str, files), "127.0.0.1:")
        assert code == ExitCode.OK, err
    for path in files:
        assert digest(env["root"] / path.name) == digest(path)


@pytest.mark.kernel_sctp
def test_userspace_client_to_kernel_server_over_udp(env: dict[str, Path],
                                                    kernel_encap_port: int) -> None:
    """The two stacks meet over UDP (RFC 6951): the kernel's encapsulation port is on."""
    files = make_files(env["src"], (200 * KiB, 1), seed=7)
    with ServerThread(env["root"], sctp_stack="kernel") as server:
        code, _out, err = run_cli("send", "--transport", "sctp", "--sctp-stack", "udp",
                                  "-P", str(server.port), "--udp-port",
                                  str(kernel_encap_port), "--token-file", str(env["token"]),
                                  *map(str, files), "127.0.0.1:")
        assert code == ExitCode.OK, err
    for path in files:
        assert digest(env["root"] / path.name) == digest(path)


def test_requests_of_one_frame_end_an_association_promptly(env: dict[str, Path]) -> None:
    """READLINK (get -r -l), DELETE (send --delete), CHECKSUM (-c) and QUICK_CHECK (-u)
    are each one frame; as the last requests of an association they must go on stream 0
    like every opening frame, or the server holds them until its idle timeout (120 s)."""
    tree = env["root"] / "t"
    tree.mkdir()
    (tree / "a").write_text("a")
    os.symlink("a", tree / "z")
    with ServerThread(env["root"], sctp_stack="udp") as server:
        started = time.monotonic()
        code, _out, err = sctp_cli("udp", server.port, env["token"], "get", "-r", "-l",
                                   "127.0.0.1:t", str(env["back"]))
        assert code == ExitCode.OK, err
        assert os.readlink(env["back"] / "t" / "z") == "a"
        (tree / "gone").write_text("x")
        for options in (["-u", "--delete"], ["-c"], ["-u"]):
            code, _out, err = sctp_cli("udp", server.port, env["token"], "send", "-r",
                                       "-l", *options, str(env["back"] / "t"), "127.0.0.1:")
            assert code == ExitCode.OK, (options, err)
        assert not (tree / "gone").exists()
        assert time.monotonic() - started < 60
    assert no_temporaries(env["root"])


def test_wrong_token_is_refused_over_sctp(env: dict[str, Path], tmp_path: Path) -> None:
    wrong = write_token(tmp_path / "wrong", b"aNoThEr-Wq8Zk3Vn6Rt1Yb9Lm4Xs7Pd2Gf5Hj0Ca")
    source = make_files(env["src"], (10,), seed=6)[0]
    with ServerThread(env["root"], sctp_stack="udp") as server:
        code, _out, err = sctp_cli("udp", server.port, wrong, "send", str(source),
                                   "127.0.0.1:")
    assert code == ExitCode.AUTH and "authentication failed" in err
    assert not os.listdir(env["root"])


def test_unix_sockets_do_not_carry_sctp(env: dict[str, Path]) -> None:
    code, _out, err = run_cli("ls", "--transport", "sctp", "--unix", "/tmp/x",
                              "--token-file", str(env["token"]), ":")
    assert code == ExitCode.USAGE and "SCTP runs over IP" in err


def test_a_client_past_max_connections_is_told_why(env: dict[str, Path]) -> None:
    async def body(port: int) -> str:
        address = HostPort("127.0.0.1", port)
        async with sctp_client(address, TOKEN, stack="udp") as first:
            assert await first.list("") == []
            with pytest.raises(SockferryError) as refused:
                async with sctp_client(address, TOKEN, stack="udp"):
                    pass
            await first.finish()
        return str(refused.value)

    with ServerThread(env["root"], sctp_stack="udp", max_connections=1) as server:
        message = asyncio.run(body(server.port))
    assert "server busy: 1 connections already" in message
