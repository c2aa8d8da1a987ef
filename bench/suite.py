#!/usr/bin/env python3
"""The TCP transfer benchmark suite: sockferry against the tools users compare it with.

Cases (``--only`` takes their letters):

  a  10,000 files of 4 KiB, tmpfs both sides: ``send -r`` vs rsync daemon (-r, -a) vs scp -r
  b  1 GiB ``send`` (client -> server), tmpfs: vs nc and scp (aes128-gcm)
  c  1 GiB ``get`` (server -> client), tmpfs: vs nc and scp in that direction
  d  1 GiB ``send`` onto a real disk (it fsyncs): vs nc + sync FILE, scp + sync FILE
  h  small files onto a real disk: sockferry --fsync batch|each|none vs rsync (--fsync)
  u  the same tree sent again unchanged: ``send -r -u`` vs ``rsync -a`` (their quick checks)
  e  10,000 idle authenticated connections to one server: RSS, fds, handshakes/s, and a
     1 MiB send while they are open
  f  1,000 clients uploading 256 KiB each at once: peak RSS, wall time, every file checked
  g  start-up (hyperfine): ``--version`` vs rsync, one 4 KiB ``send`` vs scp

Every case runs unpinned (how users run it) and pinned (servers and receivers on CPU 1,
clients and senders on CPU 0, with taskset, the same for every tool).  Each round runs
every tool once, the order rotating from round to round.  Every sample is checked: the
receiver must hold every byte (size, file count, or content), or the suite stops.

Writes OUT/latest.md, OUT/latest.png and OUT/latest.json (all raw samples).
Run it through ``bench/run``, which picks the interpreter ($PYTHON, else .venv).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import hashlib
import json
import math
import os
import platform
import pwd
import resource
import selectors
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SRC = REPO / "src"
LOADGEN = HERE / "loadgen.py"
MODES = ("unpinned", "pinned")
SERVER_CPU, CLIENT_CPU = "1", "0"
APT_PACKAGES = {"nc": "netcat-openbsd", "rsync": "rsync", "sshd": "openssh-server",
                "scp": "openssh-client", "ssh-keygen": "openssh-client",
                "hyperfine": "hyperfine", "taskset": "util-linux"}
SCP_CIPHER = "aes128-gcm@openssh.com"
# Server addresses for case e: each takes an eighth of the connections, so no
# (source, destination) pair comes near the ephemeral port range.
IDLE_ADDRESSES = [f"127.0.0.{i}" for i in range(1, 9)]
# Bounded waits, seconds.
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 15.0
SETTLE_TIMEOUT_S = 60.0
MIN_TRANSFER_TIMEOUT_S = 120.0
SLOWEST_RATE = 5e6  # bytes/s: a transfer slower than this is taken as hung
MiB = 1024 * 1024


class BenchError(Exception):
    """A sentence for the user: what failed and what to try."""


# -- sizes ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sizes:
    tree_files: int = 10_000
    tree_file_bytes: int = 4096
    tree_dirs: int = 10
    bulk_bytes: int = 1024 * MiB
    idle_connections: int = 10_000
    upload_clients: int = 1000
    upload_bytes: int = 256 * 1024
    hyperfine_warmup: int = 3
    hyperfine_runs: int = 20


QUICK = Sizes(tree_files=500, tree_dirs=5, bulk_bytes=64 * MiB, idle_connections=500,
              upload_clients=50, hyperfine_warmup=1, hyperfine_runs=5)


# -- results --------------------------------------------------------------------------


@dataclass(slots=True)
class Table:
    """One table of the report: rows (tools or metrics) x modes, every raw sample."""

    key: str
    title: str
    unit: str
    better: str  # "higher", "lower", or "" for plain measurements
    reference: str = "sockferry"  # ratios are this row's median over each other row's
    samples: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)  # per row, when rows differ
    notes: list[str] = field(default_factory=list)
    chart_rows: list[str] | None = None  # rows drawn in the chart (default: all)

    def add(self, mode: str, row: str, value: float) -> None:
        self.samples.setdefault(mode, {}).setdefault(row, []).append(value)

    def rows(self) -> list[str]:
        names: list[str] = []
        for per_mode in self.samples.values():
            names += [n for n in per_mode if n not in names]
        return names


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


# -- processes ------------------------------------------------------------------------


class Processes:
    """Every long-running process the suite starts, so that all of them are stopped
    however the suite ends."""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        # Own session: Ctrl-C reaches the suite, which stops these in order.
        proc = subprocess.Popen(list(argv), start_new_session=True, **kwargs)
        self.running.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(STOP_TIMEOUT_S)
        if proc in self.running:
            self.running.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.running)):
            self.stop(proc)


def interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


# -- helpers --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening_count(port: int) -> int:
    """How many IPv4 TCP sockets listen on ``port`` (read from /proc: no connecting)."""
    needle = f":{port:04X}"
    count = 0
    with open("/proc/net/tcp") as table:
        for line in table:
            fields = line.split()
            if len(fields) > 3 and fields[1].endswith(needle) and fields[3] == "0A":
                count += 1
    return count


def wait_listening(port: int, proc: subprocess.Popen[bytes] | None, what: str,
                   sockets: int = 1, log: IO[str] | None = None) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if listening_count(port) >= sockets:
            return
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"{what} exited with status {proc.returncode} before "
                             f"listening ({last_line(log)}) — run it by hand to see why")
        time.sleep(0.01)
    raise BenchError(f"{what} did not listen on port {port} within {START_TIMEOUT_S:g} s "
                     "— is the machine overloaded?")


def last_line(log: IO[str] | None) -> str:
    """The last line a process wrote to the shared log, for an error message."""
    if log is None:
        return "no log"
    log.flush()
    lines = Path(log.name).read_text(errors="replace").strip().splitlines()
    return lines[-1] if lines else "it wrote nothing"


def transfer_timeout(nbytes: int) -> float:
    return max(MIN_TRANSFER_TIMEOUT_S, nbytes / SLOWEST_RATE)


def run_checked(argv: Sequence[str], what: str, timeout_s: float,
                **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
    try:
        done = subprocess.run(list(argv), stderr=subprocess.PIPE, timeout=timeout_s,
                              check=False, **kwargs)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{what} did not finish within {timeout_s:g} s — is the machine "
                         "overloaded? Try fewer rounds or --quick") from None
    if done.returncode != 0:
        last = (done.stderr or b"").decode(errors="replace").strip().splitlines()
        raise BenchError(f"{what} failed with status {done.returncode}"
                         f"{': ' + last[-1] if last else ''} — run it by hand: "
                         f"{shlex.join(argv)}")
    return done


def check_size(path: Path, expected: int, tool: str) -> None:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise BenchError(f"{tool} reported success but {path} does not exist") from None
    if size != expected:
        raise BenchError(f"{tool} left {size} bytes in {path}, expected {expected}")


def tree_census(root: Path) -> tuple[int, int]:
    """(regular files, total bytes) under root."""
    files = total = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            files += 1
            total += os.lstat(os.path.join(dirpath, name)).st_size
    return files, total


def check_tree(root: Path, files: int, nbytes: int, tool: str) -> None:
    got = tree_census(root)
    if got != (files, nbytes):
        raise BenchError(f"{tool} left {got[0]} files ({got[1]} bytes) under {root}, "
                         f"expected {files} ({nbytes} bytes)")


def fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def write_random(path: Path, nbytes: int) -> None:
    with open(path, "wb") as f:
        left = nbytes
        while left:
            chunk = min(left, 4 * MiB)
            f.write(os.urandom(chunk))
            left -= chunk


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in bytes."""
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) * 1024
    return values


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# -- the rounds -----------------------------------------------------------------------


