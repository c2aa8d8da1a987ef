#!/usr/bin/env python3
"""Load generator for bench/suite.py: many ferry clients in one asyncio process.

    loadgen.py idle --port P --token-file F --count N --addresses 127.0.0.1,127.0.0.2
        Opens N authenticated connections (spread round-robin over the server's
        addresses so ephemeral ports never run out) and keeps them idle.  Prints one
        JSON line when all are open, then waits for the line ``close`` on stdin, closes
        every connection and prints a second JSON line.

    loadgen.py uploads --port P --token-file F --count N --sources DIR
        N clients at once, client i uploading DIR/fNNNNN.bin to the server's root under
        the same name (start_put, then finish); prints one JSON line.

Needs PYTHONPATH to point at the checkout's src/ (bench/suite.py sets it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from collections import Counter
from pathlib import Path

from sockferry.addresses import HostPort
from sockferry.cli.runtime import run_async
from sockferry.ferry.client import FerryClient
from sockferry.ferry.tokens import load_token

# Handshakes in flight at once while opening idle connections: below the server's
# default listen backlog (128), so the accept queue never overflows and what is measured
# is the handshake, not SYN retransmission.
IDLE_CONCURRENCY = 100
# How long `idle` waits for the word to close before closing on its own.
MAX_HOLD_S = 600.0
FD_HEADROOM = 256
# Stop opening idle connections when the machine has less memory than this available
# (each connection costs the server and this generator a receive buffer; the machine is
# shared, and running it out of memory would hurt everyone on it).
MIN_AVAILABLE_BYTES = 2 * 1024**3


def available_memory() -> int:
    with open("/proc/meminfo") as info:
        for line in info:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/meminfo has no MemAvailable")


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed + FD_HEADROOM
    if soft >= want:
        return
    if hard < want:
        try:  # root may raise the hard limit too
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return
        except (ValueError, OSError):
            want = hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]


def emit(record: dict[str, object]) -> None:
    print(json.dumps(record), flush=True)


async def idle(args: argparse.Namespace) -> None:
    token = load_token(Path(args.token_file))
    addresses = args.addresses.split(",")
    gate = asyncio.Semaphore(IDLE_CONCURRENCY)
    clients: list[FerryClient] = []
    errors: Counter[str] = Counter()
    low_memory = False

    async def open_one(index: int) -> None:
        nonlocal low_memory
        target = HostPort(addresses[index % len(addresses)], args.port)
        async with gate:
            if low_memory or available_memory() < MIN_AVAILABLE_BYTES:
                low_memory = True
                return
            try:
                clients.append(await FerryClient.connect(target, token,
                                                         timeout_s=args.timeout))
            except Exception as exc:
                errors[describe(exc)] += 1

    started = time.perf_counter()
    await asyncio.gather(*(open_one(i) for i in range(args.count)))
    seconds = time.perf_counter() - started
    emit({"event": "open", "opened": len(clients), "failed": sum(errors.values()),
          "not_tried": args.count - len(clients) - sum(errors.values()),
          "low_memory": low_memory, "seconds": seconds,
          "errors": dict(errors.most_common(5))})
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(MAX_HOLD_S):
            line = await loop.run_in_executor(None, sys.stdin.readline)
    except TimeoutError:
        line = "timeout"
    for client in clients:
        client.close()
    emit({"event": "closed", "closed": len(clients), "because": line.strip() or "eof"})


async def uploads(args: argparse.Namespace) -> None:
    token = load_token(Path(args.token_file))
    sources = Path(args.sources)
    errors: Counter[str] = Counter()
    ok = 0

    async def upload_one(index: int) -> None:
        nonlocal ok
        name = f"f{index:05d}.bin"
        local = sources / name
        try:
            client = await FerryClient.connect(HostPort(args.address, args.port), token,
                                               timeout_s=args.timeout)
            try:
                future = await client.puts.start_put(str(local), name)
                await client.finish()
            finally:
                client.close()
            size = await future
            if size != local.stat().st_size:
                raise RuntimeError(f"{name}: committed {size} bytes, expected "
                                   f"{local.stat().st_size}")
            ok += 1
        except Exception as exc:
            errors[describe(exc)] += 1

    started = time.perf_counter()
    await asyncio.gather(*(upload_one(i) for i in range(args.count)))
    seconds = time.perf_counter() - started
    emit({"event": "uploaded", "ok": ok, "failed": sum(errors.values()),
          "seconds": seconds, "errors": dict(errors.most_common(5))})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("idle", "uploads"):
        sub = commands.add_parser(name)
        sub.add_argument("--port", type=int, required=True)
        sub.add_argument("--token-file", required=True)
        sub.add_argument("--count", type=int, required=True)
        sub.add_argument("--timeout", type=float, default=60.0,
                         help="connect + handshake timeout per client, seconds")
    commands.choices["idle"].add_argument("--addresses", default="127.0.0.1")
    commands.choices["uploads"].add_argument("--address", default="127.0.0.1")
    commands.choices["uploads"].add_argument("--sources", required=True)
    args = parser.parse_args()
    raise_fd_limit(args.count * 2 if args.command == "uploads" else args.count)
    run_async(idle(args) if args.command == "idle" else uploads(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
