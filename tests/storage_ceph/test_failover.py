"""Two `sockferry serve --store s3://...` behind a real HAProxy (TCP mode, health
checks), one bucket of a real Ceph cluster between them: the server a transfer is on is
SIGKILLed mid-upload; the client (`send --retry`) connects again through the balancer,
lands on the other server, resumes from the whole parts the first had sent up, and the
file ends byte-identical — one command, no user action."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sockferry.storage.s3 import PART_BYTES
from tests.ceph import CephS3, Keys, parts_uploaded, uploads
from tests.cli.server_process import Server, running
from tests.conftest import require_program


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_listening(port: int, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        assert process.poll() is None, "haproxy exited before it listened"
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        assert time.monotonic() < deadline, f"haproxy did not listen on {port}"
        time.sleep(0.05)


@pytest.fixture
def haproxy_for(tmp_path: Path) -> Iterator[Callable[[list[str]], tuple[int, Path]]]:
    """Starts HAProxy in front of the given ports: its port and its log."""
    binary = require_program("haproxy")
    started: list[subprocess.Popen[bytes]] = []

    def start(backends: list[str]) -> tuple[int, Path]:
        front = free_port()
        log = tmp_path / "haproxy.log"
        config = tmp_path / "haproxy.cfg"
        servers = "\n".join(
            f"    server s{index} 127.0.0.1:{port} check inter 200ms fall 1 rise 2"
            for index, port in enumerate(backends))
        config.write_text(f"""global
    maxconn 200
defaults
    mode tcp
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    retries 3
    option redispatch
frontend ferry
    bind 127.0.0.1:{front}
    default_backend servers
backend servers
    # every connection to the first server up: the test knows which one to kill
    balance first
{servers}
""")
        with log.open("wb") as out:
            process = subprocess.Popen([binary, "-db", "-f", str(config)], stdout=out,
                                       stderr=subprocess.STDOUT)
        started.append(process)
        wait_listening(front, process, 20)
        return front, log

    yield start
    for process in started:
        process.terminate()
        process.wait(timeout=20)


def test_a_send_fails_over_through_haproxy_and_resumes(
        ceph_s3: CephS3, bucket: str, tmp_path: Path, keys: Keys,
        haproxy_for: Callable[[list[str]], tuple[int, Path]]) -> None:
    env, token = keys.env, keys.token
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(PART_BYTES * 5 + 999))
    url = f"s3://{bucket}/shared?endpoint={ceph_s3.endpoint_url}"
    serve = ("serve", "--store", url, "--listen", "127.0.0.1:0", "--token-file", str(token))

    def port_of(server: Server) -> str:
        return server.wait_for(r"listening on 127\.0\.0\.1:(\d+)").group(1)

    with running(*serve) as first, running(*serve) as second:
        ports = [port_of(first), port_of(second)]
        front, log = haproxy_for(ports)
        send = [sys.executable, "-m", "sockferry", "send", "-v", "-P", str(front),
                "--token-file", str(token), "--retry", "5", "--limit-rate", "8M", str(big),
                "127.0.0.1:big.bin"]
        cut = subprocess.Popen(send, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 60
            while parts_uploaded(ceph_s3, bucket, "shared/") < 2:
                assert cut.poll() is None, "the send ended before its server was killed"
                assert time.monotonic() < deadline, "two parts never went up"
                time.sleep(0.1)
            first.process.kill()  # the first server up holds every connection
            first.process.wait(timeout=20)
            out, err = cut.communicate(timeout=120)
        finally:
            cut.kill()
        # the same process went on: the balancer sent its next connection to the server
        # still up, which resumed from the parts in the bucket
        assert cut.returncode == 0 and "Traceback" not in err, err
        assert "(retry 1 of 5 in 1 s)" in err, err
        resumed = re.search(r"resumed at .* \((\d+) bytes\)", out)
        assert resumed is not None, out + err
        assert int(resumed.group(1)) >= 2 * PART_BYTES
        back = tmp_path / "back.bin"
        got = subprocess.run([sys.executable, "-m", "sockferry", "get", "-q", "-P",
                              str(front), "--token-file", str(token), "127.0.0.1:big.bin",
                              str(back)], env=env, text=True, capture_output=True,
                             timeout=120, check=False)
        assert got.returncode == 0, got.stderr
        assert second.process.poll() is None
        code, second_log = second.stop()
        assert code == 0, second_log
        assert "big.bin" in second_log or "1 file(s)" in second_log  # it served them
    assert back.read_bytes() == big.read_bytes()
    assert uploads(ceph_s3, bucket) == []
    assert "Server servers/s0 is DOWN" in log.read_text()  # its health check saw it