@dataclass(slots=True)
class Tool:
    """One row of a comparison: ``prepare`` runs untimed before each sample; ``run``
    returns the seconds one sample took, after checking what it transferred."""

    name: str
    run: Callable[[], float]
    prepare: Callable[[], None] = lambda: None


def run_rounds(table: Table, mode: str, tools: Sequence[Tool], rounds: int,
               work: float, progress: Callable[[str], None]) -> None:
    """Run every tool once per round, rotating the order; store work/seconds."""
    for index in range(rounds):
        shift = index % len(tools)
        for tool in [*tools[shift:], *tools[:shift]]:
            tool.prepare()
            seconds = tool.run()
            table.add(mode, tool.name, work / seconds)
            progress(f"  {mode} round {index + 1}/{rounds} {tool.name}: "
                     f"{work / seconds:,.1f} {table.unit}")


def timed(argv: Sequence[str], what: str, timeout_s: float, **kwargs: Any) -> float:
    started = time.perf_counter()
    run_checked(argv, what, timeout_s, **kwargs)
    return time.perf_counter() - started


# -- the environment ------------------------------------------------------------------


@dataclass(slots=True)
class Bench:
    args: argparse.Namespace
    sizes: Sizes
    procs: Processes
    shm: Path  # tmpfs work directory
    disk: Path  # real-disk work directory
    sockferry: list[str]  # how to run the sockferry command
    sockferry_how: str
    token: Path
    env: dict[str, str]
    ssh: SshSetup
    log: IO[str]

    def say(self, text: str) -> None:
        print(text, flush=True)

    def pin_server(self, mode: str, argv: Sequence[str]) -> list[str]:
        return ["taskset", "-c", SERVER_CPU, *argv] if mode == "pinned" else list(argv)

    def pin_client(self, mode: str, argv: Sequence[str]) -> list[str]:
        return ["taskset", "-c", CLIENT_CPU, *argv] if mode == "pinned" else list(argv)

    def client_options(self, port: int) -> list[str]:
        return ["-q", "-P", str(port), "--token-file", str(self.token)]

    @contextlib.contextmanager
    def sockferry_server(self, mode: str, root: Path, *extra: str,
                         listen: Sequence[str] = ("127.0.0.1",)
                         ) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
        port = free_port()
        listens = [a for host in listen for a in ("--listen", f"{host}:{port}")]
        argv = self.pin_server(mode, [*self.sockferry, "serve", str(root), *listens,
                                      "--token-file", str(self.token), *extra])
        proc = self.procs.start(argv, env=self.env, stdout=self.log, stderr=self.log)
        try:
            wait_listening(port, proc, "sockferry serve", sockets=len(listen), log=self.log)
            yield port, proc
        finally:
            self.procs.stop(proc)

    @contextlib.contextmanager
    def sshd(self, mode: str) -> Iterator[int]:
        port = free_port()
        config = self.ssh.config(port)
        proc = self.procs.start(self.pin_server(mode, [self.ssh.sshd, "-D", "-e", "-f",
                                                       str(config)]),
                                stdout=self.log, stderr=self.log)
        try:
            wait_listening(port, proc, "the private sshd", log=self.log)
            yield port
        finally:
            self.procs.stop(proc)

    def scp(self, mode: str, port: int, *argv: str) -> list[str]:
        return self.pin_client(mode, ["scp", "-q", "-P", str(port), *self.ssh.client_options,
                                      *argv])

    @contextlib.contextmanager
    def rsyncd(self, mode: str, module_path: Path) -> Iterator[int]:
        port = free_port()
        config = self.shm / "rsyncd.conf"
        config.write_text(
            f"pid file = {self.shm / 'rsyncd.pid'}\n"
            f"log file = {self.shm / 'rsyncd.log'}\n"
            "use chroot = no\nuid = root\ngid = root\n"
            f"[mod]\npath = {module_path}\nread only = no\n")
        argv = ["rsync", "--daemon", "--no-detach", f"--config={config}",
                "--address=127.0.0.1", f"--port={port}"]
        proc = self.procs.start(self.pin_server(mode, argv), stdout=self.log,
                                stderr=self.log)
        try:
            wait_listening(port, proc, "the private rsync daemon", log=self.log)
            yield port
        finally:
            self.procs.stop(proc)
            (self.shm / "rsyncd.pid").unlink(missing_ok=True)

    def nc_send(self, mode: str, source: Path, target: Path, what: str,
                then: Sequence[str] = ()) -> float:
        """nc -l on the receiving side, nc -N sending; seconds until the listener has
        exited (it has the whole file), plus ``then`` (e.g. sync) when given."""
        port = free_port()
        with open(target, "wb") as out:
            listener = self.procs.start(
                self.pin_server(mode, ["nc", "-l", "127.0.0.1", str(port)]), stdout=out,
                stderr=self.log)
            try:
                wait_listening(port, listener, "nc -l")
                timeout_s = transfer_timeout(source.stat().st_size)
                started = time.perf_counter()
                with open(source, "rb") as data:
                    run_checked(self.pin_client(mode, ["nc", "-N", "127.0.0.1", str(port)]),
                                what, timeout_s, stdin=data)
                try:
                    listener.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    raise BenchError(f"{what}: the listening nc did not exit after the "
                                     "sender finished") from None
                if then:
                    run_checked(then, " ".join(then), timeout_s)
                elapsed = time.perf_counter() - started
            finally:
                self.procs.stop(listener)
        if listener.returncode != 0:
            raise BenchError(f"{what}: the listening nc exited with status "
                             f"{listener.returncode}")
        check_size(target, source.stat().st_size, what)
        return elapsed


