"""``sockferry known-hosts list|forget HOST``: the TLS servers clients trust on first use."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sockferry.cli.console import Console
from sockferry.cli.runtime import ExitCode
from sockferry.errors import UsageError

SUMMARY = "list or forget the TLS certificates trusted on first use"


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "known-hosts", help=SUMMARY,
        description="The known-hosts file holds one line per server a --tls client "
        "trusted on first use: 'HOST:PORT SHA256:<base64 fingerprint>'. A server whose "
        "certificate no longer matches its line is refused; forget the line once the "
        "change is known to be legitimate. The file is plain text and may be edited.")
    parser.add_argument("action", choices=("list", "forget"))
    parser.add_argument("host", nargs="?", metavar="HOST",
                        help="forget: HOST:PORT, or HOST for all its ports")
    parser.add_argument("--known-hosts", metavar="FILE",
                        help="the file (default ~/.config/sockferry/known_hosts)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, console: Console) -> int:
    from sockferry.known_hosts import KnownHosts, default_path  # noqa: PLC0415
    from sockferry.tls import format_fingerprint  # noqa: PLC0415

    known = KnownHosts(Path(args.known_hosts) if args.known_hosts else default_path())
    if args.action == "list":
        if args.host:
            raise UsageError("known-hosts list takes no HOST")
        for entry in known.entries():
            console.print(f"{entry.host} {format_fingerprint(entry.fingerprint)}")
        return ExitCode.OK
    if not args.host:
        raise UsageError("known-hosts forget needs a HOST (HOST:PORT, or HOST for every "
                         "port)")
    removed = known.forget(args.host)
    if not removed:
        raise UsageError(f"{args.host} is not in {known.path} — see: sockferry known-hosts "
                         "list")
    console.notice(f"forgot {', '.join(removed)} in {known.path}")
    return ExitCode.OK
