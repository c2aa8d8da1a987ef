"""How a TLS receiver should take a large body: ``tlsstream.TLSStream`` on its own,
without the protocol around it.

Two ways, each round running both, the order rotating:

- ``by_the_loop``: what sockferry does: the body decrypted into the receive buffer and
  written and hashed by the caller, all on the event loop thread;
- ``pipelined``: decrypted on the event loop a piece at a time (``--piece``) while a
  worker thread writes and hashes the piece before, into two buffers in turn, so that
  OpenSSL, the write and the hasher (all of which release the GIL) might use two cores.

The sender is another process writing through a blocking ``ssl.SSLSocket`` from memory
(TLS 1.3, OpenSSL's default suite), so the receiver is what limits.  The body goes to
OUT (default /dev/null: on this VM a file written into fresh memory costs a varying
multiple of its CPU, see bench/tree_cpu.py, which would drown the difference).
Reported per way: MB/s and the receiving process's CPU seconds (all its threads),
median and min-max.  Results: bench/results/tls-receive.md.

    python bench/tls_receive.py [--rounds 7] [--mib 1024] [--piece MIB] [--out /dev/null]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from sockferry.ferry.digests import Hasher, new_hasher
from sockferry.ferry.messages import Feature
from sockferry.tls import make_self_signed, server_tls
from sockferry.tlsstream import TLSStream

SENDER = """
import socket, ssl, sys
port, size = int(sys.argv[1]), int(sys.argv[2])
context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
context.minimum_version = ssl.TLSVersion.TLSv1_3
with context.wrap_socket(socket.create_connection(("127.0.0.1", port))) as sock:
    piece, left = memoryview(bytes(range(256)) * 1024), size
    while left:
        n = min(len(piece), left)
        sock.sendall(piece[:n])
        left -= n
    print(sock.recv(100).decode())  # what the receiver answers once it holds it all
"""


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def by_the_loop(stream: TLSStream, fd: int, size: int, hasher: Hasher) -> int:
    got = 0
    while got < size:
        view = await stream.receive()
        if not view:
            break
        os.write(fd, view)
        hasher.update(view)
        got += len(view)
    return got


async def pipelined(stream: TLSStream, fd: int, size: int, hasher: Hasher) -> int:
    loop = asyncio.get_running_loop()
    pieces = [memoryview(bytearray(PIECE[0])) for _ in range(2)]
    writing: asyncio.Future[None] | None = None
    got, turn = 0, 0
    while got < size:
        piece = pieces[turn][: min(PIECE[0], size - got)]
        n = await stream.decrypt_into(piece)
        if n == 0:
            break
        got += n
        if writing is not None:
            await writing
        writing = loop.run_in_executor(None, _write_and_hash, fd, piece[:n], hasher)
        turn = 1 - turn
    if writing is not None:
        await writing
    return got


def _write_and_hash(fd: int, data: memoryview, hasher: Hasher) -> None:
    written = 0
    while written < len(data):
        written += os.write(fd, data[written:])
    hasher.update(data)


PIECE = [1024 * 1024]  # --piece

Way = Callable[[TLSStream, int, int, Hasher], Awaitable[int]]


async def one(way: Way, context: ssl.SSLContext, out: str, size: int,
              ) -> tuple[float, float]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        sender = subprocess.Popen([sys.executable, "-c", SENDER,
                                   str(listener.getsockname()[1]), str(size)],
                                  stdout=subprocess.DEVNULL)
        sock, _ = await asyncio.get_running_loop().sock_accept(listener)
    stream = TLSStream.wrap(sock, context, server_side=True, idle_timeout_s=30)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        await stream.handshake(10)
        cpu, start = _cpu(), time.perf_counter()
        got = await way(stream, fd, size, new_hasher(Feature.DIGEST_BLAKE3))
        seconds, cpu = time.perf_counter() - start, _cpu() - cpu
        if got != size:
            raise SystemExit(f"{way.__name__} took {got} of {size} bytes")
        await stream.send([b"k"])
    finally:
        os.close(fd)
        stream.close()
        sender.wait(30)
    return size / seconds / 1e6, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--out", default="/dev/null")
    parser.add_argument("--piece", type=int, default=1, metavar="MIB",
                        help="what pipelined decrypts before handing it on (default 1)")
    args = parser.parse_args()
    PIECE[0] = args.piece * 1024 * 1024
    with tempfile.TemporaryDirectory() as work:
        cert, key = Path(work) / "cert.pem", Path(work) / "key.pem"
        make_self_signed(cert, key)
        context = server_tls(str(cert), str(key)).context
        ways: list[Way] = [by_the_loop, pipelined]
        samples: dict[str, list[tuple[float, float]]] = {w.__name__: [] for w in ways}
        for round_ in range(args.rounds):
            for way in ways[round_ % 2:] + ways[: round_ % 2]:
                samples[way.__name__].append(
                    asyncio.run(one(way, context, args.out, args.mib * 1024 * 1024)))
    print(f"{args.mib} MiB received over TLS into {args.out}, {args.rounds} rounds, "
          f"pipelined in {args.piece} MiB pieces, median (min-max)")
    for name, got in samples.items():
        rates, cpus = [r for r, _ in got], [c for _, c in got]
        print(f"{name:12s} {statistics.median(rates):7,.0f} MB/s ({min(rates):,.0f}-"
              f"{max(rates):,.0f})  receiver CPU {statistics.median(cpus):.2f} s "
              f"({min(cpus):.2f}-{max(cpus):.2f})")


if __name__ == "__main__":
    main()