@dataclass(slots=True)
class SshSetup:
    """A throwaway host key, client key and known_hosts in a temporary directory."""

    dir: Path
    sshd: str
    client_options: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, directory: Path) -> SshSetup:
        directory.mkdir(mode=0o700)
        for kind in ("host", "client"):
            run_checked(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C",
                         f"sockferry-bench-{kind}", "-f", str(directory / kind)],
                        "ssh-keygen", START_TIMEOUT_S)
        authorized = directory / "authorized_keys"
        authorized.write_text((directory / "client.pub").read_text())
        authorized.chmod(0o600)
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        # sshd insists on its privilege separation directory, which only the system
        # service's start-up creates; an empty one is all it needs.
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        setup = cls(directory, sshd)
        setup.client_options = [
            "-F", "/dev/null", "-i", str(directory / "client"), "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={directory / 'known_hosts'}",
            "-o", "GlobalKnownHostsFile=/dev/null"]
        return setup

    def config(self, port: int) -> Path:
        host_pub = (self.dir / "host.pub").read_text().split()
        (self.dir / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub[0]} "
                                              f"{host_pub[1]}\n")
        config = self.dir / f"sshd_config-{port}"
        config.write_text(
            f"Port {port}\nListenAddress 127.0.0.1\nHostKey {self.dir / 'host'}\n"
            f"AuthorizedKeysFile {self.dir / 'authorized_keys'}\n"
            f"PidFile {self.dir / f'sshd-{port}.pid'}\n"
            "PermitRootLogin yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "UsePAM no\nStrictModes no\nSubsystem sftp internal-sftp\n")
        return config


def user() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


# -- the cases ------------------------------------------------------------------------


def case_small_files(b: Bench) -> list[Table]:
    """a: a tree of small files, tmpfs both sides."""
    s = b.sizes
    table = Table("a", f"{s.tree_files:,} files of {s.tree_file_bytes // 1024} KiB in "
                  f"{s.tree_dirs} directories, tmpfs both sides", "files/s", "higher")
    tree = b.shm / "tree"
    for i in range(s.tree_files):
        sub = tree / f"d{i % s.tree_dirs:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{i:05d}").write_bytes(os.urandom(s.tree_file_bytes))
    nbytes = s.tree_files * s.tree_file_bytes
    timeout_s = transfer_timeout(nbytes) + s.tree_files * 0.05
    table.notes.append("`sockferry send -r TREE 127.0.0.1:dest/` into a fresh server "
                       "directory; `rsync -r` / `rsync -a` to a private rsync daemon "
                       "(rsync://); `scp -r` through a private sshd (default cipher). "
                       "dest/ is emptied before every sample.")
    ferry_root, rsync_root, scp_root = (b.shm / n for n in ("a-ferry", "a-rsync", "a-scp"))
    for root in (ferry_root, rsync_root, scp_root):
        root.mkdir()
    for mode in MODES:
        with (b.sockferry_server(mode, ferry_root) as (port, _),
              b.rsyncd(mode, rsync_root) as rsync_port, b.sshd(mode) as ssh_port):

            def ferry(port: int = port, mode: str = mode) -> float:
                return checked_tree(s, nbytes, lambda: timed(
                    b.pin_client(mode, [*b.sockferry, "send", "-r", *b.client_options(port),
                                        str(tree), "127.0.0.1:dest/"]),
                    "sockferry send -r", timeout_s, env=b.env), ferry_root, "sockferry")

            def rsync(flag: str, port: int = rsync_port, mode: str = mode) -> float:
                return checked_tree(s, nbytes, lambda: timed(
                    b.pin_client(mode, ["rsync", flag, str(tree),
                                        f"rsync://127.0.0.1:{port}/mod/dest/"]),
                    f"rsync {flag}", timeout_s), rsync_root, f"rsync {flag}")

            def scp(port: int = ssh_port, mode: str = mode) -> float:
                return checked_tree(s, nbytes, lambda: timed(
                    b.scp(mode, port, "-r", str(tree), f"{user()}@127.0.0.1:{scp_root}/dest/"),
                    "scp -r", timeout_s), scp_root, "scp -r")

            tools = [Tool("sockferry", ferry, emptied(ferry_root / "dest")),
                     Tool("rsync -r", lambda: rsync("-r"), emptied(rsync_root / "dest")),
                     Tool("rsync -a", lambda: rsync("-a"), emptied(rsync_root / "dest")),
                     Tool("scp -r", scp, emptied(scp_root / "dest"))]
            run_rounds(table, mode, tools, b.args.rounds, s.tree_files, b.say)
    for root in (ferry_root, rsync_root, scp_root, tree):
        shutil.rmtree(root)
    return [table]


def loopback_bytes() -> int:
    """Bytes sent over lo so far (both directions of every loopback connection)."""
    for line in Path("/proc/net/dev").read_text().splitlines():
        name, _, counters = line.partition(":")
        if name.strip() == "lo":
            return int(counters.split()[8])
    raise BenchError("no loopback interface in /proc/net/dev")


def case_noop_update(b: Bench) -> list[Table]:
    """u: an unchanged tree sent again: sockferry send -r -u vs rsync -a (quick checks)."""
    s = b.sizes
    table = Table("u", f"{s.tree_files:,} files of {s.tree_file_bytes // 1024} KiB, "
                  "already on the receiver, sent again unchanged", "files/s", "higher",
                  reference="sockferry -u")
    tree = b.shm / "tree-u"
    for i in range(s.tree_files):
        sub = tree / f"d{i % s.tree_dirs:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{i:05d}").write_bytes(os.urandom(s.tree_file_bytes))
    timeout_s = transfer_timeout(s.tree_files * s.tree_file_bytes) + s.tree_files * 0.05
    moved: dict[str, list[int]] = {"sockferry -u": [], "rsync -a": []}
    table.notes.append("One full copy first (untimed), then every sample is a no-op run "
                       "that must copy nothing: `sockferry send -r -u TREE 127.0.0.1:dest/` "
                       "(sizes and times sent to the server, which answers what it has "
                       "unchanged: one QUICK_CHECK per directory) and `rsync -a "
                       "TREE rsync://127.0.0.1/mod/dest/` (rsync's quick check). Loopback "
                       "bytes per sample (both directions, from /proc/net/dev) in the "
                       "second table.")
    ferry_root, rsync_root = b.shm / "u-ferry", b.shm / "u-rsync"
    for root in (ferry_root, rsync_root):
        root.mkdir()
    for mode in MODES:
        with (b.sockferry_server(mode, ferry_root) as (port, _),
              b.rsyncd(mode, rsync_root) as rsync_port):
            ferry_argv = b.pin_client(mode, [*b.sockferry, "send", "-r", "-u",
                                             *b.client_options(port), str(tree),
                                             "127.0.0.1:dest/"])
            rsync_argv = b.pin_client(mode, ["rsync", "-a", str(tree),
                                             f"rsync://127.0.0.1:{rsync_port}/mod/dest/"])
            run_checked(ferry_argv, "sockferry send -r -u (first copy)", timeout_s,
                        env=b.env)
            run_checked(rsync_argv, "rsync -a (first copy)", timeout_s)

            def sample(name: str, argv: list[str], root: Path) -> float:
                before = loopback_bytes()
                seconds = timed(argv, name, timeout_s,
                                **({"env": b.env} if name.startswith("sockferry") else {}))
                moved[name].append(loopback_bytes() - before)
                check_tree(root / "dest", s.tree_files, s.tree_files * s.tree_file_bytes,
                           name)
                return seconds

            tools = [Tool("sockferry -u", lambda a=ferry_argv: sample("sockferry -u", a,
                                                                       ferry_root)),
                     Tool("rsync -a", lambda a=rsync_argv: sample("rsync -a", a,
                                                                   rsync_root))]
            run_rounds(table, mode, tools, b.args.rounds, s.tree_files, b.say)
    for name, counts in moved.items():
        table.notes.append(f"{name}: loopback bytes per no-op run, median "
                           f"{median([float(c) for c in counts]):,.0f} "
                           f"(min {min(counts):,}, max {max(counts):,})")
    for root in (ferry_root, rsync_root, tree):
        shutil.rmtree(root)
    return [table]


