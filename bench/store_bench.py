#!/usr/bin/env python3
"""What the S3 store costs: ``send`` of one large file and of a tree of small files
into ``sockferry serve`` on a local directory (tmpfs) and on an S3 bucket of a one-node
Ceph cluster on loopback (scripts/ceph-up), each through one server and through two
servers behind HAProxy (TCP mode, health checks, round robin); boto3 uploading the same
bytes straight to the bucket is the reference (its managed multipart upload for the
large file, ten threads of PUTs for the tree, as ``aws s3 cp --recursive`` does).

Every round runs every case once, the order rotating; medians and min-max over the
rounds.  Unpinned (as users run it), and pinned: sockferry's servers and HAProxy on CPU
1, the client (or boto3) on CPU 0, Ceph's daemons left to the scheduler.  Every sample
is checked (sizes in the store) and the store emptied before the next.  Writes
OUT/store.md and OUT/store.json.

    .venv/bin/python bench/store_bench.py [--rounds 5] [--mib 1024] [--files 10000]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SRC = ROOT / "src"
MODES = ("unpinned", "pinned")
SERVER_CPU, CLIENT_CPU = "1", "0"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout_s: float = 30,
              ) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            sys.exit(f"{what} exited before listening (exit {proc.returncode})")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        if time.monotonic() > deadline:
            sys.exit(f"{what} did not listen on {port} within {timeout_s:g} s")
        time.sleep(0.05)


def pin(mode: str, cpu: str, argv: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *argv] if mode == "pinned" else argv


class Setup:
    """The cluster, the token, the sources and the processes of one case."""

    def __init__(self, work: Path, mib: int, files: int) -> None:
        self.work = work
        self.files = files
        self.nbytes = mib << 20
        self.token = work / "token"
        self.token.write_text(os.urandom(32).hex() + "\n")
        self.token.chmod(0o600)
        self.big = work / "src" / "big.bin"
        self.big.parent.mkdir()
        with self.big.open("wb") as out:
            for _ in range(mib):
                out.write(os.urandom(1 << 20))
        self.tree = work / "src" / "tree"
        for index in range(files):
            directory = self.tree / f"d{index % 10}"
            directory.mkdir(parents=True, exist_ok=True)
            (directory / f"f{index}").write_bytes(os.urandom(4096))
        self.ceph = work / "ceph"
        # room for a large file and the deleted ones the gateway has not collected yet
        boot = subprocess.run([str(ROOT / "scripts" / "ceph-up"), str(self.ceph)],
                              capture_output=True, text=True, timeout=300, check=False,
                              env={**os.environ, "CEPH_UP_MEMSTORE_BYTES":
                                   str(max(8 << 30, 4 * self.nbytes))})
        if boot.returncode != 0:
            sys.exit(f"scripts/ceph-up failed:\n{boot.stderr}")
        env = dict(line.split("=", 1) for line in (self.ceph / "s3.env").read_text()
                   .splitlines() if "=" in line)
        self.endpoint = env["S3_ENDPOINT_URL"]
        self.env = {**os.environ, "PYTHONPATH": str(SRC),
                    "AWS_ACCESS_KEY_ID": env["AWS_ACCESS_KEY_ID"],
                    "AWS_SECRET_ACCESS_KEY": env["AWS_SECRET_ACCESS_KEY"]}
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)
        self.client = self._client()
        self.client.create_bucket(Bucket="bench")
        self.local = work / "local"
        self.local.mkdir()
        self.log = (work / "servers.log").open("ab")

    def _client(self) -> Any:
        import boto3  # noqa: PLC0415 - the bench runs from a checkout with it
        from botocore.config import Config  # noqa: PLC0415

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
                            config=Config(s3={"addressing_style": "path"},
                                          max_pool_connections=20))

    def close(self) -> None:
        self.log.close()
        subprocess.run([str(ROOT / "scripts" / "ceph-down"), str(self.ceph)], timeout=120,
                       check=False)

    # -- the store between samples ---------------------------------------------------------

    def empty(self) -> None:
        for child in self.local.iterdir():
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket="bench"):
            keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
            if keys:
                self.client.delete_objects(Bucket="bench", Delete={"Objects": keys})
        # what was deleted leaves the OSD only once the gateway's collector has run
        subprocess.run(["radosgw-admin", "-c", str(self.ceph / "ceph.conf"), "gc",
                        "process", "--include-all"], capture_output=True, timeout=300,
                       check=False)

    def stored(self, backend: str) -> tuple[int, int]:
        """(files, bytes) in the store."""
        if backend == "local":
            sizes = [p.stat().st_size for p in self.local.rglob("*") if p.is_file()]
            return len(sizes), sum(sizes)
        sizes = [int(obj["Size"]) for page in self.client.get_paginator("list_objects_v2")
                 .paginate(Bucket="bench") for obj in page.get("Contents", [])
                 if not obj["Key"].endswith("/")]
        return len(sizes), sum(sizes)

    # -- servers ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def servers(self, mode: str, backend: str, count: int) -> Iterator[int]:
        """``count`` servers on ``backend``, and HAProxy before them when two: the port
        a client connects to."""
        where = [str(self.local)] if backend == "local" else [
            "--store", f"s3://bench?endpoint={self.endpoint}"]
        ports = [free_port() for _ in range(count)]
        procs = []
        try:
            for port in ports:
                argv = [sys.executable, "-m", "sockferry", "-q", "serve", *where, "--listen",
                        f"127.0.0.1:{port}", "--token-file", str(self.token)]
                procs.append(subprocess.Popen(pin(mode, SERVER_CPU, argv), env=self.env,
                                              stdout=self.log, stderr=self.log))
                wait_port(port, procs[-1], "sockferry serve")
            if count == 1:
                yield ports[0]
                return
            front = free_port()
            config = self.work / "haproxy.cfg"
            servers = "\n".join(f"    server s{i} 127.0.0.1:{p} check inter 1s"
                                for i, p in enumerate(ports))
            config.write_text(f"defaults\n    mode tcp\n    timeout connect 5s\n"
                              f"    timeout client 120s\n    timeout server 120s\n"
                              f"frontend f\n    bind 127.0.0.1:{front}\n"
                              f"    default_backend b\nbackend b\n    balance roundrobin\n"
                              f"{servers}\n")
            procs.append(subprocess.Popen(pin(mode, SERVER_CPU, [
                shutil.which("haproxy") or "/usr/sbin/haproxy", "-db", "-f", str(config)]),
                stdout=self.log, stderr=self.log))
            wait_port(front, procs[-1], "haproxy")
            yield front
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=60)

    def send(self, mode: str, port: int, *what: str) -> float:
        return self._timed(mode, [sys.executable, "-m", "sockferry", "send", "-q", "-P",
                                  str(port), "--token-file", str(self.token), *what])

    def boto3(self, mode: str, case: str) -> float:
        script = BOTO3_BIG if case == "big" else BOTO3_TREE
        return self._timed(mode, [sys.executable, "-c", script, self.endpoint,
                                  str(self.big if case == "big" else self.tree)])

    def _timed(self, mode: str, argv: list[str]) -> float:
        """Seconds ``argv`` takes on the client's CPU (pinned) or anywhere; it must
        succeed."""
        started = time.perf_counter()
        done = subprocess.run(pin(mode, CLIENT_CPU, argv), env=self.env, capture_output=True,
                              text=True, timeout=1800, check=False)
        elapsed = time.perf_counter() - started
        if done.returncode != 0:
            sys.exit(f"{' '.join(argv[:4])} ... failed: {done.stderr}")
        return elapsed


BOTO3_CLIENT = """
import sys, os, concurrent.futures, boto3
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
                  config=Config(s3={"addressing_style": "path"}, max_pool_connections=20))
