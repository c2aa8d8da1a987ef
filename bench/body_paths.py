"""How a large body should cross one host's loopback: the system calls behind
``streams.SocketStream``, without the protocol around them.

sockferry hashes every byte at both ends, so the choice is between moving the bytes
kernel to kernel and hashing them in a second pass by another thread (sendfile plus a
thread hashing the file's mapping; splice socket -> pipe -> file plus a thread reading
the file back), or copying them through user space and hashing each piece while it is
in the CPU's cache (each piece read, hashed, sent; recv into a buffer, written,
hashed).  Each round runs every variant once, the order rotating; reported per variant:
MB/s and the CPU seconds of the measured side, median and min-max.

    python bench/body_paths.py [--rounds 9] [--mib 1024] [--dir /dev/shm]

Receive variants are fed by a sender process doing plain sendfile; send variants feed a
receiver doing plain recv + write.  Files live in DIR (tmpfs by default).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import mmap
import os
import resource
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from sockferry.ferry.digests import Hasher, new_hasher
from sockferry.ferry.messages import Feature

PIECE = 256 * 1024
CHUNK = 1024 * 1024
MAP = 8 * 1024 * 1024


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def hash_mapped(hasher: Hasher, fd: int, offset: int, length: int) -> int:
    """``length`` bytes of ``fd`` from ``offset`` hashed from its mapping (as
    sockferry's digest threads once did)."""
    base = offset - offset % mmap.ALLOCATIONGRANULARITY
    with mmap.mmap(fd, offset + length - base, access=mmap.ACCESS_READ,
                   offset=base) as mapped, memoryview(mapped) as view:
        hasher.update(view[offset - base :])
    return length


def _hash_file(fd: int, size: int) -> bytes:
    hasher = new_hasher(Feature.DIGEST_BLAKE3)
    offset = 0
    while offset < size:
        offset += hash_mapped(hasher, fd, offset, min(MAP, size - offset))
    return hasher.digest()


# ---- receiving (the measured side reads the socket) ----------------------------------

def receive_splice_follow(sock: socket.socket, out: int, size: int) -> bytes:
    """splice socket -> pipe -> file; a thread hashes the file as it grows."""
    done, finished = [0], [False]
    cond = threading.Condition()
    hasher = new_hasher(Feature.DIGEST_BLAKE3)

    def follow() -> None:
        offset = 0
        while True:
            with cond:
                while done[0] - offset < MAP and not finished[0]:
                    cond.wait()
                end = done[0]
            if end == offset and finished[0]:
                return
            while offset < end:
                offset += hash_mapped(hasher, out, offset, min(end - offset, MAP))

    thread = threading.Thread(target=follow)
    thread.start()
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, getattr(fcntl, "F_SETPIPE_SZ", 1031), CHUNK)
    got = 0
    while got < size:
        n = os.splice(sock.fileno(), write_end, min(CHUNK, size - got),
                      flags=os.SPLICE_F_MOVE)
        if n == 0:
            break
        moved = 0
        while moved < n:
            moved += os.splice(read_end, out, n - moved, flags=os.SPLICE_F_MOVE)
        got += n
        with cond:
            done[0] = got
            cond.notify()
    with cond:
        finished[0] = True
        cond.notify()
    thread.join()
    os.close(read_end)
    os.close(write_end)
    return hasher.digest()


def receive_copy_hash(sock: socket.socket, out: int, size: int) -> bytes:
    """recv_into a 1 MiB buffer, write it, hash it (what SocketStream does now)."""
    hasher = new_hasher(Feature.DIGEST_BLAKE3)
    view = memoryview(bytearray(CHUNK))
    got = 0
    while got < size:
        n = sock.recv_into(view)
        if n == 0:
            break
        os.write(out, view[:n])
        hasher.update(view[:n])
        got += n
    return hasher.digest()


# ---- sending (the measured side writes the socket) -----------------------------------

def send_sendfile_thread(sock: socket.socket, fd: int, size: int) -> bytes:
    """sendfile; a thread hashes the file's mapping meanwhile."""
    result: list[bytes] = []
    thread = threading.Thread(target=lambda: result.append(_hash_file(fd, size)))
    thread.start()
    offset = 0
    while offset < size:
        offset += os.sendfile(sock.fileno(), fd, offset, size - offset)
    thread.join()
    return result[0]


def send_read_hash(sock: socket.socket, fd: int, size: int) -> bytes:
    """Each 256 KiB piece read into a buffer, hashed, then sent (SocketStream now)."""
    hasher = new_hasher(Feature.DIGEST_BLAKE3)
    view = memoryview(bytearray(PIECE))
    offset = 0
    while offset < size:
        n = os.preadv(fd, [view], offset)
        hasher.update(view[:n])
        sock.sendall(view[:n])
        offset += n
    return hasher.digest()


