#!/usr/bin/env python3
"""What a PAKE would cost per ferry handshake: SPAKE2 (the pure-Python ``spake2``
package, as magic-wormhole uses) against today's HMAC proofs.  docs/protocol.md §3.2
compares the figure with the 1 ms budget.  Needs ``pip install spake2`` (not a
dependency of sockferry).

    .venv/bin/python bench/spake2_cost.py [--rounds 50]
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import statistics
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    try:
        from spake2 import SPAKE2_A, SPAKE2_B  # noqa: PLC0415
    except ImportError:
        print("bench: pip install spake2 first", file=sys.stderr)
        return 1
    client: list[float] = []
    server: list[float] = []
    for _ in range(args.rounds):
        started = time.perf_counter()
        a = SPAKE2_A(b"a short secret")
        message_a = a.start()
        client.append(time.perf_counter() - started)
        started = time.perf_counter()
        b = SPAKE2_B(b"a short secret")
        message_b = b.start()
        key_b = b.finish(message_a)
        server.append(time.perf_counter() - started)
        started = time.perf_counter()
        key_a = a.finish(message_b)
        client[-1] += time.perf_counter() - started
        assert key_a == key_b
    started = time.perf_counter()
    for _ in range(10_000):
        hmac.new(b"t" * 43, b"sockferry v1 server proof" + b"x" * 32, hashlib.sha256).digest()
    proof_us = (time.perf_counter() - started) / 10_000 * 1e6
    print(f"SPAKE2 per handshake, median of {args.rounds}: client "
          f"{statistics.median(client) * 1000:.2f} ms, server "
          f"{statistics.median(server) * 1000:.2f} ms; one HMAC proof {proof_us:.1f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
