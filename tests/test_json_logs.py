"""``--log-format json``: every line a server writes parses as one JSON object with the
documented fields, one event per connection, transfer and association."""

from __future__ import annotations

import io
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from sockferry.cli import main
from sockferry.logfields import FIELDS
from tests.cli.server_process import Server
from tests.conftest import require_program
from tests.ferry.harness import write_token

pytestmark = pytest.mark.timeout(120)
BASE = {"time", "level", "logger", "event", "message"}


def records(output: str) -> list[dict[str, Any]]:
    """Every line as JSON, checked against the schema."""
    found = []
    for line in output.splitlines():
        if not line.strip():
            continue
        record = json.loads(line)  # a line that is not JSON fails here
        assert BASE <= set(record) <= BASE | set(FIELDS) | {"exception"}, record
        assert record["time"].endswith("Z") and record["level"] in {
            "debug", "info", "warning", "error", "critical"}
        assert line.isascii()
        found.append(record)
    return found


def run(*argv: str) -> int:
    return main(list(argv), stdout=io.StringIO(), stderr=io.StringIO())


def test_serve_writes_a_connection_and_a_transfer_event_each(tmp_path: Path) -> None:
    root, token = tmp_path / "root", write_token(tmp_path / "token")
    root.mkdir()
    (tmp_path / "a.txt").write_bytes(b"a" * 1000)
    (tmp_path / "big\x1b[2J.bin").write_bytes(b"b" * 3000)  # a hostile name, too large
    server = Server("serve", str(root), "--token-file", str(token), "--listen",
                    "127.0.0.1:0", "--log-format", "json", "--max-file-size", "2000")
    try:
        port = server.wait_for(r"listening on 127\.0\.0\.1:(\d+)").group(1)
        assert run("send", "--token-file", str(token), "-P", port, str(tmp_path / "a.txt"),
                   "127.0.0.1:") == 0
        assert run("send", "--token-file", str(token), "-P", port,
                   str(tmp_path / "big\x1b[2J.bin"), "127.0.0.1:") == 5
        server.wait_for(r'"outcome": "refused"')
    finally:
        code, output = server.stop()
    assert code == 0, output
    events = records("\n".join(line for line in output.splitlines() if line.startswith("{")))
    assert not [line for line in output.splitlines() if line and not line.startswith("{")]
    transfers = [r for r in events if r["event"] == "transfer"]
    connections = [r for r in events if r["event"] == "connection"]
    assert len(connections) == 2 and all(r["transport"] == "tcp" for r in connections)
    assert connections[0]["outcome"] == "closed" and connections[0]["files"] == 1
    assert connections[0]["bytes_in"] > 1000 and connections[0]["duration"] >= 0
    put, refused = transfers
    assert (put["path"], put["direction"], put["outcome"], put["bytes"]) == (
        "a.txt", "upload", "committed", 1000)  # a success, at info in JSON logs
    assert (refused["path"], refused["outcome"], refused["error"]) == (
        "big\x1b[2J.bin", "refused", "too_large")
    assert "\x1b" not in output  # the client's escape sequence arrives as \u001b


def test_tftp_serve_writes_a_transfer_event(tmp_path: Path) -> None:
    tftp = require_program("tftp")
    (tmp_path / "boot.img").write_bytes(os.urandom(3000))
    server = Server("tftp-serve", str(tmp_path), "--listen", "127.0.0.1:0",
                    "--log-format", "json")
    try:
        port = server.wait_for(r"over TFTP on 127\.0\.0\.1:(\d+)").group(1)
        subprocess.run([tftp, "127.0.0.1", port, "-m", "binary", "-c", "get", "boot.img",
                        str(tmp_path / "got.img")], capture_output=True, timeout=30,
                       check=True)
        server.wait_for(r'"event": "transfer"')
    finally:
        _, output = server.stop()
    events = records("\n".join(line for line in output.splitlines() if line.startswith("{")))
    (transfer,) = [r for r in events if r["event"] == "transfer"]
    assert (transfer["transport"], transfer["path"], transfer["direction"],
            transfer["outcome"], transfer["bytes"]) == ("tftp", "boot.img", "download",
                                                        "committed", 3000)


def test_sctp_serve_writes_association_events(tmp_path: Path) -> None:
    server = Server("sctp-serve", "--transport", "udp", "--listen", "127.0.0.1:0",
                    "--log-format", "json")
    try:
        port = server.wait_for(r"SCTP server on 127\.0\.0\.1:(\d+)").group(1)
        assert run("sctp-send", "--transport", "udp", f"127.0.0.1:{port}", "hi") == 0
        server.wait_for(r'"outcome": "shutdown_comp"')
    finally:
        _, output = server.stop()
    events = records("\n".join(line for line in output.splitlines() if line.startswith("{")))
    outcomes = [r["outcome"] for r in events if r["event"] == "association"]
    assert outcomes == ["comm_up", "shutdown_comp"]