def send_mapped_hash(sock: socket.socket, fd: int, size: int) -> bytes:
    """Each 256 KiB piece of the file's mapping hashed, then sent (no copy out, but a
    file truncated meanwhile would kill the sender with SIGBUS)."""
    hasher = new_hasher(Feature.DIGEST_BLAKE3)
    with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as mapped:
        mapped.madvise(mmap.MADV_SEQUENTIAL)
        view = memoryview(mapped)
        for at in range(0, size, PIECE):
            with view[at : at + PIECE] as piece:
                hasher.update(piece)
                sock.sendall(piece)
        view.release()
    return hasher.digest()


Receiver = Callable[[socket.socket, int, int], bytes]
Sender = Callable[[socket.socket, int, int], bytes]


def _pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    return client, server


def run_receive(variant: Receiver, source: Path, target: Path, size: int,
                ) -> tuple[float, float, bytes]:
    client, server = _pair()
    pid = os.fork()
    if pid == 0:  # the feeding sender: plain sendfile
        server.close()
        with contextlib.suppress(OSError):
            fd = os.open(source, os.O_RDONLY)
            offset = 0
            while offset < size:
                offset += os.sendfile(client.fileno(), fd, offset, size - offset)
        os._exit(0)
    client.close()
    out = os.open(target, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    cpu, start = _cpu(), time.perf_counter()
    digest = variant(server, out, size)
    wall, cpu = time.perf_counter() - start, _cpu() - cpu
    os.waitpid(pid, 0)
    server.close()
    os.close(out)
    return size / wall / 1e6, cpu, digest


def run_send(variant: Sender, source: Path, target: Path, size: int,
             ) -> tuple[float, float, bytes]:
    client, server = _pair()
    report_read, report_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the measured sender
        server.close()
        fd = os.open(source, os.O_RDONLY)
        cpu, start = _cpu(), time.perf_counter()
        digest = variant(client, fd, size)
        client.shutdown(socket.SHUT_WR)
        client.recv(1)  # the receiver has everything
        wall, cpu = time.perf_counter() - start, _cpu() - cpu
        os.write(report_write, f"{wall} {cpu} {digest.hex()}".encode())
        os._exit(0)
    client.close()
    out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    view = memoryview(bytearray(CHUNK))
    while n := server.recv_into(view):
        os.write(out, view[:n])
    server.close()
    os.close(out)
    os.waitpid(pid, 0)
    wall_s, cpu_s, hex_digest = os.read(report_read, 200).decode().split()
    os.close(report_read)
    os.close(report_write)
    return size / float(wall_s) / 1e6, float(cpu_s), bytes.fromhex(hex_digest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--dir", type=Path, default=Path("/dev/shm"))
    args = parser.parse_args()
    size = args.mib * 1024 * 1024
    work = Path(tempfile.mkdtemp(prefix="sockferry-body-paths-", dir=args.dir))
    source, target = work / "source", work / "target"
    with open(source, "wb") as file:
        for _ in range(args.mib):
            file.write(os.urandom(1024 * 1024))
    with open(source, "rb") as file:
        expected = _hash_file(file.fileno(), size)
    cases: list[tuple[str, Callable[[], tuple[float, float, bytes]]]] = [
        ("receive: splice + thread reading back", lambda: run_receive(
            receive_splice_follow, source, target, size)),
        ("receive: recv + write + hash", lambda: run_receive(
            receive_copy_hash, source, target, size)),
        ("send: sendfile + hashing thread", lambda: run_send(
            send_sendfile_thread, source, target, size)),
        ("send: piece read + hashed + sent", lambda: run_send(
            send_read_hash, source, target, size)),
        ("send: mapped piece hashed + sent", lambda: run_send(
            send_mapped_hash, source, target, size)),
    ]
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in cases}
    try:
        for round_ in range(args.rounds):
            shift = round_ % len(cases)
            for name, case in cases[shift:] + cases[:shift]:
                rate, cpu, digest = case()
                assert digest == expected, f"{name}: wrong digest"
                samples[name].append((rate, cpu))
                print(f"  round {round_ + 1}/{args.rounds} {name}: {rate:,.0f} MB/s, "
                      f"{cpu:.2f} s CPU", flush=True)
    finally:
        for path in (source, target):
            path.unlink(missing_ok=True)
        work.rmdir()
    print(f"\n{args.mib} MiB over loopback in {args.dir}, {args.rounds} rounds; median "
          "(min-max)\n")
    print("| variant | MB/s | CPU s of the measured side |\n|---|---|---|")
    for name, values in samples.items():
        rates, cpus = [v[0] for v in values], [v[1] for v in values]
        print(f"| {name} | {statistics.median(rates):,.0f} ({min(rates):,.0f}–"
              f"{max(rates):,.0f}) | {statistics.median(cpus):.2f} ({min(cpus):.2f}–"
              f"{max(cpus):.2f}) |")


if __name__ == "__main__":
    main()
