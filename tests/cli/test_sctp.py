"""``sctp-serve`` and ``sctp-send`` end to end over UDP on loopback, as processes."""

from __future__ import annotations

import asyncio
import io
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from sockferry.addresses import HostPort
from sockferry.cli import main
from sockferry.sctp.endpoint import UserMessage
from sockferry.sctp.udp import UdpEndpoint
from tests.cli.sctp_server import sctp_server

pytestmark = pytest.mark.timeout(60)


def sockferry(*args: str) -> list[str]:
    return [sys.executable, "-m", "sockferry", *args]


@pytest.fixture
def server() -> Iterator[tuple[subprocess.Popen[str], int]]:
    with sctp_server("udp") as running:
        yield running


def stop(proc: subprocess.Popen[str]) -> tuple[str, str, int]:
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    return out, err, proc.returncode


def test_send_arguments_and_stdin_lines_with_echo(
        server: tuple[subprocess.Popen[str], int]) -> None:
    proc, port = server
    first = subprocess.run(sockferry("sctp-send", f"127.0.0.1:{port}", "hello", "world",
                                     "--stream", "3", "--ppid", "42", "--streams", "5"),
                           capture_output=True, text=True, timeout=30, check=False)
    assert first.returncode == 0, first.stderr
    assert "stream 3 ppid 42" in first.stdout and first.stdout.count("hello") == 1
    second = subprocess.run(sockferry("sctp-send", f"localhost:{port}", "--unordered"),
                            input="line one\nline two\n", capture_output=True, text=True,
                            timeout=30, check=False)
    assert second.returncode == 0, second.stderr
    assert "unordered" in second.stdout and "line two" in second.stdout
    out, err, code = stop(proc)
    assert code == 0 and "stopped" in err
    lines = out.splitlines()
    assert re.match(r"\[assoc 1\] COMM_UP 127\.0\.0\.1:\d+ \(streams out 5, in 5\)", lines[0])
    assert re.match(r"\[assoc 1\] stream 3 ppid 42 from 127\.0\.0\.1:\d+: hello", lines[1])
    assert "[assoc 1] SHUTDOWN_COMP" in out and "[assoc 2] SHUTDOWN_COMP" in out
    assert "line one" in out


def test_client_abort_shows_as_comm_lost(server: tuple[subprocess.Popen[str], int]) -> None:
    proc, port = server
    client = subprocess.Popen(sockferry("sctp-send", f"127.0.0.1:{port}"),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    assert client.stdin is not None and client.stdout is not None
    client.stdin.write("before\n")
    client.stdin.flush()
    assert "before" in client.stdout.readline()  # the echo came back: we are up
    client.send_signal(signal.SIGINT)
    _, err = client.communicate(timeout=20)
    assert client.returncode == 130 and "interrupted" in err and "Traceback" not in err
    out, _, code = stop(proc)
    assert code == 0
    assert "[assoc 1] SHUTDOWN_COMP" in out or "[assoc 1] COMM_LOST" in out


def test_stream_outside_the_count_is_a_usage_error() -> None:
    out, err = io.StringIO(), io.StringIO()
    code = main(["sctp-send", "127.0.0.1:1", "x", "--stream", "12"], stdout=out, stderr=err)
    assert code == 2 and "--stream 12 is not among the 10 outbound streams" in err.getvalue()


def test_nobody_listening_is_a_network_error() -> None:
    out, err = io.StringIO(), io.StringIO()
    code = main(["sctp-send", "127.0.0.1:9", "x", "--timeout", "0.3"], stdout=out,
                stderr=err)
    assert code == 3 and "is the server running" in err.getvalue()


def test_port_in_use_is_one_sentence() -> None:

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        out, err = io.StringIO(), io.StringIO()
        code = main(["sctp-serve", "--listen", f"127.0.0.1:{port}"], stdout=out, stderr=err)
    assert code == 3 and "already in use" in err.getvalue()
    assert os.linesep not in err.getvalue().rstrip()


def test_server_abort_is_refused_with_its_reason() -> None:

    async def scenario() -> tuple[int, str]:
        async with await UdpEndpoint.open([HostPort("127.0.0.1", 0)]) as server:
            async def abort_first_message() -> None:
                while True:
                    item = await server.receive()
                    if isinstance(item, UserMessage):
                        server.abort(item.assoc_id, "no vacancies")
                        return

            aborter = asyncio.create_task(abort_first_message())
            out, err = io.StringIO(), io.StringIO()
            code = await asyncio.to_thread(
                main, ["sctp-send", f"127.0.0.1:{server.sctp_port}", "knock", "--linger", "5"],
                stdout=out, stderr=err)
            await aborter
            return code, err.getvalue()

    code, err = asyncio.run(scenario())
    assert code == 5 and "no vacancies" in err


def test_a_client_that_does_not_read_holds_up_only_itself(
        server: tuple[subprocess.Popen[str], int]) -> None:


    proc, port = server

    async def scenario() -> bytes:
        target = HostPort("127.0.0.1", port)
        async with await UdpEndpoint.open() as stuck, await UdpEndpoint.open() as fine:
            block = bytes(65536)
            for _ in range(300):  # 19 MiB of echoes it never reads
                await stuck.send(block, to=target)
            await fine.send(b"still served?", to=target)
            async with asyncio.timeout(20):
                while True:
                    item = await fine.receive()
                    if isinstance(item, UserMessage):
                        return item.data

    assert asyncio.run(scenario()) == b"still served?"
    _, err, code = stop(proc)
    assert code == 0 and "echo dropped: the client is not reading" in err
