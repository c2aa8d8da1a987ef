"""``sockferry serve``: the ferry server assembled by the library, run until a signal."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import resource
import signal
import socket
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from sockferry.addresses import Address, parse_address
from sockferry.cli.console import Console
from sockferry.cli.runtime import ExitCode, run_async
from sockferry.cli.serving import ServerOptions, what_to_serve
from sockferry.errors import UsageError
from sockferry.ferry import DEFAULT_PORT
from sockferry.ferry.trust import server_identity
from sockferry.records import record
from sockferry.storage.durability import Durability

if TYPE_CHECKING:
    from sockferry.ferry.server_config import FerryServerConfig
    from sockferry.tls import ServerTLS

log = logging.getLogger("sockferry.ferry")


def run_serve(args: argparse.Namespace, console: Console) -> int:
    # Here, not at the top: a client command or --help loads no server and no token code.
    from sockferry.ferry.server_config import FerryServerConfig  # noqa: PLC0415
    from sockferry.ferry.tokens import server_token  # noqa: PLC0415

    root = what_to_serve(args)
    options = ServerOptions.from_args(args, socket.SOCK_STREAM)
    raise_open_file_limit()
    token, token_path, created = server_token(args.token_file)
    if created:
        console.notice(f"created a new token in {token_path} (mode 0600); clients on "
                       "this machine use it automatically, others need a copy")
    # Socket activation: the unit's sockets, and --listen only if given.
    default = [] if options.activated else [f"localhost:{DEFAULT_PORT}"]
    addresses = [parse_address(a, DEFAULT_PORT) for a in args.listen or default]
    config = FerryServerConfig(token=token, umask=args.umask, clobber=not args.no_clobber,
                          max_connections=args.max_connections,
                          max_startups=args.max_startups,
                          max_startups_per_source=args.max_startups_per_source,
                          handshake_timeout_s=args.handshake_timeout,
                          idle_timeout_s=args.idle_timeout, backlog=args.backlog,
                          durability=Durability(args.fsync), mptcp=args.mptcp,
                          partial_keep_s=args.partial_keep * 3600,
                          partial_max_bytes=args.partial_max_bytes,
                          access=options.access, read_only=args.read_only,
                          max_file_size=args.max_file_size,
                          max_bytes_per_connection=args.max_bytes_per_connection,
                          max_files_per_connection=args.max_files_per_connection,
                          max_list_entries=args.max_list_entries, quota=args.quota,
                          metrics=options.metrics, log_transfers=args.log_format == "json")
    if args.transport == "sctp" and options.activated:
        raise UsageError("socket activation hands over TCP sockets: drop --transport sctp "
                         "(or start this server without a .socket unit)")
    if args.transport == "sctp" and args.mptcp:
        raise UsageError("--mptcp and --transport sctp do not go together: SCTP has "
                         "its own multihoming")
    tls = _server_tls(args, token_path, console)
    if tls is not None:
        config = replace(config, tls=tls)
        # Loaded now, while the Python installation is surely readable: --user may
        # make it unreadable before the first TLS client arrives.
        import sockferry.ferry.secure  # noqa: F401, PLC0415
    sctp = _SctpListen(args.sctp_stack, args.udp_port) if args.transport == "sctp" else None
    return run_async(_serve(root, addresses, config, args.grace, sctp, options))


def _server_tls(args: argparse.Namespace, token_path: Path,
                console: Console) -> ServerTLS | None:
    """The certificate of ``serve --tls``: --cert/--key, or the self-signed pair beside
    the token, made on first use."""
    if not (args.tls or args.cert or args.key):
        return None
    if args.transport == "sctp":
        raise UsageError("--tls runs over TCP only; drop --transport sctp or --tls")
    if bool(args.cert) != bool(args.key):
        raise UsageError("--cert and --key go together: give both, or neither for a "
                         "self-signed certificate")
    from sockferry.tls import format_fingerprint, format_hex  # noqa: PLC0415 - TLS only

    identity = server_identity(cert=args.cert, key=args.key,
                               self_signed_dir=token_path.parent)
    if identity.created:
        console.notice(f"created a self-signed TLS certificate {identity.cert} and its key "
                       f"{identity.key} (mode 0600)")
    fingerprint = identity.tls.fingerprint
    log.info("TLS 1.3 only; certificate %s, SHA-256 fingerprint %s (%s) — clients pin it "
             "with --fingerprint", identity.cert, format_fingerprint(fingerprint),
             format_hex(fingerprint))
    return identity.tls


@record
class _SctpListen:
    stack: str
    udp_port: int | None


def raise_open_file_limit() -> None:
    """Each client may hold a socket and up to a window of open files: lift the soft
    limit on descriptors to the hard one (commonly 1,024 -> 524,288)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _serve(root: str, addresses: list[Address], config: FerryServerConfig,
                 grace_s: float, sctp: _SctpListen | None, options: ServerOptions) -> int:
    from sockferry.api import start_server  # noqa: PLC0415 - see run_serve
    from sockferry.storage.stores import is_store_url  # noqa: PLC0415

    server = await start_server(root, addresses, config, grace=grace_s,
                                inherited=options.activated,
                                sctp_stack=sctp.stack if sctp else None,
                                udp_port=sctp.udp_port if sctp else None)
    shown = root if is_store_url(root) else os.path.abspath(root)
    log.info("serving %s%s; listening on %s", shown,
             " (read-only)" if config.read_only else "", ", ".join(server.addresses))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        options.after_binding()  # bound, root open, token read: drop to --user now
        await stop.wait()
    finally:
        options.stopping()
        log.info("stopping: no new connections")
        server.close()
        await server.wait_closed()
        log.info("stopped")
    return ExitCode.OK