"""
BOTO3_BIG = BOTO3_CLIENT + """
from boto3.s3.transfer import TransferConfig
s3.upload_file(sys.argv[2], "bench", "big.bin",
               Config=TransferConfig(multipart_chunksize=8 << 20, max_concurrency=10))
"""
BOTO3_TREE = BOTO3_CLIENT + """
top = sys.argv[2]
paths = [os.path.join(d, f) for d, _, fs in os.walk(top) for f in fs]
def put(path):
    with open(path, "rb") as f:
        s3.put_object(Bucket="bench", Key="tree/" + os.path.relpath(path, top), Body=f.read())
with concurrent.futures.ThreadPoolExecutor(10) as pool:
    list(pool.map(put, paths))
"""

CASES = [  # (label, backend, servers); boto3 is the reference on the bucket
    ("local, 1 server", "local", 1),
    ("local, 2 servers + HAProxy", "local", 2),
    ("S3 (Ceph), 1 server", "s3", 1),
    ("S3 (Ceph), 2 servers + HAProxy", "s3", 2),
    ("boto3 straight to S3 (Ceph)", "s3", 0),
]


def sample(setup: Setup, mode: str, case: tuple[str, str, int], what: str) -> float:
    label, backend, count = case
    setup.empty()
    if count == 0:
        elapsed = setup.boto3(mode, what)
    else:
        with setup.servers(mode, backend, count) as port:
            if what == "big":
                elapsed = setup.send(mode, port, str(setup.big), "127.0.0.1:big.bin")
            else:
                elapsed = setup.send(mode, port, "-r", str(setup.tree), "127.0.0.1:")
    files, nbytes = setup.stored(backend)
    want = (1, setup.nbytes) if what == "big" else (setup.files, setup.files * 4096)
    if (files, nbytes) != want:
        sys.exit(f"{label}: the store holds {files} files, {nbytes} bytes; "
                 f"expected {want}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    results: dict[str, dict[str, dict[str, list[float]]]] = {}
    with tempfile.TemporaryDirectory(dir="/dev/shm") as scratch:
        setup = Setup(Path(scratch), args.mib, args.files)
        try:
            for mode in MODES:
                for round_number in range(args.rounds):
                    order = CASES[round_number % len(CASES):] + CASES[:round_number
                                                                      % len(CASES)]
                    for case in order:
                        for what in ("big", "tree"):
                            elapsed = sample(setup, mode, case, what)
                            results.setdefault(what, {}).setdefault(mode, {}).setdefault(
                                case[0], []).append(elapsed)
                            print(f"{mode} round {round_number + 1}: {case[0]}, {what}: "
                                  f"{elapsed:.2f} s", file=sys.stderr, flush=True)
        finally:
            setup.close()
    write(args, results)


def write(args: argparse.Namespace, results: dict[str, dict[str, dict[str, list[float]]]],
          ) -> None:
    revision = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=False).stdout.strip()
    lines = ["# sockferry: what the S3 store costs", "",
             f"- date: {datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')}",
             f"- machine: {os.cpu_count()} CPUs, kernel {os.uname().release}",
             f"- command: `bench/store_bench.py --rounds {args.rounds} --mib {args.mib} "
             f"--files {args.files}`", f"- checkout: {revision}",
             "- Ceph 16.2 one-node cluster on loopback (scripts/ceph-up: memstore OSD, "
             "radosgw); sources and the local root on tmpfs; pinned = sockferry servers and "
             "HAProxy on CPU 1, client on CPU 0, Ceph unpinned", ""]
    units = {"big": (args.mib * (1 << 20) / 1e6, "MB/s", f"{args.mib} MiB, one file"),
             "tree": (args.files, "files/s", f"{args.files:,} files of 4 KiB in 10 "
                                              "directories")}
    for what, (amount, unit, title) in units.items():
        lines += [f"## {title}: `send` (boto3: upload)", "",
                  f"Unit: {unit} (higher is better); ratio: median over the median of "
                  "sockferry on the local root, 1 server.", "",
                  "| case | unpinned median | min–max | ratio | pinned median | min–max "
                  "| ratio |", "|---|---|---|---|---|---|---|"]
        for label, _backend, _count in CASES:
            row = [label]
            for mode in MODES:
                rates = [amount / t for t in results[what][mode][label]]
                base = statistics.median(amount / t for t in
                                         results[what][mode]["local, 1 server"])
                median = statistics.median(rates)
                row += [f"{median:,.0f}", f"{min(rates):,.0f}–{max(rates):,.0f}",
                        f"{median / base:.2f}"]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "store.md").write_text("\n".join(lines))
    (args.out / "store.json").write_text(json.dumps(results, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
