#!/usr/bin/env python3
"""TFTP throughput: sockferry's server against tftpd-hpa's, in the same run.

Downloads and uploads one file (100 MiB by default) over loopback:

- with curl's TFTP client (blksize 512 and 1468) against tftpd-hpa and against
  ``sockferry tftp-serve``;
- with ``sockferry tftp-get`` / ``tftp-put`` (windowsize 1 and 16, blksize 1468) against
  both servers (tftpd-hpa knows no windowsize, so it answers windowsize 16 with 1).

Runs alternate between the two servers (hpa first on even runs, sockferry first on odd
ones), each case is repeated ``--runs`` times and the median is reported, with the ratio
sockferry / tftpd-hpa.  Both servers are pinned to one CPU and every client to another,
with ``taskset -c``, the same way for every tool.  Files live on tmpfs (/dev/shm) so
that the disk is not what is measured; times are wall-clock times of the client command
(process start-up included, for curl as for sockferry).

Next to the rates, the CPU time each server spent per block (user + system, from
/proc/PID/stat, median over the runs): a steadier figure than the rate on a shared
machine, and the one that decides lock-step speed.  sockferry's server is one process;
tftpd-hpa forks a child per transfer, whose counters are read every 5 ms while it runs
(the last few milliseconds of a child are missed: well under 1 % of a transfer).

tftpd-hpa runs as ``in.tftpd -s ROOT -c -u root`` on a bound socket it inherits (its
inetd mode), so it needs root (it chroots).

    sudo python3 bench/tftp_bench.py [--size-mib 100] [--runs 3] [--server-cpu 0]
                                     [--client-cpu 1] [--only curl|sockferry]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FILE_NAME = "bench.bin"
TICKS_PER_S = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Case:
    tool: str        # "curl" or "sockferry"
    direction: str   # "get" or "put"
    blksize: int
    windowsize: int = 1

    @property
    def label(self) -> str:
        window = f" windowsize {self.windowsize}" if self.tool == "sockferry" else ""
        return f"{self.tool} {self.direction} blksize {self.blksize}{window}"


CASES = [
    Case("curl", "get", 512), Case("curl", "get", 1468),
    Case("curl", "put", 512), Case("curl", "put", 1468),
    Case("sockferry", "get", 1468, 1), Case("sockferry", "get", 1468, 16),
    Case("sockferry", "put", 1468, 1), Case("sockferry", "put", 1468, 16),
]


class Servers:
    """tftpd-hpa and sockferry, each serving its own root on loopback."""

    def __init__(self, work: Path, cpu: int) -> None:
        self.roots = {"tftpd-hpa": work / "hpa", "sockferry": work / "sockferry"}
        for root in self.roots.values():
            root.mkdir()
        in_tftpd = shutil.which("in.tftpd") or "/usr/sbin/in.tftpd"
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        self.ports = {"tftpd-hpa": sock.getsockname()[1]}
        self.hpa = subprocess.Popen(
            ["taskset", "-c", str(cpu), in_tftpd, "-s", str(self.roots["tftpd-hpa"]), "-c",
             "-u", "root", "-t", "86400"], stdin=sock.fileno())
        sock.close()
        env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
        self.ours = subprocess.Popen(
            ["taskset", "-c", str(cpu), sys.executable, "-m", "sockferry", "tftp-serve",
             str(self.roots["sockferry"]), "--listen", "127.0.0.1:0",
             "--allow-upload", "create"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        assert self.ours.stdout is not None
        line = self.ours.stdout.readline()
        self.ports["sockferry"] = int(line.rsplit(":", 1)[1])

    def close(self) -> None:
        for process in (self.hpa, self.ours):
            process.terminate()
            process.wait(10)

    def cpu_meter(self, server: str) -> CpuMeter:
        if server == "sockferry":
            return CpuMeter(self.ours.pid, children=False)
        return CpuMeter(self.hpa.pid, children=True)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process so far; None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S  # utime, stime


class CpuMeter:
    """CPU time a server spends while a client runs.  With ``children``, the server's
    forked children count, read every 5 ms while they live (tftpd-hpa's parent neither
    waits for them nor runs the transfer itself)."""

    def __init__(self, pid: int, *, children: bool) -> None:
        self.pid = pid
        self.children = children
        self._seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> CpuMeter:
        self._start = cpu_seconds(self.pid) or 0.0
        if self.children:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.children:
            time.sleep(0.05)  # let the last child's counters be read
            self._stop.set()
            self._thread.join()
        end = cpu_seconds(self.pid) or self._start
        self.seconds = end - self._start + sum(self._seen.values())

    def _watch(self) -> None:
        while not self._stop.wait(0.005):
            for task in Path(f"/proc/{self.pid}/task").glob("*/children"):
                try:
                    pids = [int(pid) for pid in task.read_text().split()]
                except OSError:
                    continue
                for pid in pids:
                    seconds = cpu_seconds(pid)
                    if seconds is not None:
                        self._seen[pid] = seconds


def client_argv(case: Case, port: int, local: Path) -> list[str]:
    url = f"tftp://127.0.0.1:{port}/{FILE_NAME}"
    if case.tool == "curl":
        sizes = ["--tftp-blksize", str(case.blksize)]
        if case.direction == "get":
            return ["curl", "-sS", *sizes, "-o", str(local), url]
        return ["curl", "-sS", *sizes, "-T", str(local), url]
    options = ["-q", "--blksize", str(case.blksize), "--windowsize", str(case.windowsize)]
    if case.direction == "get":
        return [sys.executable, "-m", "sockferry", "tftp-get", *options,
                f"127.0.0.1:{port}", FILE_NAME, str(local)]
    return [sys.executable, "-m", "sockferry", "tftp-put", *options, str(local),
            f"127.0.0.1:{port}", FILE_NAME]


def one_run(case: Case, server: str, servers: Servers, source: Path, *, work: Path,
            cpu: int) -> tuple[float, float]:
    """(wall-clock seconds of the client, CPU seconds of the server)."""
    root = servers.roots[server]
    if case.direction == "get":
        shutil.copyfile(source, root / FILE_NAME)
        local = work / "downloaded.bin"
    else:
        (root / FILE_NAME).unlink(missing_ok=True)
        local = source
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    argv = ["taskset", "-c", str(cpu), *client_argv(case, servers.ports[server], local)]
    with servers.cpu_meter(server) as meter:
        started = time.perf_counter()
        result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
        seconds = time.perf_counter() - started
    landed = local if case.direction == "get" else root / FILE_NAME
    if result.returncode != 0 or landed.stat().st_size != source.stat().st_size:
        raise SystemExit(f"{case.label} against {server} failed: {result.stderr.strip()}")
    if case.direction == "get":
        local.unlink()
    return seconds, meter.seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=100)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--only", choices=["curl", "sockferry"])
    args = parser.parse_args()
    for program in ("curl", "taskset"):
        if shutil.which(program) is None:
            raise SystemExit(f"{program} is needed")
    if os.geteuid() != 0:
        raise SystemExit("tftpd-hpa chroots into its root: run this as root")
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    work = Path(tempfile.mkdtemp(prefix="tftp-bench-", dir=base))
    size = args.size_mib * 1024 * 1024
    source = work / "source.bin"
    with source.open("wb") as out:
        for _ in range(args.size_mib):
            out.write(os.urandom(1024 * 1024))
    servers = Servers(work, args.server_cpu)
    cases = [c for c in CASES if args.only in (None, c.tool)]
    results: dict[str, dict[str, list[float]]] = {}
    cpu: dict[str, dict[str, list[float]]] = {}
    try:
        print(f"# {args.size_mib} MiB over loopback, {args.runs} runs per case, alternating; "
              f"servers pinned with 'taskset -c {args.server_cpu}', clients with "
              f"'taskset -c {args.client_cpu}'; files on {work.parent} (tmpfs)",
              flush=True)
        for case in cases:
            times: dict[str, list[float]] = {"tftpd-hpa": [], "sockferry": []}
            spent: dict[str, list[float]] = {"tftpd-hpa": [], "sockferry": []}
            blocks = size // case.blksize + 1
            for run in range(args.runs):
                order = ["tftpd-hpa", "sockferry"] if run % 2 == 0 else ["sockferry",
                                                                         "tftpd-hpa"]
                for server in order:
                    seconds, cpu_s = one_run(case, server, servers, source, work=work,
                                             cpu=args.client_cpu)
                    times[server].append(seconds)
                    spent[server].append(cpu_s / blocks * 1e6)
            results[case.label] = times
            cpu[case.label] = spent
            hpa = size / statistics.median(times["tftpd-hpa"]) / 1e6
            ours = size / statistics.median(times["sockferry"]) / 1e6
            runs = ", ".join(f"{size / t / 1e6:.1f}" for t in times["sockferry"])
            print(f"{case.label:42s} tftpd-hpa {hpa:6.1f} MB/s "
                  f"{statistics.median(spent['tftpd-hpa']):5.1f} us/block   sockferry "
                  f"{ours:6.1f} MB/s {statistics.median(spent['sockferry']):5.1f} us/block"
                  f"   ratio {ours / hpa:4.2f}   (sockferry runs: {runs})", flush=True)
    finally:
        servers.close()
        shutil.rmtree(work, ignore_errors=True)
    print()
    print("| case | tftpd-hpa MB/s | sockferry MB/s | sockferry / tftpd-hpa "
          "| server CPU µs/block: tftpd-hpa | sockferry |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, times in results.items():
        hpa = size / statistics.median(times["tftpd-hpa"]) / 1e6
        ours = size / statistics.median(times["sockferry"]) / 1e6
        print(f"| {label} | {hpa:.1f} | {ours:.1f} | {ours / hpa:.2f} "
              f"| {statistics.median(cpu[label]['tftpd-hpa']):.1f} "
              f"| {statistics.median(cpu[label]['sockferry']):.1f} |")
    out_dir = REPO / "bench" / "results"
    out_dir.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    (out_dir / f"tftp-{stamp}.json").write_text(json.dumps(
        {"size_bytes": size, "runs": args.runs, "server_cpu": args.server_cpu,
         "client_cpu": args.client_cpu, "seconds": results,
         "server_cpu_us_per_block": cpu}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
