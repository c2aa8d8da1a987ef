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
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FILE_NAME = "bench.bin"


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
            cpu: int) -> float:
    root = servers.roots[server]
    if case.direction == "get":
        shutil.copyfile(source, root / FILE_NAME)
        local = work / "downloaded.bin"
    else:
        (root / FILE_NAME).unlink(missing_ok=True)
        local = source
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    argv = ["taskset", "-c", str(cpu), *client_argv(case, servers.ports[server], local)]
    started = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    seconds = time.perf_counter() - started
    landed = local if case.direction == "get" else root / FILE_NAME
    if result.returncode != 0 or landed.stat().st_size != source.stat().st_size:
        raise SystemExit(f"{case.label} against {server} failed: {result.stderr.strip()}")
    if case.direction == "get":
        local.unlink()
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
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
    try:
        print(f"# {args.size_mib} MiB over loopback, {args.runs} runs per case, alternating; "
              f"servers pinned with 'taskset -c {args.server_cpu}', clients with "
              f"'taskset -c {args.client_cpu}'; files on {work.parent} (tmpfs)",
              flush=True)
        for case in cases:
            times: dict[str, list[float]] = {"tftpd-hpa": [], "sockferry": []}
            for run in range(args.runs):
                order = ["tftpd-hpa", "sockferry"] if run % 2 == 0 else ["sockferry",
                                                                         "tftpd-hpa"]
                for server in order:
                    times[server].append(one_run(case, server, servers, source,
                                                 work=work, cpu=args.client_cpu))
            results[case.label] = times
            hpa = size / statistics.median(times["tftpd-hpa"]) / 1e6
            ours = size / statistics.median(times["sockferry"]) / 1e6
            runs = ", ".join(f"{size / t / 1e6:.1f}" for t in times["sockferry"])
            print(f"{case.label:42s} tftpd-hpa {hpa:6.1f} MB/s   sockferry {ours:6.1f} MB/s"
                  f"   ratio {ours / hpa:4.2f}   (sockferry runs: {runs})", flush=True)
    finally:
        servers.close()
        shutil.rmtree(work, ignore_errors=True)
    print()
    print("| case | tftpd-hpa MB/s | sockferry MB/s | sockferry / tftpd-hpa |")
    print("|---|---:|---:|---:|")
    for label, times in results.items():
        hpa = size / statistics.median(times["tftpd-hpa"]) / 1e6
        ours = size / statistics.median(times["sockferry"]) / 1e6
        print(f"| {label} | {hpa:.1f} | {ours:.1f} | {ours / hpa:.2f} |")
    out_dir = REPO / "bench" / "results"
    out_dir.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    (out_dir / f"tftp-{stamp}.json").write_text(json.dumps(
        {"size_bytes": size, "runs": args.runs, "server_cpu": args.server_cpu,
         "client_cpu": args.client_cpu, "seconds": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
