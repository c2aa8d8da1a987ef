"""The seed's scenario on kernel SCTP: ``sctp-serve --transport kernel`` with clients on
both backends (and the seed's own kind of client), in the VM of scripts/vm-test."""

from __future__ import annotations

import io
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from queue import Empty, Queue
from typing import IO

import pytest

from sockferry.cli import main
from sockferry.sctp.kernel_socket import kernel_sctp_missing
from tests.cli.sctp_server import sctp_server

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def kernel_server(kernel_encap_port: int) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """``sctp-serve --transport kernel --echo``; the kernel also takes SCTP over UDP."""
    with sctp_server("kernel") as running:
        yield running


class LineReader:
    """A process's stdout lines with a deadline on each wait. A thread reads, because
    select() cannot see lines already in the text wrapper's buffer."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._queue: Queue[str] = Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        for line in iter(stream.readline, ""):
            self._queue.put(line)
        self._queue.put("")  # end of file

    def until(self, done: Callable[[list[str]], bool], timeout_s: float) -> None:
        """Reads until ``done(lines)`` holds; fails at end of file or after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while not done(self.lines):
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except Empty:
                raise AssertionError(f"still waiting after {timeout_s} s: {self.lines}") from None
            if not line:
                raise AssertionError(f"the output ended early: {self.lines}")
            self.lines.append(line)

    def rest(self, timeout_s: float) -> str:
        """All the output, once its end comes within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except Empty:
                raise AssertionError(f"no end of output after {timeout_s} s") from None
            if not line:
                return "".join(self.lines)
            self.lines.append(line)


def sctp_send(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(["sctp-send", *args], stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.kernel_sctp
def test_seed_scenario_with_clients_on_both_backends(
        kernel_server: tuple[subprocess.Popen[str], int], kernel_encap_port: int) -> None:
    proc, port = kernel_server
    code, out, err = sctp_send("--transport", "kernel", f"127.0.0.1:{port}", "hello",
                               "--stream", "3", "--ppid", "42", "--streams", "5")
    assert code == 0, err
    assert re.search(r"stream 3 ppid 42 from 127\.0\.0\.1:\d+: hello", out), out
    code, out, err = sctp_send("--transport", "udp", "--udp-port", str(kernel_encap_port),
                               f"127.0.0.1:{port}", "over udp", "--stream", "1",
                               "--streams", "5")
    assert code == 0, err
    assert "stream 1 ppid 0 from 127.0.0.1" in out and "over udp" in out
    # The seed's client: sctp_sendmsg() to the address, the echo read, then close(). It
    # reads the echo first because Linux deletes an association closed before its
    # COOKIE-ACK without a SHUTDOWN (sctp_sf_cookie_*_prm_shutdown): no end to observe.
    with socket.socket(socket.AF_INET, socket.SOCK_SEQPACKET, socket.IPPROTO_SCTP) as seed:
        seed.settimeout(30)
        seed.sendto(b"hello 2", ("127.0.0.1", port))
        assert seed.recv(64) == b"hello 2"
    assert proc.stdout is not None and proc.stderr is not None
    reader = LineReader(proc.stdout)
    reader.until(lambda lines: sum("SHUTDOWN_COMP" in line for line in lines) >= 3, 60)
    proc.send_signal(signal.SIGINT)
    out = reader.rest(60)
    assert proc.wait(timeout=60) == 0, proc.stderr.read()
    err = proc.stderr.read()
    ids = re.findall(r"\[assoc (\d+)\] COMM_UP 127\.0\.0\.1:\d+ \(streams out 5, in 5\)",
                     out)
    assert len(set(ids)) == 3, out
    for assoc_id, text in zip(ids, ["hello", "over udp", "hello 2"], strict=True):
        assert re.search(rf"\[assoc {assoc_id}\] stream \d ppid \d+ from 127\.0\.0\.1:\d+: "
                         rf"{text}$", out, re.MULTILINE), out
        # Every client's end is seen — the question the seed left open.
        assert f"[assoc {assoc_id}] SHUTDOWN_COMP" in out, out
    assert "Traceback" not in err


def test_kernel_transport_here() -> None:
    """``--transport kernel`` on a kernel without SCTP: exit 9 and one sentence."""
    if kernel_sctp_missing() is None:
        pytest.skip("this kernel has SCTP: the kernel_sctp tests cover it")
    out, err = io.StringIO(), io.StringIO()
    code = main(["sctp-serve", "--transport", "kernel", "--listen", "127.0.0.1:0"],
                stdout=out, stderr=err)
    message = err.getvalue()
    assert code == 9
    assert message.startswith("sockferry: error: this kernel has no SCTP (")
    assert message.rstrip().endswith("or use --transport udp")
    assert message.count("\n") == 1 and not out.getvalue()