def case_small_files_disk(b: Bench) -> list[Table]:
    """h: a tree of small files onto a real disk, at each durability."""
    s = b.sizes
    count = max(s.tree_files // 5, 10)
    table = Table("h", f"{count:,} files of {s.tree_file_bytes // 1024} KiB onto a real "
                  "disk (under /var/tmp), each durability", "files/s", "higher",
                  reference="sockferry --fsync batch")
    tree = b.shm / "tree-h"
    for i in range(count):
        sub = tree / f"d{i % s.tree_dirs:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{i:05d}").write_bytes(os.urandom(s.tree_file_bytes))
    nbytes = count * s.tree_file_bytes
    timeout_s = transfer_timeout(nbytes) + count * 0.1
    table.notes.append("Source on tmpfs, destination on the real disk. sockferry `serve "
                       "--fsync batch` (the default) and `each` answer COMMITTED only once "
                       "a file and its directory are on stable storage, `none` never "
                       "fsyncs; `rsync -r --fsync` fsyncs every file (not its directory), "
                       "plain `rsync -r` does not fsync. The sample ends when the client "
                       "exits; the written tree is deleted (and the disk synced) between "
                       "samples, outside the timing.")
    sizes = dataclasses.replace(s, tree_files=count)
    ferry_roots = {mode: b.disk / f"h-{mode}" for mode in ("batch", "each", "none")}
    rsync_root = b.disk / "h-rsync"
    for root in (*ferry_roots.values(), rsync_root):
        root.mkdir()
    for mode in MODES:
        with contextlib.ExitStack() as stack:
            ports = {fsync: stack.enter_context(b.sockferry_server(mode, root, "--fsync",
                                                                   fsync))[0]
                     for fsync, root in ferry_roots.items()}
            rsync_port = stack.enter_context(b.rsyncd(mode, rsync_root))

            def ferry(fsync: str, mode: str = mode, ports: dict[str, int] = ports) -> float:
                root = ferry_roots[fsync]
                return checked_tree(sizes, nbytes, lambda: timed(
                    b.pin_client(mode, [*b.sockferry, "send", "-r",
                                        *b.client_options(ports[fsync]), str(tree),
                                        "127.0.0.1:dest/"]),
                    f"sockferry send -r (--fsync {fsync})", timeout_s, env=b.env),
                    root, "sockferry")

            def rsync(*flags: str, port: int = rsync_port, mode: str = mode) -> float:
                return checked_tree(sizes, nbytes, lambda: timed(
                    b.pin_client(mode, ["rsync", *flags, str(tree),
                                        f"rsync://127.0.0.1:{port}/mod/dest/"]),
                    f"rsync {' '.join(flags)}", timeout_s), rsync_root, "rsync")

            tools = [Tool(f"sockferry --fsync {fsync}", lambda f=fsync: ferry(f),
                          synced_empty(root / "dest"))
                     for fsync, root in ferry_roots.items()]
            tools += [Tool("rsync -r --fsync", lambda: rsync("-r", "--fsync"),
                           synced_empty(rsync_root / "dest")),
                      Tool("rsync -r", lambda: rsync("-r"), synced_empty(rsync_root / "dest"))]
            run_rounds(table, mode, tools, b.args.rounds, count, b.say)
    for root in (*ferry_roots.values(), rsync_root, tree):
        shutil.rmtree(root)
    return [table]


def synced_empty(path: Path) -> Callable[[], None]:
    """A prepare step: ``path`` exists and is empty, and the removal is on disk."""

    def prepare() -> None:
        fresh_dir(path)
        os.sync()

    return prepare


def checked_tree(s: Sizes, nbytes: int, sample: Callable[[], float], root: Path,
                 tool: str) -> float:
    seconds = sample()
    check_tree(root / "dest", s.tree_files, nbytes, tool)
    return seconds


def emptied(path: Path) -> Callable[[], None]:
    """A prepare step: ``path`` exists and is empty."""

    def prepare() -> None:
        fresh_dir(path)

    return prepare


def bulk_source(b: Bench) -> Path:
    source = b.shm / "bulk.bin"
    if not source.exists():
        write_random(source, b.sizes.bulk_bytes)
    return source


def case_bulk_send(b: Bench) -> list[Table]:
    """b: one large file client -> server on tmpfs."""
    source = bulk_source(b)
    size = source.stat().st_size
    table = Table("b", f"{size // MiB} MiB send (client → server), tmpfs", "MB/s",
                  "higher")
    table.notes.append("Time until the receiving side holds the whole file: sockferry "
                       "until `send` exits (after the server's COMMITTED: digest checked, "
                       "fsynced, renamed); nc until `nc -l` exits; scp until it exits. "
                       f"scp uses `-c {SCP_CIPHER}`. MB = 10^6 bytes.")
    one_file_rounds(b, table, source, b.shm, sync_after=False)
    return [table]


def case_bulk_disk(b: Bench) -> list[Table]:
    """d: the same send onto a real disk, with equal durability for every tool."""
    source = bulk_source(b)
    size = source.stat().st_size
    table = Table("d", f"{size // MiB} MiB send onto a real disk (under /var/tmp), durable",
                  "MB/s", "higher")
    table.notes.append("Source on tmpfs, receivers write under /var/tmp. sockferry "
                       "fsyncs before COMMITTED; nc and scp are each followed by "
                       "`sync FILE` (fsync of the received file), timed together. "
                       "Plain `sync` would also flush what other users of the machine "
                       "wrote, so it is not used. The received file is deleted before "
                       "every sample.")
    one_file_rounds(b, table, source, b.disk, sync_after=True)
    return [table]


def one_file_rounds(b: Bench, table: Table, source: Path, where: Path,
                    sync_after: bool) -> None:
    """Cases b and d: one file sent with sockferry, nc and scp, into ``where``."""
    size = source.stat().st_size
    timeout_s = transfer_timeout(size)
    root = fresh_dir(where / "one-file")
    ferry_root = fresh_dir(root / "ferry")
    ferry_target, nc_target, scp_target = (ferry_root / "copy.bin", root / "nc.bin",
                                           root / "scp.bin")
    sync = ["sync"] if sync_after else []
    for mode in MODES:
        with b.sockferry_server(mode, ferry_root) as (port, _), b.sshd(mode) as ssh_port:

            def ferry(port: int = port, mode: str = mode) -> float:
                seconds = timed(b.pin_client(mode, [*b.sockferry, "send",
                                                    *b.client_options(port), str(source),
                                                    "127.0.0.1:copy.bin"]),
                                "sockferry send", timeout_s, env=b.env)
                check_size(ferry_target, size, "sockferry send")
                return seconds

            def nc(mode: str = mode) -> float:
                then = [*sync, str(nc_target)] if sync else []
                return b.nc_send(mode, source, nc_target, "nc", then)

            def scp(port: int = ssh_port, mode: str = mode) -> float:
                started = time.perf_counter()
                run_checked(b.scp(mode, port, "-c", SCP_CIPHER, str(source),
                                  f"{user()}@127.0.0.1:{scp_target}"), "scp", timeout_s)
                if sync:
                    run_checked([*sync, str(scp_target)], "sync", timeout_s)
                seconds = time.perf_counter() - started
                check_size(scp_target, size, "scp")
                return seconds

            tools = [Tool("sockferry", ferry, lambda: ferry_target.unlink(missing_ok=True)),
                     Tool("nc" + (" + sync" if sync else ""), nc,
                          lambda: nc_target.unlink(missing_ok=True)),
                     Tool("scp" + (" + sync" if sync else ""), scp,
                          lambda: scp_target.unlink(missing_ok=True))]
            run_rounds(table, mode, tools, b.args.rounds, size / 1e6, b.say)
    shutil.rmtree(root)


