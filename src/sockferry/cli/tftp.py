"""``sockferry tftp-serve``, ``tftp-get`` and ``tftp-put``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

from sockferry.addresses import Address, HostPort, format_sockaddr, parse_address
from sockferry.cli.console import Console, TransferProgress
from sockferry.cli.runtime import ExitCode, run_async
from sockferry.cli.serving import (
    ServerOptions,
    add_root_or_store,
    add_server_options,
    what_to_serve,
)
from sockferry.errors import UsageError
from sockferry.storage.stores import is_store_url
from sockferry.tftp.aio import TransferResult
from sockferry.tftp.client import ClientOptions, download, upload
from sockferry.tftp.options import MAX_TIMEOUT_S, MAX_WINDOWSIZE, MIN_TIMEOUT_S, ServerLimits
from sockferry.tftp.packets import MAX_BLKSIZE, MIN_BLKSIZE
from sockferry.tftp.server import (
    DEFAULT_ERROR_RATE,
    DEFAULT_MAX_PER_PEER,
    DEFAULT_MAX_TRANSFERS,
    DEFAULT_MAX_UNCONFIRMED_PER_SOURCE,
    DEFAULT_PORT,
    TftpServer,
    TftpServerConfig,
    UploadPolicy,
)
from sockferry.tftp.transfer import (
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT_S,
    DEFAULT_UNCONFIRMED_S,
    Timing,
)

# The largest window a command line may ask for: far beyond any useful value, and small
# enough that 16-bit block numbers stay unambiguous within a window.
MAX_WINDOW_ARG = 4096
PROGRESS_INTERVAL_S = 0.1


def bounded_int(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not text.isdigit() or not low <= int(text) <= high:
            raise argparse.ArgumentTypeError(f"'{text}' is not a whole number from {low} "
                                             f"to {high}")
        return int(text)
    return parse


def register(sub: Any) -> None:
    _register_serve(sub)
    get = sub.add_parser(
        "tftp-get", help="download a file from a TFTP server",
        description="Download REMOTE from a TFTP server into LOCAL (default: the last part "
        "of REMOTE). The file appears under its name only once complete.")
    get.add_argument("server", metavar="HOST[:PORT]", help=f"default port {DEFAULT_PORT}")
    get.add_argument("remote", metavar="REMOTE")
    get.add_argument("local", metavar="LOCAL", nargs="?",
                     help="a file or a directory to put it in")
    _client_options(get)
    get.set_defaults(handler=run_get)
    put = sub.add_parser(
        "tftp-put", help="upload a file to a TFTP server",
        description="Upload LOCAL to a TFTP server as REMOTE (default: LOCAL's name).")
    put.add_argument("local", metavar="LOCAL")
    put.add_argument("server", metavar="HOST[:PORT]", help=f"default port {DEFAULT_PORT}")
    put.add_argument("remote", metavar="REMOTE", nargs="?")
    _client_options(put)
    put.set_defaults(handler=run_put)


def _register_serve(sub: Any) -> None:
    serve = sub.add_parser(
        "tftp-serve", help="serve a directory over TFTP (RFC 1350, 2347-2349, 7440)",
        description="Serve the files below ROOT (or in an S3 bucket, --store) to any TFTP "
        "client. Read-only unless --allow-upload is given; nothing outside ROOT can be "
        "reached. One log line per transfer goes to stderr. SIGINT or SIGTERM stops the "
        "server.")
    add_root_or_store(serve, store_note="a download fetches the whole object into a "
                      "local spool file before its first block goes out, and an upload "
                      "appears once complete (a multipart upload beyond 8 MiB)")
    serve.add_argument("--listen", action="append", metavar="ADDR",
                       help=f"address to listen on, repeatable (default ':{DEFAULT_PORT}': "
                       "every interface, IPv6 and IPv4)")
    serve.add_argument("--allow-upload", choices=["create", "overwrite", "any"],
                       help="accept uploads: 'create' makes new files only and never "
                       "replaces one, 'overwrite' replaces existing files only, 'any' "
                       "does both")
    serve.add_argument("--blksize-max", type=bounded_int(MIN_BLKSIZE, MAX_BLKSIZE),
                       default=MAX_BLKSIZE, metavar="BYTES",
                       help=f"largest block size agreed (default {MAX_BLKSIZE})")
    serve.add_argument("--windowsize-max", type=bounded_int(1, MAX_WINDOW_ARG), default=64,
                       metavar="BLOCKS", help="largest RFC 7440 window agreed (default 64)")
    serve.add_argument("--timeout", type=bounded_int(MIN_TIMEOUT_S, MAX_TIMEOUT_S),
                       default=int(DEFAULT_TIMEOUT_S), metavar="SECONDS",
                       help="longest retransmission timeout when the client does not "
                       f"negotiate one (default {DEFAULT_TIMEOUT_S:.0f})")
    serve.add_argument("--retries", type=bounded_int(1, 100), default=DEFAULT_RETRIES,
                       help=f"timeouts in a row before giving up (default {DEFAULT_RETRIES})")
    serve.add_argument("--max-transfers", type=bounded_int(1, 100_000),
                       default=DEFAULT_MAX_TRANSFERS,
                       help=f"transfers at once (default {DEFAULT_MAX_TRANSFERS})")
    serve.add_argument("--max-per-peer", type=bounded_int(1, 100_000),
                       default=DEFAULT_MAX_PER_PEER,
                       help=f"transfers at once from one address (default "
                       f"{DEFAULT_MAX_PER_PEER})")
    serve.add_argument("--max-upload-size", type=bounded_int(0, 1 << 62), metavar="BYTES",
                       help="largest file accepted (default: what the disk can hold)")
    serve.add_argument("--max-unconfirmed-per-source", type=bounded_int(1, 100_000),
                       default=DEFAULT_MAX_UNCONFIRMED_PER_SOURCE, metavar="N",
                       help="transfers at once from one IPv4 address or IPv6 /64 whose "
                       "client has not answered yet; further requests from there get no "
                       f"answer (default {DEFAULT_MAX_UNCONFIRMED_PER_SOURCE})")
    serve.add_argument("--unconfirmed-timeout", type=bounded_int(1, 255),
                       default=int(DEFAULT_UNCONFIRMED_S), metavar="SECONDS",
                       help="end a transfer whose client has not answered within this "
                       f"time (default {DEFAULT_UNCONFIRMED_S:.0f})")
    serve.add_argument("--error-rate", type=bounded_int(1, 1_000_000),
                       default=DEFAULT_ERROR_RATE, metavar="N",
                       help="ERROR answers a second on the request port (refusals, stray "
                       "packets), all sources together; one source gets a tenth "
                       f"(default {DEFAULT_ERROR_RATE})")
    add_server_options(serve)
    serve.set_defaults(handler=run_serve)


def _client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--blksize", type=bounded_int(MIN_BLKSIZE, MAX_BLKSIZE),
                        default=1468, metavar="BYTES",
                        help="block size to ask for (RFC 2348; default 1468, which fits an "
                        "Ethernet frame)")
    parser.add_argument("--windowsize", type=bounded_int(1, min(MAX_WINDOWSIZE,
                                                                MAX_WINDOW_ARG)),
                        default=1, metavar="BLOCKS",
                        help="blocks per acknowledgement to ask for (RFC 7440; default 1)")
    parser.add_argument("--timeout", type=bounded_int(MIN_TIMEOUT_S, MAX_TIMEOUT_S),
                        metavar="SECONDS",
                        help="longest retransmission timeout, also asked of the server "
                        f"(RFC 2349; default {DEFAULT_TIMEOUT_S:.0f}, not negotiated)")
    parser.add_argument("--retries", type=bounded_int(1, 100), default=DEFAULT_RETRIES,
                        help=f"timeouts in a row before giving up (default {DEFAULT_RETRIES})")
    parser.add_argument("--mode", choices=["octet", "netascii"], default="octet",
                        help="octet (bytes as they are, the default) or netascii (text)")


# ---------------------------------------------------------------------------------------
# tftp-serve


def run_serve(args: argparse.Namespace, console: Console) -> int:
    root = what_to_serve(args)
    if not is_store_url(root) and not os.path.isdir(root):
        raise UsageError(f"'{root}' is not a directory — give the directory to serve")
    options = ServerOptions.from_args(args, socket.SOCK_DGRAM)
    # Socket activation: the unit's sockets, and --listen only if given.
    default = [] if options.activated else [f":{DEFAULT_PORT}"]
    listen = [parse_address(text, DEFAULT_PORT) for text in args.listen or default]
    config = TftpServerConfig(
        root=root,
        allow_upload=UploadPolicy(args.allow_upload or "none"),
        limits=ServerLimits(blksize_max=args.blksize_max, windowsize_max=args.windowsize_max),
        timing=Timing(timeout_s=float(args.timeout), retries=args.retries),
        max_transfers=args.max_transfers, max_per_peer=args.max_per_peer,
        max_upload_bytes=args.max_upload_size,
        max_unconfirmed_per_source=args.max_unconfirmed_per_source,
        unconfirmed_s=float(args.unconfirmed_timeout), error_rate=args.error_rate,
        access=options.access, metrics=options.metrics)
    run_async(_serve(config, listen, console, options))
    return ExitCode.OK


async def _serve(config: TftpServerConfig, listen: list[Address], console: Console,
                 options: ServerOptions) -> None:
    server = TftpServer(config)
    await server.start(listen, options.activated)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, lambda: loop.create_task(server.close()))
    for sockaddr in server.addresses if not console.quiet else ():
        console.print(f"serving {config.root} over TFTP on {format_sockaddr(sockaddr)}")
    try:
        options.after_binding()  # listening, root or store open: drop to --user now
        await server.serve_forever()
    finally:
        options.stopping()
        await server.close()


# ---------------------------------------------------------------------------------------
# tftp-get, tftp-put


def _options(args: argparse.Namespace) -> ClientOptions:
    return ClientOptions(blksize=args.blksize, windowsize=args.windowsize,
                         timeout_s=args.timeout, retries=args.retries, mode=args.mode)


def _server(text: str) -> HostPort:
    address = parse_address(text, DEFAULT_PORT)
    if not isinstance(address, HostPort):
        raise UsageError("TFTP runs over UDP: give HOST[:PORT], not a unix: path")
    return address


class _Progress:
    """Feeds a progress bar from the transfer's byte counts, a few times a second."""

    def __init__(self, bar: TransferProgress, label: str) -> None:
        self.bar = bar
        self.label = label
        self.shown = 0
        self.started = False
        self.last = 0.0

    def __call__(self, size: int, total: int | None) -> None:
        now = time.monotonic()
        if not self.started:
            self.bar.start("tftp", self.label, total)
            self.started = True
        elif now - self.last < PROGRESS_INTERVAL_S:
            return
        self.last = now
        self.bar.advance("tftp", size - self.shown)
        self.shown = size


def _summary(verb: str, name: str, result: TransferResult) -> str:
    resent = (f", {result.retransmissions} retransmissions" if result.retransmissions
              else "")
    return (f"{verb} {name}: {result.size} bytes in {result.seconds:.2f} s "
            f"({result.rate_mb_s:.1f} MB/s, {result.options.describe()}{resent})")


def run_get(args: argparse.Namespace, console: Console) -> int:
    server = _server(args.server)
    name = os.path.basename(args.remote.rstrip("/")) or "download"
    local = args.local or name
    if os.path.isdir(local):
        local = os.path.join(local, name)
    with console.progress() as bar:
        result = run_async(download(server, args.remote, local, _options(args),
                                    _Progress(bar, args.remote)))
    console.summary(_summary("received", f"'{args.remote}' into {local}", result))
    return ExitCode.OK


def run_put(args: argparse.Namespace, console: Console) -> int:
    server = _server(args.server)
    remote = args.remote or os.path.basename(args.local)
    with console.progress() as bar:
        result = run_async(upload(args.local, server, remote, _options(args),
                                  _Progress(bar, args.local)))
    console.summary(_summary("sent", f"{args.local} as '{remote}'", result))
    return ExitCode.OK
