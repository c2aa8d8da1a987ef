#!/usr/bin/env python3
"""Send one large file over loopback with sockferry, nc and scp in the same run.

Each round runs every tool once, in rotating order; the table reports the median over
the rounds, MB/s (10^6 bytes per second) and sockferry's ratio to each reference.
Every receiver is pinned to one CPU and every sender to another (``taskset``), the same
way for all tools, so the scheduler cannot favour one of them.

What is timed: from starting the sending command until the receiving side has the whole
file (nc: until the listening nc exits; scp and sockferry: until the client exits, which
for sockferry is after the server confirmed the digest and fsynced the file).

Usage: python3 bench/ferry_bench.py [--size-mib 1024] [--rounds 5] [--json FILE]
       [--with-sctp]  (adds sockferry over SCTP, on the userspace stack in UDP)
Needs: nc (netcat-openbsd), ssh + sshd (openssh-client, openssh-server), taskset.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
SENDER_CPU, RECEIVER_CPU = "0", "1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(cpu: str, *argv: str) -> list[str]:
    return ["taskset", "-c", cpu, *argv]


def wait_port(port: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


class Sockferry:
    name = "sockferry"
    transport: tuple[str, ...] = ()  # extra options of serve and send

    def __init__(self, work: Path) -> None:
        self.root = work / f"{self.name}-root"
        self.root.mkdir()
        self.token = work / f"{self.name}-token"
        self.token.write_text("bench-token-" + os.urandom(16).hex())
        self.token.chmod(0o600)
        self.port = free_port()
        env = {**os.environ, "PYTHONPATH": str(SRC)}
        self.env = env
        self.server = subprocess.Popen(
            pinned(RECEIVER_CPU, sys.executable, "-m", "sockferry", "serve", str(self.root),
                   "--listen", f"127.0.0.1:{self.port}", "--token-file", str(self.token),
                   *self.transport),
            env=env, stderr=subprocess.DEVNULL)
        self.wait()

    def wait(self) -> None:
        wait_port(self.port)

    def run(self, source: Path) -> float:
        target = self.root / "copy.bin"
        target.unlink(missing_ok=True)
        started = time.perf_counter()
        subprocess.run(pinned(SENDER_CPU, sys.executable, "-m", "sockferry", "send", "-q",
                              "-P", str(self.port), "--token-file", str(self.token),
                              *self.transport, str(source), "127.0.0.1:copy.bin"),
                       env=self.env, check=True)
        elapsed = time.perf_counter() - started
        assert target.stat().st_size == source.stat().st_size
        return elapsed

    def close(self) -> None:
        self.server.send_signal(signal.SIGTERM)
        self.server.wait(30)


class SockferrySctp(Sockferry):
    """The same transfer over SCTP (``--transport sctp``) on the userspace stack in UDP:
    the kernel here has no SCTP."""

    name = "sockferry-sctp"
    transport = ("--transport", "sctp", "--sctp-stack", "udp")

    def wait(self) -> None:
        wait_for_listen(self.port, "/proc/net/udp", "07")


class Netcat:
    name = "nc"

    def __init__(self, work: Path) -> None:
        self.target = work / "nc-copy.bin"

    def run(self, source: Path) -> float:
        port = free_port()
        with open(self.target, "wb") as out:
            listener = subprocess.Popen(pinned(RECEIVER_CPU, "nc", "-l", "127.0.0.1",
                                               str(port)), stdout=out)
            wait_for_listen(port)
            started = time.perf_counter()
            with open(source, "rb") as data:
                subprocess.run(pinned(SENDER_CPU, "nc", "-N", "127.0.0.1", str(port)),
                               stdin=data, check=True)
            listener.wait(60)
            elapsed = time.perf_counter() - started
        assert self.target.stat().st_size == source.stat().st_size
        return elapsed

    def close(self) -> None:
        self.target.unlink(missing_ok=True)


def wait_for_listen(port: int, table_path: str = "/proc/net/tcp", state: str = "0A",
                    timeout_s: float = 10.0) -> None:
    """Wait until a port is bound in ``state`` (TCP LISTEN, or UDP's 07) without
    connecting to it."""
    needle = f":{port:04X} "
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with open(table_path) as table:
            for line in table:
                fields = line.split()
                if len(fields) > 3 and needle in f"{fields[1]} " and fields[3] == state:
                    return
        time.sleep(0.01)
    raise RuntimeError(f"nothing listened on {port}")


class Scp:
    name = "scp"

    def __init__(self, work: Path) -> None:
        self.dir = work / "ssh"
        self.dir.mkdir(mode=0o700)
        self.target = work / "scp-copy.bin"
        for kind in ("host", "user"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                            str(self.dir / kind)], check=True)
        (self.dir / "authorized_keys").write_text((self.dir / "user.pub").read_text())
        (self.dir / "authorized_keys").chmod(0o600)
        self.port = free_port()
        config = self.dir / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {self.dir / 'host'}\n"
            f"AuthorizedKeysFile {self.dir / 'authorized_keys'}\nPidFile {self.dir / 'pid'}\n"
            "PermitRootLogin yes\nPasswordAuthentication no\nUsePAM no\n"
            "StrictModes no\nSubsystem sftp internal-sftp\n")
        Path("/run/sshd").mkdir(exist_ok=True)
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        self.server = subprocess.Popen(pinned(RECEIVER_CPU, sshd, "-D", "-e", "-f",
                                              str(config)), stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def run(self, source: Path) -> float:
        self.target.unlink(missing_ok=True)
        started = time.perf_counter()
        subprocess.run(pinned(SENDER_CPU, "scp", "-q", "-P", str(self.port), "-i",
                              str(self.dir / "user"), "-o", "StrictHostKeyChecking=no",
                              "-o", f"UserKnownHostsFile={self.dir / 'known_hosts'}",
                              str(source), f"{os.environ.get('USER', 'root')}@127.0.0.1:"
                              f"{self.target}"), check=True)
        elapsed = time.perf_counter() - started
        assert self.target.stat().st_size == source.stat().st_size
        return elapsed

    def close(self) -> None:
        self.server.terminate()
        self.server.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--with-sctp", action="store_true",
                        help="also sockferry over SCTP (--transport sctp, userspace stack)")
    args = parser.parse_args()
    if os.cpu_count() is None or os.cpu_count() < 2:  # type: ignore[operator]
        print("needs two CPUs for pinning", file=sys.stderr)
        return 1
    size = args.size_mib * 1024 * 1024
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        work = Path(tmp)
        source = work / "source.bin"
        with open(source, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(1024 * 1024))
        tools: list[Sockferry | Netcat | Scp] = [Sockferry(work), Netcat(work), Scp(work)]
        if args.with_sctp:
            tools.insert(1, SockferrySctp(work))
        times: dict[str, list[float]] = {t.name: [] for t in tools}
        try:
            for round_index in range(args.rounds):
                order = tools[round_index % len(tools):] + tools[: round_index % len(tools)]
                for tool in order:
                    times[tool.name].append(tool.run(source))
        finally:
            for tool in tools:
                tool.close()
    report(times, size, args)
    return 0


def report(times: dict[str, list[float]], size: int, args: argparse.Namespace) -> None:
    medians = {name: statistics.median(values) for name, values in times.items()}
    rate: Callable[[str], float] = lambda name: size / medians[name] / 1e6  # noqa: E731
    print(f"{args.size_mib} MiB over loopback, {args.rounds} rounds, median; receivers on "
          f"CPU {RECEIVER_CPU}, senders on CPU {SENDER_CPU} (taskset)")
    print()
    print("| tool | median s | MB/s | sockferry speed ÷ this tool's |")
    print("|---|---|---|---|")
    for name in times:
        ratio = medians[name] / medians["sockferry"]
        print(f"| {name} | {medians[name]:.2f} | {rate(name):.0f} | {ratio:.2f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"size": size, "times": times,
                                         "medians": medians}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
