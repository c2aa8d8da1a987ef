"""Whether the TLS 1.3 cipher suite matters here: 1 GiB over loopback through a bare
blocking ``ssl.SSLSocket`` pair (sender reading from memory, receiver hashing with BLAKE3
and writing to /dev/null), once per suite, the suites alternating round by round.

Python 3.11 cannot choose a TLS 1.3 suite (there is no ``set_ciphersuites``), so each
pair of processes is started with ``OPENSSL_CONF`` naming a file that sets
``Ciphersuites`` for OpenSSL's default context.  sockferry itself gets OpenSSL's default
(TLS_AES_256_GCM_SHA384).  Reported per suite: MB/s, median and min-max.

    python bench/tls_suites.py [--rounds 5] [--mib 1024]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tls_receive import SENDER  # the same TLS peer: 1 GiB out, then what comes back

from sockferry.tls import make_self_signed

SUITES = ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
          "TLS_CHACHA20_POLY1305_SHA256"]

CONFIG = """openssl_conf = default_conf
[default_conf]
ssl_conf = ssl_sect
[ssl_sect]
system_default = system_default_sect
[system_default_sect]
Ciphersuites = {suite}
"""

RECEIVER = """
import os, socket, ssl, sys, blake3
cert, key, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.minimum_version = ssl.TLSVersion.TLSv1_3
context.load_cert_chain(cert, key)
with socket.create_server(("127.0.0.1", 0)) as listener:
    print(listener.getsockname()[1], flush=True)
    sock = context.wrap_socket(listener.accept()[0], server_side=True)
buffer, hasher, got = memoryview(bytearray(1 << 20)), blake3.blake3(), 0
out = os.open(os.devnull, os.O_WRONLY)
while got < size:
    n = sock.recv_into(buffer)
    if not n:
        break
    os.write(out, buffer[:n])
    hasher.update(buffer[:n])
    got += n
sock.sendall(sock.cipher()[0].encode())
"""

def one(suite: str, work: Path, size: int) -> float:
    env = dict(os.environ, OPENSSL_CONF=str(work / f"{suite}.cnf"))
    receiver = subprocess.Popen(
        [sys.executable, "-c", RECEIVER, str(work / "cert.pem"), str(work / "key.pem"),
         str(size)], env=env, stdout=subprocess.PIPE, text=True)
    assert receiver.stdout is not None
    port = receiver.stdout.readline().strip()
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", SENDER, port, str(size)], env=env,
                          capture_output=True, text=True, check=True, timeout=120)
    seconds = time.perf_counter() - start
    receiver.wait(30)
    if done.stdout.strip() != suite:
        raise SystemExit(f"asked for {suite}, negotiated {done.stdout.strip()!r}")
    return size / seconds / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mib", type=int, default=1024)
    args = parser.parse_args()
    socket.setdefaulttimeout(120)
    with tempfile.TemporaryDirectory() as name:
        work = Path(name)
        make_self_signed(work / "cert.pem", work / "key.pem")
        for suite in SUITES:
            (work / f"{suite}.cnf").write_text(CONFIG.format(suite=suite))
        rates: dict[str, list[float]] = {suite: [] for suite in SUITES}
        for round_ in range(args.rounds):
            shift = round_ % len(SUITES)
            for suite in SUITES[shift:] + SUITES[:shift]:
                rates[suite].append(one(suite, work, args.mib * 1024 * 1024))
    print(f"{args.mib} MiB through a bare SSLSocket pair, {args.rounds} rounds, "
          "median (min-max)")
    for suite, got in rates.items():
        print(f"{suite:30s} {statistics.median(got):7,.0f} MB/s "
              f"({min(got):,.0f}-{max(got):,.0f})")


if __name__ == "__main__":
    main()
