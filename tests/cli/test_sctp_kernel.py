"""The seed's scenario on kernel SCTP: ``sctp-serve --transport kernel`` with clients on
both backends (and the seed's own kind of client), in the VM of scripts/vm-test."""

from __future__ import annotations

import io
import re
import signal
import socket
import subprocess
from collections.abc import Iterator

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
    # The seed's client: sctp_sendmsg() to the address, then close() — nothing more.
    with socket.socket(socket.AF_INET, socket.SOCK_SEQPACKET, socket.IPPROTO_SCTP) as seed:
        seed.sendto(b"hello 2", ("127.0.0.1", port))
    assert proc.stdout is not None
    lines = []
    while sum("SHUTDOWN_COMP" in line for line in lines) < 3:
        line = proc.stdout.readline()
        assert line, "the server stopped early"
        lines.append(line)
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    out = "".join(lines) + rest
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
