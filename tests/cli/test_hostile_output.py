"""What a peer sends cannot drive the user's terminal or forge output lines.

Real servers, the real command as a subprocess: names with escape sequences, newlines,
carriage returns and bidi overrides are listed one entry per line with every control
made visible, and error texts that quote a name, or that a TFTP server chose, arrive
escaped."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import unicodedata
from pathlib import Path

from sockferry.safe_text import UNSAFE_CATEGORIES, escape
from sockferry.tftp.packets import Opcode, TransferRequest, decode_packet, encode_error
from tests.ferry.harness import ServerThread, write_token

HOSTILE = ["evil\x1b[31mred\x1b[0m", "new\nline", "carriage\rreturn", "photo\u202egpj.exe",
           "bell\x07and\x9b2J", "back\\slash", "plain.txt"]


def sockferry(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "sockferry", *argv], capture_output=True,
                          timeout=timeout, check=False)


def assert_safe(output: bytes) -> str:
    """Decoded output with nothing unsafe in it but the line breaks."""
    text = output.decode("utf-8")
    bad = [ch for ch in text if ch != "\n" and unicodedata.category(ch) in UNSAFE_CATEGORIES]
    assert bad == [], f"raw control or format characters reached the terminal: {bad!r}"
    return text


def test_ls_prints_hostile_names_escaped_one_per_line(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    for name in HOSTILE:
        (root / name).write_bytes(b"x")
    token = write_token(tmp_path / "token")
    with ServerThread(root) as server:
        result = sockferry("ls", "-P", str(server.port), "--token-file", str(token), ":")
    assert result.returncode == 0, result.stderr
    lines = assert_safe(result.stdout).splitlines()
    assert len(lines) == len(HOSTILE)
    assert sorted(line.split(maxsplit=4)[4] for line in lines) == \
        sorted(escape(name) for name in HOSTILE)
    assert_safe(result.stderr)


def test_an_error_quoting_a_remote_name_is_escaped(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    token = write_token(tmp_path / "token")
    with ServerThread(root) as server:
        result = sockferry("get", "-P", str(server.port), "--token-file", str(token),
                           ":gone\x1b]0;pwned\x07\nsockferry: all fine", str(tmp_path))
    assert result.returncode == 5
    err = assert_safe(result.stderr)
    assert err.count("\n") == 1, err           # one sentence, one line
    assert "gone\\x1b]0;pwned\\x07\\nsockferry: all fine" in err


def test_a_tftp_servers_error_text_reaches_the_user_escaped(tmp_path: Path) -> None:
    """A hostile TFTP server answers the request with an ERROR full of controls."""
    hostile = "\x1b[2J\x1b[Hall good\nsockferry: received 'x' \u202eexe.txt"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.settimeout(30)

        def answer() -> None:
            data, client = server.recvfrom(1024)
            assert isinstance(decode_packet(data), TransferRequest)
            assert decode_packet(data).opcode is Opcode.RRQ  # type: ignore[union-attr]
            server.sendto(encode_error(2, hostile), client)

        thread = threading.Thread(target=answer)
        thread.start()
        port = server.getsockname()[1]
        result = sockferry("tftp-get", "-q", f"127.0.0.1:{port}", "x", str(tmp_path / "x"))
        thread.join(30)
    assert result.returncode == 5
    err = assert_safe(result.stderr)
    assert err.count("\n") == 1, err
    assert escape(hostile) in err
    assert_safe(result.stdout)
