"""``sockferry sctp-serve`` as a process for the CLI tests."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def sctp_server(transport: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """``sctp-serve --echo --streams 5`` on 127.0.0.1 over ``transport``; its port."""
    proc = subprocess.Popen([sys.executable, "-m", "sockferry", "sctp-serve", "--listen",
                             "127.0.0.1:0", "--echo", "--transport", transport, "--streams",
                             "5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        banner = proc.stderr.readline()
        match = re.search(r"127\.0\.0\.1:(\d+)", banner)
        assert match, banner
        yield proc, int(match.group(1))
    finally:
        if proc.poll() is None:
            proc.kill()
        with proc:  # closes the pipes and reaps the process
            pass
