"""Progress bars tell the truth: IEC units, sparse bytes apart, a verifying state, an
overall row for several files — checked on a real terminal (a pty) and in the parts."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

from sockferry.cli.console import amount_text, eta_text, rate_text
from sockferry.cli.runtime import ExitCode
from tests.cli.server_process import running
from tests.ferry.harness import write_token

SPARSE_SIZE = 1024**3
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


def test_amounts_rates_and_eta_use_iec_units_and_moved_bytes() -> None:
    assert amount_text(512 * 1024**2, 2 * 1024**3, 0) == "512.0 MiB of 2.0 GiB"
    assert amount_text(2 * 1024**3, 2 * 1024**3, 1.5 * 1024**3) == \
        "2.0 GiB of 2.0 GiB (1.5 GiB sparse)"
    assert rate_text(100 * 1024**2, 2.0) == "50.0 MiB/s"  # moved bytes only
    assert rate_text(100, 0.05) == ""  # too early to rate
    assert eta_text(100, 10.0, 100, final=True) == "ETA 0:00:10"
    assert eta_text(100, 10.0, 100, final=False) == ""  # totals still growing
    assert eta_text(0, 10.0, 100, final=True) == ""


def _on_a_terminal(argv: list[str]) -> tuple[subprocess.CompletedProcess[bytes], bytes]:
    """Run ``argv`` with stderr on a pty, reading the terminal while it runs."""
    master, slave = os.openpty()
    seen: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the other side is closed and drained
                return
            if not chunk:
                return
            seen.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        child = subprocess.run(argv, stdout=subprocess.PIPE, stderr=slave, timeout=120,
                               check=False, env=dict(os.environ, COLUMNS="160"))
    finally:
        os.close(slave)
    reader.join(20)
    assert not reader.is_alive(), "the terminal was not drained"
    os.close(master)
    return child, ANSI.sub(b"", b"".join(seen))


def test_a_sparse_tree_on_a_terminal(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    token = write_token(tmp_path / "token")
    tree = tmp_path / "tree"
    tree.mkdir()
    with open(tree / "sparse.img", "wb") as f:
        f.truncate(SPARSE_SIZE)
        for offset in (0, SPARSE_SIZE // 2, SPARSE_SIZE - 65536):
            f.seek(offset)
            f.write(os.urandom(65536))
    (tree / "a.txt").write_text("a")
    (tree / "b.txt").write_text("b")
    with running("serve", str(root), "--listen", "127.0.0.1:0", "--token-file",
                 str(token)) as server:
        port = server.wait_for(r"listening on 127\.0\.0\.1:(\d+)").group(1)
        child, screen = _on_a_terminal(
            [sys.executable, "-m", "sockferry", "send", "-r", "-P", str(port),
             "--token-file", str(token), str(tree), "127.0.0.1:"])
    assert child.returncode == ExitCode.OK, screen
    assert (root / "tree" / "sparse.img").stat().st_size == SPARSE_SIZE
    text = screen.decode(errors="replace")
    assert "1.0 GiB" in text, text[-2000:]
    assert "sparse)" in text, text[-2000:]  # holes shown apart from moved bytes
    assert "/3 files" in text, text[-2000:]  # the overall row
    assert "verifying" in text, text[-2000:]  # digest and commit after the last byte
    assert " MB/s" not in text and " GB" not in text  # no decimal units anywhere
    rates = [float(v) * {"KiB": 1 / 1024, "MiB": 1, "GiB": 1024, "TiB": 1024**2}[u]
             for v, u in re.findall(r"([\d.]+) (KiB|MiB|GiB|TiB)/s", text)]
    assert all(rate < 64 * 1024 for rate in rates), rates  # never "1.7 TB/s"


WITHOUT_CLI_EXTRA = ("import runpy, sys; sys.modules['rich'] = sys.modules['uvloop'] = None; "
                     "sys.argv[0] = 'sockferry'; "
                     "runpy.run_module('sockferry', run_name='__main__')")


def test_without_the_cli_extra_a_terminal_gets_no_bar_and_the_same_result(
        tmp_path: Path) -> None:
    """rich and uvloop are the cli extra's: without them (imports made to fail) a
    transfer on a terminal runs on asyncio's loop, shows no bar and says the same."""
    root = tmp_path / "root"
    root.mkdir()
    token = write_token(tmp_path / "token")
    with open(tmp_path / "f.bin", "wb") as f:  # long enough for a bar to be drawn
        f.truncate(SPARSE_SIZE)
        f.write(os.urandom(65536))
    with running("serve", str(root), "--listen", "127.0.0.1:0", "--token-file",
                 str(token)) as server:
        port = server.wait_for(r"listening on 127\.0\.0\.1:(\d+)").group(1)
        child, screen = _on_a_terminal(
            [sys.executable, "-c", WITHOUT_CLI_EXTRA, "send", "-P", str(port),
             "--token-file", str(token), str(tmp_path / "f.bin"), "127.0.0.1:"])
    text = screen.decode(errors="replace")
    assert child.returncode == ExitCode.OK, text
    assert (root / "f.bin").stat().st_size == SPARSE_SIZE
    assert "Traceback" not in text, text
    assert "verifying" not in text and "GiB of" not in text, text  # no bar drawn
    assert "sent 1 file(s), 1.0 GiB in" in text, text  # the summary a terminal gets