def case_bulk_get(b: Bench) -> list[Table]:
    """c: one large file server -> client on tmpfs."""
    source = bulk_source(b)
    size = source.stat().st_size
    timeout_s = transfer_timeout(size)
    table = Table("c", f"{size // MiB} MiB get (server → client), tmpfs", "MB/s",
                  "higher")
    table.notes.append("sockferry: `get` until it exits (digest checked, fsynced, "
                       "renamed); nc: `nc -N -l` on the server side sending the file, "
                       "`nc -d` on the client receiving it, until the client exits; "
                       f"scp from the server with `-c {SCP_CIPHER}`.")
    root = fresh_dir(b.shm / "get")
    ferry_root = fresh_dir(root / "ferry")
    os.link(source, ferry_root / "big.bin")
    ferry_target, nc_target, scp_target = root / "ferry.bin", root / "nc.bin", root / "scp.bin"
    for mode in MODES:
        with b.sockferry_server(mode, ferry_root) as (port, _), b.sshd(mode) as ssh_port:

            def ferry(port: int = port, mode: str = mode) -> float:
                seconds = timed(b.pin_client(mode, [*b.sockferry, "get",
                                                    *b.client_options(port),
                                                    "127.0.0.1:big.bin", str(ferry_target)]),
                                "sockferry get", timeout_s, env=b.env)
                check_size(ferry_target, size, "sockferry get")
                return seconds

            def nc(mode: str = mode) -> float:
                nc_port = free_port()
                with open(source, "rb") as data:
                    sender = b.procs.start(b.pin_server(mode, ["nc", "-N", "-l", "127.0.0.1",
                                                               str(nc_port)]),
                                           stdin=data, stdout=subprocess.DEVNULL,
                                           stderr=b.log)
                try:
                    wait_listening(nc_port, sender, "nc -N -l")
                    with open(nc_target, "wb") as out:
                        seconds = timed(b.pin_client(mode, ["nc", "-d", "127.0.0.1",
                                                            str(nc_port)]),
                                        "nc (receiving)", timeout_s, stdout=out)
                finally:
                    b.procs.stop(sender)
                check_size(nc_target, size, "nc")
                return seconds

            def scp(port: int = ssh_port, mode: str = mode) -> float:
                seconds = timed(b.scp(mode, port, "-c", SCP_CIPHER,
                                      f"{user()}@127.0.0.1:{ferry_root / 'big.bin'}",
                                      str(scp_target)), "scp", timeout_s)
                check_size(scp_target, size, "scp")
                return seconds

            tools = [Tool("sockferry", ferry, lambda: ferry_target.unlink(missing_ok=True)),
                     Tool("nc", nc, lambda: nc_target.unlink(missing_ok=True)),
                     Tool("scp", scp, lambda: scp_target.unlink(missing_ok=True))]
            run_rounds(table, mode, tools, b.args.rounds, size / 1e6, b.say)
    shutil.rmtree(root)
    return [table]


def case_idle(b: Bench) -> list[Table]:
    """e: many idle authenticated connections to one server."""
    count = b.sizes.idle_connections
    table = Table("e", f"{count:,} idle authenticated connections to one `sockferry serve`",
                  "", "", reference="")
    table.units = {"RSS before": "MiB", "RSS with all open": "MiB", "RSS after close": "MiB",
                   "VmHWM": "MiB", "bytes per idle connection": "bytes",
                   "connections opened": "count", "handshakes/s": "1/s",
                   "server CPU per handshake": "ms", "failed handshakes": "count",
                   "1 MiB send while open": "s", "fds before": "count",
                   "fds with all open": "count", "fds after close": "count"}
    table.chart_rows = ["bytes per idle connection"]
    table.notes.append(f"Server: `--max-connections 20000 --max-startups 200 "
                       "--max-startups-per-source 200` (the load generator is one address), "
                       f"listening on "
                       f"{IDLE_ADDRESSES[0]}..{IDLE_ADDRESSES[-1]}; the load generator "
                       f"(bench/loadgen.py) opens the connections round-robin over them, at "
                       "most 100 handshakes in flight, and holds them idle. A fresh server "
                       "per round. RSS/VmHWM from /proc/PID/status, fds from /proc/PID/fd.")
    one_mib = b.shm / "one-mib.bin"
    write_random(one_mib, MiB)
    root = fresh_dir(b.shm / "idle-root")
    for mode in MODES:
        for index in range(b.args.rounds):
            fresh_dir(root)
            with b.sockferry_server(mode, root, "--max-connections", "20000",
                                    "--max-startups", "200",
                                    "--max-startups-per-source", "200",
                                    listen=IDLE_ADDRESSES) as (port, server):
                one_idle_round(b, table, mode, count, port, server, one_mib, root)
            b.say(f"  {mode} round {index + 1}/{b.args.rounds}: "
                  f"{median(table.samples[mode]['bytes per idle connection'][-1:]):,.0f} "
                  "bytes per idle connection")
    one_mib.unlink()
    shutil.rmtree(root)
    return [table]


