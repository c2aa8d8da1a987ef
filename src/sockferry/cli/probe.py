"""``sockferry probe HOST:PORT``."""

from __future__ import annotations

import argparse
from typing import Any

from sockferry.addresses import UnixPath, parse_address
from sockferry.cli.console import Console
from sockferry.cli.runtime import ExitCode, run_async
from sockferry.ferry import DEFAULT_PORT
from sockferry.probe import probe


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "probe",
        help="resolve an address and try to connect to each of its addresses",
        description="Show what getaddrinfo returns for HOST:PORT, connect to every "
        "address with a timeout, and print the local and peer address, the reverse "
        "name and the connect time of each. Exit code 0 when at least one address "
        "answered, 3 when none did.",
    )
    parser.add_argument("address", metavar="HOST:PORT",
                        help="HOST, HOST:PORT, [IPv6]:PORT or unix:PATH "
                        f"(default port {DEFAULT_PORT})")
    parser.add_argument("--timeout", type=float, default=3.0, metavar="SECONDS",
                        help="connect timeout per address (default 3)")
    parser.add_argument("--no-reverse", action="store_true",
                        help="skip reverse name lookups (getnameinfo)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, console: Console) -> int:
    address = parse_address(args.address, DEFAULT_PORT)
    targets, results = run_async(probe(address, args.timeout, reverse=not args.no_reverse))
    if not isinstance(address, UnixPath):
        console.print(f"getaddrinfo({address.host or '*'}, {address.port}) returned "
                      f"{len(targets)} address{'es' if len(targets) != 1 else ''}:")
        for target in targets:
            console.print(f"  {target}")
    for result in results:
        if result.connected:
            name = f", reverse name {result.peer_name}" if result.peer_name else ""
            console.print(f"{result.target} ({result.family}): connected in "
                          f"{result.connect_ms:.2f} ms; local {result.local}, "
                          f"peer {result.peer}{name}")
        else:
            console.print(f"{result.target} ({result.family}): {result.error} "
                          f"(after {result.connect_ms:.0f} ms)")
    return ExitCode.OK if any(r.connected for r in results) else ExitCode.NETWORK
