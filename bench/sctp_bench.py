"""SCTP over UDP on loopback: our userspace stack against itself and against usrsctp.

200 MiB as 64 KiB messages from a sender to a receiver, for each pair of stacks, the
pairs alternated round by round; medians of MB/s (10^6 bytes per second, from the
sender's GO to the receiver holding the last message) and of CPU seconds per side.
Every run pins the receiver to CPU 0 and the sender to CPU 1 with ``taskset -c``, or
with ``--unpinned`` leaves placing them to the scheduler, as users run them.
Our stack sizes packets to loopback's MTU (65 507-byte SCTP packets); usrsctp is given
a 32 000-byte path MTU (see USRSCTP_MTU), and its UDP socket gets the same 8 MiB buffers
as ours (usrsctp_peer.c: its own 256 KiB hold just two 64 KiB datagrams).

    python bench/sctp_bench.py [--rounds 3] [--mib 200]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.sctp.usrsctp_peer import build, free_udp_port  # noqa: E402

PEER = [sys.executable, str(ROOT / "bench" / "sctp_peer.py")]
RECEIVER_CPU, SENDER_CPU = "0", "1"
SIZE = 65536
CLOCK_TICKS = 100  # os.sysconf("SC_CLK_TCK") on Linux
# usrsctp assumes a 1500-byte MTU on UDP paths; told loopback's real one it stalls (its
# packets go wrong above about 40 000 bytes here), so it gets the largest that works.
USRSCTP_MTU = "MTU 32000"
# usrsctp's UDP socket buffers are 256 KiB, two of our 64 KiB datagrams; ours are 8 MiB.
USRSCTP_UDP_BUFFERS = f"UDPBUF {8 << 20}"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


PINNING = {"on": True}  # main() turns it off for --unpinned


def pinned(cpu: str, argv: list[str]) -> subprocess.Popen[str]:
    prefix = ["taskset", "-c", cpu] if PINNING["on"] else []
    return subprocess.Popen([*prefix, *argv], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, bufsize=1)


def expect(proc: subprocess.Popen[str], prefix: str) -> str:
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"a benchmark process ended before saying {prefix}")
        if line.startswith(prefix):
            return line.strip()


def tell(proc: subprocess.Popen[str], line: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(line + "\n")
    proc.stdin.flush()


@dataclass
class Result:
    mb_s: float
    sender_cpu_s: float
    receiver_cpu_s: float


class Side:
    """Start a receiver or a sender of one kind; the methods return the process."""

    def __init__(self, usrsctp: Path, count: int) -> None:
        self.usrsctp = usrsctp
        self.count = count

    def receiver(self, kind: str) -> tuple[subprocess.Popen[str], int, int, Callable[[], None]]:
        """(process, SCTP port, UDP port, wait-until-all-received)."""
        if kind == "python":
            proc = pinned(RECEIVER_CPU, [*PEER, "receive", str(self.count)])
            port = int(expect(proc, "READY").split()[1])
            return proc, port, port, lambda: expect(proc, "DONE") and None
        udp = free_udp_port()
        proc = pinned(RECEIVER_CPU, [str(self.usrsctp), str(udp)])
        expect(proc, "READY")
        for command in ("LISTEN 5001", "QUIET 1", USRSCTP_MTU, USRSCTP_UDP_BUFFERS):
            tell(proc, command)
            expect(proc, "OK")

        def wait() -> None:
            tell(proc, f"WAITFOR {self.count}")
            expect(proc, "OK WAITFOR")
        return proc, 5001, udp, wait

    def sender(self, kind: str, port: int, udp: int) -> tuple[subprocess.Popen[str],
                                                               Callable[[], None]]:
        """(process, start-sending); the process is connected when this returns."""
        if kind == "python":
            proc = pinned(SENDER_CPU, [*PEER, "send", str(port), str(udp), str(self.count),
                                       str(SIZE)])
            expect(proc, "UP")
            return proc, lambda: tell(proc, "GO")
        proc = pinned(SENDER_CPU, [str(self.usrsctp), str(free_udp_port())])
        expect(proc, "READY")
        for command in (USRSCTP_MTU, USRSCTP_UDP_BUFFERS):
            tell(proc, command)
            expect(proc, "OK")
        tell(proc, f"CONNECT 127.0.0.1 {port} {udp}")
        assoc = expect(proc, "EVENT COMM_UP").split()[2].split("=")[1]

        def go() -> None:
            tell(proc, f"BULK {assoc} 0 {self.count} {SIZE}")
        return proc, go


def run_once(side: Side, sender_kind: str, receiver_kind: str) -> Result:
    receiver, port, udp, wait = side.receiver(receiver_kind)
    sender, go = side.sender(sender_kind, port, udp)
    try:
        before = cpu_seconds(sender.pid), cpu_seconds(receiver.pid)
        start = time.perf_counter()
        go()
        wait()
        elapsed = time.perf_counter() - start
        after = cpu_seconds(sender.pid), cpu_seconds(receiver.pid)
    finally:
        for proc in (sender, receiver):
            proc.kill()
            proc.wait()
    return Result(side.count * SIZE / elapsed / 1e6, after[0] - before[0],
                  after[1] - before[1])


PAIRS = [("python", "python"), ("python", "usrsctp"), ("usrsctp", "python"),
         ("usrsctp", "usrsctp")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mib", type=int, default=200)
    parser.add_argument("--unpinned", action="store_true",
                        help="no taskset: the scheduler places sender and receiver")
    args = parser.parse_args()
    PINNING["on"] = not args.unpinned
    count = args.mib * (1 << 20) // SIZE
    with tempfile.TemporaryDirectory() as directory:
        binary = build(Path(directory))
        if binary is None:
            sys.exit("gcc and libusrsctp-dev are needed for the usrsctp side")
        side = Side(binary, count)
        results: dict[tuple[str, str], list[Result]] = {pair: [] for pair in PAIRS}
        for round_number in range(args.rounds):
            for pair in PAIRS:
                result = run_once(side, *pair)
                results[pair].append(result)
                print(f"round {round_number + 1}: {pair[0]} -> {pair[1]}: "
                      f"{result.mb_s:.0f} MB/s", file=sys.stderr, flush=True)
    reference = statistics.median(r.mb_s for r in results[("usrsctp", "usrsctp")])
    print(f"{args.mib} MiB as {count} messages of 64 KiB over SCTP/UDP on loopback, "
          f"medians of {args.rounds} alternated runs; "
          + ("unpinned\n" if args.unpinned else
             f"receiver on CPU {RECEIVER_CPU}, sender on CPU {SENDER_CPU} (taskset)\n"))
    print("| sender -> receiver | MB/s | vs usrsctp->usrsctp | sender CPU s | receiver CPU s "
          "| MB per CPU s of the busier side |")
    print("|---|---:|---:|---:|---:|---:|")
    for pair in PAIRS:
        runs = results[pair]
        mb_s = statistics.median(r.mb_s for r in runs)
        sender_s = statistics.median(r.sender_cpu_s for r in runs)
        receiver_s = statistics.median(r.receiver_cpu_s for r in runs)
        # What the slower side could carry with a core to itself: steadier than MB/s
        # on a machine shared with other work.
        ceiling = count * SIZE / 1e6 / max(sender_s, receiver_s, 0.01)
        print(f"| {pair[0]} -> {pair[1]} | {mb_s:.0f} | {mb_s / reference:.2f} | "
              f"{sender_s:.2f} | {receiver_s:.2f} | {ceiling:.0f} |")


if __name__ == "__main__":
    main()