def one_idle_round(b: Bench, table: Table, mode: str, count: int, port: int,
                   server: subprocess.Popen[bytes], one_mib: Path, root: Path) -> None:
    pid = server.pid
    before, fds_before = proc_status(pid), fd_count(pid)
    cpu_before = cpu_seconds(pid)
    gen = b.procs.start(b.pin_client(mode, [
        sys.executable, str(LOADGEN), "idle", "--port", str(port), "--token-file",
        str(b.token), "--count", str(count), "--addresses", ",".join(IDLE_ADDRESSES)]),
        env=b.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=b.log)
    assert gen.stdin is not None and gen.stdout is not None
    try:
        opened = read_record(gen, "open", transfer_timeout(0) + count / 50)
        if opened["opened"] + opened["failed"] + opened["not_tried"] != count:
            raise BenchError("the load generator lost track of connections")
        wait_until(lambda: fd_count(pid) >= fds_before + opened["opened"],
                   "the server to accept every connection")
        during, fds_during = proc_status(pid), fd_count(pid)
        cpu_open = cpu_seconds(pid) - cpu_before
        send_s = timed(b.pin_client(mode, [*b.sockferry, "send", *b.client_options(port),
                                           str(one_mib), "127.0.0.1:one-mib.bin"]),
                       "sockferry send (1 MiB, with the idle connections open)",
                       MIN_TRANSFER_TIMEOUT_S, env=b.env)
        check_size(root / "one-mib.bin", MiB, "sockferry send")
        gen.stdin.write(b"close\n")
        gen.stdin.flush()
        read_record(gen, "closed", SETTLE_TIMEOUT_S)
        gen.wait(STOP_TIMEOUT_S)
    finally:
        b.procs.stop(gen)
    wait_until(lambda: fd_count(pid) <= fds_before, "the server's fds to return to baseline",
               fail=False)
    after, fds_after = proc_status(pid), fd_count(pid)
    opened_n = max(1, opened["opened"])
    for row, value in [
        ("RSS before", before["VmRSS"] / MiB),
        ("RSS with all open", during["VmRSS"] / MiB),
        ("RSS after close", after["VmRSS"] / MiB),
        ("VmHWM", after["VmHWM"] / MiB),
        ("bytes per idle connection", (during["VmRSS"] - before["VmRSS"]) / opened_n),
        ("connections opened", opened["opened"]),
        ("handshakes/s", opened["opened"] / opened["seconds"]),
        ("server CPU per handshake", cpu_open / opened_n * 1000),
        ("failed handshakes", opened["failed"]),
        ("1 MiB send while open", send_s),
        ("fds before", fds_before), ("fds with all open", fds_during),
        ("fds after close", fds_after),
    ]:
        table.add(mode, row, float(value))
    if opened["low_memory"]:
        table.notes.append(f"{mode}: the load generator stopped after {opened['opened']} "
                           "connections because the machine had less than 2 GiB of memory "
                           "available; the figures are for the connections it opened")
    if opened["failed"]:
        table.notes.append(f"{mode}: {opened['failed']} handshakes failed: "
                           f"{opened['errors']}")
    if fds_after != fds_before:
        table.notes.append(f"{mode}: the server's fd count did not return to its baseline "
                           f"({fds_before} before, {fds_after} after)")


def read_record(proc: subprocess.Popen[bytes], event: str, timeout_s: float
                ) -> dict[str, Any]:
    """The next JSON line of a load generator, waiting at most ``timeout_s``."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if sel.select(min(left, 1.0)):
                line = proc.stdout.readline()
                if not line:
                    raise BenchError(f"the load generator exited (status {proc.poll()}) "
                                     f"before reporting '{event}' — see the log")
                record: dict[str, Any] = json.loads(line)
                if record.get("event") == event:
                    return record
    raise BenchError(f"the load generator did not report '{event}' within {timeout_s:g} s")


def wait_until(ready: Callable[[], bool], what: str, fail: bool = True) -> None:
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.05)
    if fail:
        raise BenchError(f"gave up waiting for {what} after {SETTLE_TIMEOUT_S:g} s")


def case_uploads(b: Bench) -> list[Table]:
    """f: many clients uploading at once; every file checked byte for byte."""
    s = b.sizes
    count, size = s.upload_clients, s.upload_bytes
    table = Table("f", f"{count:,} clients uploading {size // 1024} KiB each at once",
                  "", "", reference="")
    table.units = {"wall time": "s", "server VmHWM": "MiB", "aggregate": "MB/s",
                   "failed uploads": "count", "peak server fds above baseline": "count"}
    table.chart_rows = ["wall time"]
    table.notes.append("One load generator process (bench/loadgen.py) starts every client at "
                       "once (connect, start_put, finish, the future's size checked); a "
                       "fresh server per round, with `--max-connections`, `--max-startups` "
                       "and `--max-startups-per-source` twice the client count so that "
                       "none is refused as busy; every file on the server "
                       "compared with its source. Wall time is the generator's, first "
                       "connect to last verdict. Peak server fds (sampled every 10 ms) "
                       "shows how many clients the server really held at once.")
    sources = fresh_dir(b.shm / "upload-sources")
    digests = {}
    for i in range(count):
        data = os.urandom(size)
        (sources / f"f{i:05d}.bin").write_bytes(data)
        digests[f"f{i:05d}.bin"] = hashlib.blake2b(data).digest()
    root = b.shm / "upload-root"
    for mode in MODES:
        for index in range(b.args.rounds):
            fresh_dir(root)
            limit = str(max(256, 2 * count))
            with b.sockferry_server(mode, root, "--max-connections", limit,
                                    "--max-startups", limit,
                                    "--max-startups-per-source", limit) as (port, server):
                fds_before = fd_count(server.pid)
                record, peak_fds = run_sampling_fds(b, b.pin_client(mode, [
                    sys.executable, str(LOADGEN), "uploads", "--port", str(port),
                    "--token-file", str(b.token), "--count", str(count), "--sources",
                    str(sources)]), server.pid, transfer_timeout(count * size) + count * 0.1)
                peak = proc_status(server.pid)["VmHWM"]
            if record["failed"]:
                raise BenchError(f"{record['failed']} of {count} uploads failed: "
                                 f"{record['errors']}")
            check_uploads(root, digests)
            table.add(mode, "wall time", record["seconds"])
            table.add(mode, "server VmHWM", peak / MiB)
            table.add(mode, "aggregate", count * size / record["seconds"] / 1e6)
            table.add(mode, "failed uploads", float(record["failed"]))
            table.add(mode, "peak server fds above baseline", float(peak_fds - fds_before))
            b.say(f"  {mode} round {index + 1}/{b.args.rounds}: {record['seconds']:.2f} s, "
                  f"server VmHWM {peak / MiB:.0f} MiB")
    shutil.rmtree(root)
    shutil.rmtree(sources)
    return [table]


def run_sampling_fds(b: Bench, argv: list[str], pid: int, timeout_s: float
                     ) -> tuple[dict[str, Any], int]:
    """Run a load generator to its end while sampling the server's fd count; return
    the generator's JSON record and the peak fd count."""
    with tempfile.TemporaryFile() as out:
        gen = b.procs.start(argv, env=b.env, stdout=out, stderr=b.log)
        peak = 0
        deadline = time.monotonic() + timeout_s
        try:
            while gen.poll() is None:
                if time.monotonic() > deadline:
                    raise BenchError(f"the load generator did not finish within "
                                     f"{timeout_s:g} s — is the machine overloaded?")
                peak = max(peak, fd_count(pid))
                time.sleep(0.01)
        finally:
            b.procs.stop(gen)
        if gen.returncode != 0:
            raise BenchError(f"the load generator exited with status {gen.returncode} "
                             f"({last_line(b.log)})")
        out.seek(0)
        lines = out.read().decode().strip().splitlines()
    if not lines:
        raise BenchError("the load generator printed no result")
    return json.loads(lines[-1]), peak


