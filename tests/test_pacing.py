"""--limit-rate: the token bucket's arithmetic, and real transfers held to a rate."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from sockferry.cli.runtime import ExitCode
from sockferry.pacing import Pacer
from tests.ferry.harness import ServerThread, run_cli, write_token

MiB = 1024 * 1024


def test_a_burst_goes_at_once_and_the_rest_waits_its_turn() -> None:
    pacer = Pacer(1000, now=0.0, burst=100)
    assert pacer.delay(100, now=0.0) == 0.0  # the first burst is free
    assert pacer.delay(50, now=0.0) == pytest.approx(0.05)  # in debt: pay it off
    assert pacer.delay(0, now=0.05) == 0.0
    assert pacer.delay(1000, now=0.05) == pytest.approx(1.0)  # more than a burst
    # Idle time refills the bucket only up to one burst.
    assert pacer.delay(100, now=100.0) == 0.0
    assert pacer.delay(100, now=100.0) == pytest.approx(0.1)


def test_the_average_holds_over_many_takes() -> None:
    pacer = Pacer(10_000, now=0.0)
    now, moved = 0.0, 0
    for _ in range(1000):  # bounded
        now += pacer.delay(997, now)
        moved += 997
    assert moved / now == pytest.approx(10_000, rel=0.02)


@pytest.mark.parametrize("direction", ["send", "get"])
def test_a_transfer_keeps_to_its_rate(tmp_path: Path, direction: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    body = os.urandom(3 * MiB)
    (tmp_path / "src.bin").write_bytes(body)
    (root / "src.bin").write_bytes(body)
    token = write_token(tmp_path / "token")
    argv = (["send", str(tmp_path / "src.bin"), "127.0.0.1:copy.bin"] if direction == "send"
            else ["get", "127.0.0.1:src.bin", str(tmp_path / "copy.bin")])
    with ServerThread(root) as server:
        started = time.monotonic()
        code, _, err = run_cli(*argv, "--limit-rate", "1M", "-P", str(server.port),
                               "--token-file", str(token))
        elapsed = time.monotonic() - started
    assert code == ExitCode.OK, err
    copy = (root if direction == "send" else tmp_path) / "copy.bin"
    assert copy.read_bytes() == body
    # 3 MiB at 1 MiB/s, less the first burst of 1/20 s: never faster; loosely bounded
    # above, since the machine may be slow.
    assert 2.8 <= elapsed < 15, elapsed


def test_a_rate_must_be_positive() -> None:
    code, _, err = run_cli("send", "--limit-rate", "0", "x", ":x")
    assert code == ExitCode.USAGE
    assert "not a rate like 500K" in err
