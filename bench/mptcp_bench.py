#!/usr/bin/env python3
"""Multipath TCP over two rate-limited paths between two network namespaces.

A server namespace and a client namespace are joined by two veth pairs (10.200.1.0/24
and 10.200.2.0/24, only inside the namespaces), each shaped with tbf to --rate.  Three
ways to send the same file are timed, in rotating order each round:

- ``MPTCP, 1 path``: ``send --mptcp`` to ``serve --mptcp`` with no second endpoint;
- ``MPTCP, 2 paths``: the same, after the server signals its second address
  (``ip mptcp endpoint add 10.200.2.1 dev p2 signal``), so the client joins a subflow;
- ``TCP``: plain ``send`` to a plain ``serve``.

What is timed: from starting ``sockferry send`` until it exits, which is after the
server verified the digest and fsynced the file.  MB/s are 10^6 bytes per second.  The
joins column is the server's MPTcpExtMPJoinAckRx counter over the rounds of that row:
the subflows that really joined.  Needs root, iproute2 (ip, tc) and a kernel with MPTCP.

Usage: python3 bench/mptcp_bench.py [--size-mib 64] [--rounds 5] [--rate 100mbit]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# The servers and clients started in the namespaces run this checkout's sources.
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH", "")) if p)

from tests.netns import (  # noqa: E402
    Namespace,
    TwoPaths,
    mptcp_missing_reason,
    netns_missing_reason,
    two_paths,
)

MPTCP_PORT, TCP_PORT = 2345, 2346
READY_S = 20.0
SEND_TIMEOUT_S = 600.0
JOINS = "MPTcpExtMPJoinAckRx"


@dataclass(frozen=True, slots=True)
class Way:
    name: str
    port: int
    mptcp: bool
    second_path: bool


WAYS = (Way("MPTCP, 1 path", MPTCP_PORT, True, False),
        Way("MPTCP, 2 paths", MPTCP_PORT, True, True),
        Way("TCP", TCP_PORT, False, False))


def sockferry(ns: Namespace, *argv: str) -> list[str]:
    return ns.command(sys.executable, "-m", "sockferry", *argv)


@contextmanager
def server(ns: Namespace, root: Path, token: Path, port: int, mptcp: bool,
           log: Path) -> Iterator[None]:
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            sockferry(ns, "serve", str(root), "--listen", f"0.0.0.0:{port}",
                      "--token-file", str(token), *(["--mptcp"] if mptcp else [])),
            stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + READY_S
        while b"listening on" not in log.read_bytes():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start: {log.read_text()}")
            time.sleep(0.02)
        yield
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def send_once(paths: TwoPaths, way: Way, source: Path, token: Path, root: Path) -> float:
    """Seconds for one ``sockferry send``; checks the copy and removes it."""
    if way.second_path:
        paths.announce_second_path()
    else:
        paths.forget_second_path()
    target = f"{paths.paths[0].server_address}:bench.bin"
    argv = sockferry(paths.client, "send", "-q", "-P", str(way.port), "--token-file",
                     str(token), *(["--mptcp"] if way.mptcp else []), str(source), target)
    started = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, timeout=SEND_TIMEOUT_S,
                            check=False)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{way.name}: send failed: {result.stderr.strip()}")
    copy = root / "bench.bin"
    if copy.read_bytes() != source.read_bytes():
        raise RuntimeError(f"{way.name}: the copy differs from the source")
    copy.unlink()
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rate", default="100mbit", help="tbf rate of each path")
    args = parser.parse_args()
    reason = netns_missing_reason() or mptcp_missing_reason()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    size = args.size_mib << 20
    times: dict[str, list[float]] = {way.name: [] for way in WAYS}
    joins: dict[str, int] = dict.fromkeys(times, 0)
    with tempfile.TemporaryDirectory(prefix="mptcp-bench-") as work_dir:
        work = Path(work_dir)
        source = work / "source.bin"
        with source.open("wb") as out:
            for _ in range(args.size_mib):
                out.write(os.urandom(1 << 20))
        token = work / "token"
        token.write_text("bench-token-" + os.urandom(16).hex())
        token.chmod(0o600)
        root = work / "root"
        root.mkdir()
        with (two_paths(args.rate) as paths,
              server(paths.server, root, token, MPTCP_PORT, True, work / "mptcp.log"),
              server(paths.server, root, token, TCP_PORT, False, work / "tcp.log")):
            for round_ in range(args.rounds):
                for i in range(len(WAYS)):
                    way = WAYS[(round_ + i) % len(WAYS)]
                    before = paths.server.mptcp_counters().get(JOINS, 0)
                    times[way.name].append(send_once(paths, way, source, token, root))
                    joins[way.name] += paths.server.mptcp_counters().get(JOINS, 0) - before
    print(f"{args.size_mib} MiB, {args.rounds} rounds, two veth paths of {args.rate} each "
          "(tbf), between two network namespaces; MB/s = 10^6 bytes/s")
    print()
    print("| way | median s | median MB/s | min–max MB/s | subflows joined |")
    print("|---|---|---|---|---|")
    for way in WAYS:
        rates = sorted(size / t / 1e6 for t in times[way.name])
        print(f"| {way.name} | {statistics.median(times[way.name]):.2f} | "
              f"{statistics.median(rates):.1f} | {rates[0]:.1f}–{rates[-1]:.1f} | "
              f"{joins[way.name]} in {args.rounds} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