def check_uploads(root: Path, digests: dict[str, bytes]) -> None:
    present = {p.name for p in root.iterdir()}
    if present != set(digests):
        missing = sorted(set(digests) - present)
        raise BenchError(f"the server holds {len(present)} files, expected {len(digests)}"
                         f"{' (missing ' + ', '.join(missing[:3]) + ')' if missing else ''}")
    for name, digest in digests.items():
        if hashlib.blake2b((root / name).read_bytes()).digest() != digest:
            raise BenchError(f"{root / name} differs from what its client sent")


def case_startup(b: Bench) -> list[Table]:
    """g: start-up cost, with hyperfine."""
    s = b.sizes
    version = Table("g1", "start-up: `--version`", "ms", "lower", reference="sockferry")
    one = Table("g2", "one 4 KiB file, `send` end to end vs `scp`", "ms", "lower",
                reference="sockferry")
    for table in (version, one):
        table.notes.append(f"hyperfine `--warmup {s.hyperfine_warmup} --runs "
                           f"{s.hyperfine_runs} -N` once per round, commands in rotating "
                           "order; every run's time is a sample. sockferry is run as: "
                           f"{b.sockferry_how}.")
    small = b.shm / "four-kib.bin"
    write_random(small, 4096)
    root = fresh_dir(b.shm / "startup-root")
    scp_root = fresh_dir(b.shm / "startup-scp")
    for mode in MODES:
        commands = {"sockferry": b.pin_client(mode, [*b.sockferry, "--version"]),
                    "rsync": b.pin_client(mode, ["rsync", "--version"])}
        hyperfine_rounds(b, version, mode, commands, {})
        with b.sockferry_server(mode, root) as (port, _), b.sshd(mode) as ssh_port:
            commands = {
                "sockferry": b.pin_client(mode, [*b.sockferry, "send",
                                                 *b.client_options(port), str(small),
                                                 "127.0.0.1:four-kib.bin"]),
                "scp": b.scp(mode, ssh_port, str(small),
                             f"{user()}@127.0.0.1:{scp_root / 'four-kib.bin'}")}
            prepare = {"sockferry": ["rm", "-f", str(root / "four-kib.bin")],
                       "scp": ["rm", "-f", str(scp_root / "four-kib.bin")]}
            hyperfine_rounds(b, one, mode, commands, prepare)
            check_size(root / "four-kib.bin", 4096, "sockferry send")
            check_size(scp_root / "four-kib.bin", 4096, "scp")
    shutil.rmtree(root)
    shutil.rmtree(scp_root)
    small.unlink()
    return [version, one]


def hyperfine_rounds(b: Bench, table: Table, mode: str, commands: dict[str, list[str]],
                     prepare: dict[str, list[str]]) -> None:
    s = b.sizes
    names = list(commands)
    for index in range(b.args.rounds):
        shift = index % len(names)
        order = [*names[shift:], *names[:shift]]
        export = b.shm / "hyperfine.json"
        argv = ["hyperfine", "-N", "--style", "none", "--warmup", str(s.hyperfine_warmup),
                "--runs", str(s.hyperfine_runs), "--export-json", str(export)]
        for name in order:
            if prepare:
                argv += ["--prepare", shlex.join(prepare[name])]
            argv += ["--command-name", name, shlex.join(commands[name])]
        run_checked(argv, "hyperfine", MIN_TRANSFER_TIMEOUT_S * len(names), env=b.env,
                    stdout=subprocess.DEVNULL)
        for result in json.loads(export.read_text())["results"]:
            if any(code != 0 for code in result.get("exit_codes", [])):
                raise BenchError(f"hyperfine: {result['command']} failed in some runs")
            for seconds in result["times"]:
                table.add(mode, result["command"], seconds * 1000)
        export.unlink()
        b.say(f"  {mode} round {index + 1}/{b.args.rounds} {table.title}: " + ", ".join(
            f"{n} {median(table.samples[mode][n]):.1f} ms" for n in names))


CASES: dict[str, Callable[[Bench], list[Table]]] = {
    "a": case_small_files, "u": case_noop_update, "b": case_bulk_send, "c": case_bulk_get,
    "d": case_bulk_disk, "e": case_idle, "f": case_uploads, "g": case_startup,
    "h": case_small_files_disk}


# -- setup ----------------------------------------------------------------------------


def install_missing(log: Callable[[str], None]) -> None:
    missing = sorted({pkg for tool, pkg in APT_PACKAGES.items()
                      if not (shutil.which(tool) or Path(f"/usr/sbin/{tool}").exists())})
    if shutil.which("nc") and b"OpenBSD" not in nc_help():
        missing.append("netcat-openbsd")
    if missing:
        if os.geteuid() != 0:
            raise BenchError(f"missing {', '.join(missing)} — run as root, or: "
                             f"sudo apt-get install -y {' '.join(missing)}")
        log(f"installing {', '.join(missing)} with apt-get")
        run_checked(["apt-get", "update"], "apt-get update", 600)
        run_checked(["apt-get", "install", "-y", *missing], "apt-get install", 900,
                    env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    try:
        import matplotlib  # noqa: F401, PLC0415 - only to see whether it is there
    except ImportError:
        log(f"installing matplotlib into {sys.executable}")
        run_checked([sys.executable, "-m", "pip", "install", "matplotlib"], "pip install",
                    900)


def nc_help() -> bytes:
    done = subprocess.run(["nc", "-h"], capture_output=True, timeout=10, check=False)
    return done.stdout + done.stderr


def sockferry_command() -> tuple[list[str], str]:
    script = Path(sys.executable).parent / "sockferry"
    if script.exists():
        return [str(script)], f"the console script {script} (PYTHONPATH={SRC})"
    return [sys.executable, "-m", "sockferry"], f"{sys.executable} -m sockferry " \
        f"(PYTHONPATH={SRC})"


def machine() -> dict[str, str]:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"nproc": str(os.cpu_count()), "cpu": model,
            "kernel": platform.release(), "python": platform.python_version(),
            "python_executable": sys.executable}


def git_revision() -> str:
    done = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                          capture_output=True, timeout=10, check=False)
    return done.stdout.decode().strip() or "unknown"


# -- the report -----------------------------------------------------------------------


def fmt(value: float) -> str:
    if math.isnan(value):
        return "–"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def markdown(tables: list[Table], meta: dict[str, Any]) -> str:
    m = meta["machine"]
    lines = [
        "# sockferry benchmark suite", "",
        f"- date: {meta['date']}",
        f"- machine: {m['nproc']} CPUs, {m['cpu']}, kernel {m['kernel']}, "
        f"Python {m['python']}",
        f"- command: `{meta['command']}`",
        f"- checkout: {meta['revision']}; sockferry run as {meta['sockferry']}",
        f"- rounds: {meta['rounds']}{' (--quick sizes)' if meta['quick'] else ''}; "
        "median and min–max over the samples; pinned = servers and receivers on "
        f"CPU {SERVER_CPU}, clients and senders on CPU {CLIENT_CPU} (taskset)", ""]
    for table in tables:
        lines += [f"## {table.key}. {table.title}", ""]
        lines += [f"{n}" for n in table.notes] + [""]
        compare = bool(table.reference and table.better)
        if compare:
            direction = ("sockferry ÷ tool, higher = sockferry faster"
                         if table.better == "higher"
                         else "sockferry ÷ tool, lower = sockferry faster")
            lines.append(f"Unit: {table.unit} ({table.better} is better). Ratio: median "
                         f"over median, {direction}.")
            lines.append("")
        head = "| " + ("tool" if compare else "measurement") + " |"
        rule = "|---|"
        for mode in MODES:
            head += f" {mode} median | {mode} min–max |" + (f" {mode} ratio |" if compare
                                                          else "")
            rule += "---|---|" + ("---|" if compare else "")
        if not compare:
            head, rule = head + " unit |", rule + "---|"
        lines += [head, rule]
        for row in table.rows():
            cells = f"| {row} |"
            for mode in MODES:
                values = table.samples.get(mode, {}).get(row, [])
                ref = table.samples.get(mode, {}).get(table.reference, [])
                if values:
                    cells += f" {fmt(median(values))} | {fmt(min(values))}–" \
                             f"{fmt(max(values))} |"
                else:
                    cells += " – | – |"
                if compare:
                    ratio = (median(ref) / median(values)) if values and ref else float("nan")
                    cells += " – |" if row == table.reference else f" {ratio:.2f} |"
            if not compare:
                cells += f" {table.units.get(row, table.unit)} |"
            lines.append(cells)
        lines.append("")
    return "\n".join(lines)


def chart(tables: list[Table], path: Path, title: str) -> None:
    import matplotlib  # noqa: PLC0415 - heavy, only for the chart

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    panels = len(tables)
    cols = min(3, panels)
    rows = (panels + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4.2 * rows), squeeze=False)
    for ax in axes.flat[panels:]:
        ax.set_visible(False)
    width = 0.38
    for ax, table in zip(axes.flat, tables, strict=False):
        names = table.chart_rows or table.rows()
        for offset, mode in enumerate(MODES):
            per = table.samples.get(mode, {})
            meds = [median(per.get(n, [])) for n in names]
            lows = [m - min(per[n]) if per.get(n) else 0 for m, n in zip(meds, names,
                                                                        strict=True)]
            highs = [max(per[n]) - m if per.get(n) else 0 for m, n in zip(meds, names,
                                                                          strict=True)]
            xs = [i + (offset - 0.5) * width for i in range(len(names))]
            ax.bar(xs, meds, width, yerr=[lows, highs], capsize=3, label=mode)
        ax.set_xticks(range(len(names)), names, rotation=15, fontsize=8)
        unit = table.unit or table.units.get(names[0], "")
        better = f" ({table.better} is better)" if table.better else ""
        ax.set_ylabel(unit + better, fontsize=8)
        ax.set_title(f"{table.key}. {table.title}", fontsize=9, wrap=True)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- main -----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, help="rounds per case and mode (default 5, "
                        "3 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes, to check the suite itself in a minute or two")
    parser.add_argument("--only", default="", metavar="CASES",
                        help="run only these cases, e.g. --only b or --only a,g")
    parser.add_argument("--out", type=Path, default=HERE / "results", metavar="DIR",
                        help="where latest.md, latest.png and latest.json go "
                        "(default bench/results)")
    parser.add_argument("--bulk-mib", type=int, help="size of the bulk file (b, c, d)")
    parser.add_argument("--tree-files", type=int, help="files in the tree of case a")
    parser.add_argument("--idle-connections", type=int, help="connections of case e")
    parser.add_argument("--upload-clients", type=int, help="clients of case f")
    args = parser.parse_args(argv)
    if args.rounds is None:
        args.rounds = 3 if args.quick else 5
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    only = [c.strip() for c in args.only.replace(",", " ").split() if c.strip()]
    unknown = [c for c in only if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; the cases are "
                     f"{', '.join(CASES)}")
    args.cases = only or list(CASES)
    return args


def sizes_for(args: argparse.Namespace) -> Sizes:
    base = QUICK if args.quick else Sizes()
    changes: dict[str, int] = {}
    if args.bulk_mib:
        changes["bulk_bytes"] = args.bulk_mib * MiB
    if args.tree_files:
        changes["tree_files"] = args.tree_files
    if args.idle_connections:
        changes["idle_connections"] = args.idle_connections
    if args.upload_clients:
        changes["upload_clients"] = args.upload_clients
    return Sizes(**{**{f: getattr(base, f) for f in Sizes.__dataclass_fields__}, **changes})


def run(args: argparse.Namespace, command: str) -> int:
    if (os.cpu_count() or 1) < 2:
        raise BenchError("the pinned runs need two CPUs; this machine has one")
    install_missing(print)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # servers and nc inherit it
    sizes = sizes_for(args)
    procs = Processes()
    sockferry, how = sockferry_command()
    shm = Path(tempfile.mkdtemp(prefix="sockferry-bench-", dir="/dev/shm"))
    disk = Path(tempfile.mkdtemp(prefix="sockferry-bench-", dir="/var/tmp"))
    tables: list[Table] = []
    meta: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(), "command": command, "revision": git_revision(),
        "sockferry": how, "rounds": args.rounds, "quick": args.quick,
        "sizes": {f: getattr(sizes, f) for f in Sizes.__dataclass_fields__}}
    try:
        with open(shm / "processes.log", "w") as log:
            token = shm / "token"
            token.write_text(os.urandom(24).hex() + "\n")
            token.chmod(0o600)
            # Byte-compiled modules may be cached, as after any pip install (a machine that
            # sets PYTHONDONTWRITEBYTECODE would otherwise recompile them on every run).
            env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
            subprocess.run([sys.executable, "-m", "compileall", "-q", str(SRC)], check=False)
            bench = Bench(args, sizes, procs, shm, disk, sockferry, how, token,
                          {**env, "PYTHONPATH": str(SRC)},
                          SshSetup.create(shm / "ssh"), log)
            print(f"sockferry run as {how}; temporary files in {shm} and {disk}")
            for key in args.cases:
                print(f"case {key}: {CASES[key].__doc__}", flush=True)
                tables += CASES[key](bench)
    finally:
        procs.stop_all()
        shutil.rmtree(shm, ignore_errors=True)
        shutil.rmtree(disk, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    meta["tables"] = [{"key": t.key, "title": t.title, "unit": t.unit, "units": t.units,
                       "better": t.better, "notes": t.notes, "samples": t.samples}
                      for t in tables]
    (args.out / "latest.json").write_text(json.dumps(meta, indent=1))
    (args.out / "latest.md").write_text(markdown(tables, meta))
    chart(tables, args.out / "latest.png", f"sockferry {meta['revision']} — {meta['date']}, "
          f"{meta['machine']['cpu']}, {args.rounds} rounds")
    print(f"\nwrote {args.out / 'latest.md'}, latest.png, latest.json\n")
    print(markdown(tables, meta))
    return 0


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGINT, interrupt)  # also when started with SIGINT ignored (&)
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGHUP, interrupt)
    command = os.environ.get("BENCH_COMMAND") or shlex.join(sys.argv)
    try:
        return run(args, command)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; every process it started was stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
