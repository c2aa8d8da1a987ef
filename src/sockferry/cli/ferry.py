"""``sockferry serve | send | get | ls``: the scp-like transfer over TCP or AF_UNIX."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import resource
import signal
import socket
import stat
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sockferry.addresses import (
    Address,
    HostPort,
    UnixPath,
    parse_address,
    parse_port,
)
from sockferry.cli.console import Console, TransferProgress
from sockferry.cli.runtime import ExitCode, exit_code_for, run_async
from sockferry.cli.serving import ServerOptions, add_server_options
from sockferry.entries import Entry, Kind
from sockferry.errors import AuthenticationFailed, UsageError
from sockferry.ferry import DEFAULT_PORT
from sockferry.ferry.bodies import Progress
from sockferry.ferry.client import FerryClient
from sockferry.ferry.copy_get import get_paths
from sockferry.ferry.copy_send import send_file_as, send_paths, send_stream_as
from sockferry.ferry.copying import Outcome, Reporter, SyncOptions
from sockferry.ferry.inflight import NO_RESUME
from sockferry.records import record
from sockferry.sctp import TRANSPORTS
from sockferry.sockets import storage_error
from sockferry.storage import DEFAULT_UMASK, Durability
from sockferry.units import format_bytes, format_rate

if TYPE_CHECKING:
    from sockferry.admission import Startups
    from sockferry.ferry.secure import ClientTLS
    from sockferry.ferry.server import FerryServerConfig
    from sockferry.tls import ServerTLS

log = logging.getLogger("sockferry.ferry")


def register(sub: Any) -> None:
    _register_serve(sub)
    _register_send(sub)
    _register_get(sub)
    _register_ls(sub)


def _transport_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--transport", choices=("tcp", "sctp"), default="tcp",
                        help="tcp (default), or sctp: the same protocol over an SCTP "
                        "association, each file on its own stream")
    parser.add_argument("--sctp-stack", choices=TRANSPORTS, default="auto",
                        help="with --transport sctp: kernel SCTP, SCTP over UDP, or auto: "
                        "the kernel's where it has SCTP (default auto)")
    parser.add_argument("--udp-port", type=parse_port, metavar="N",
                        help="with --transport sctp over UDP: the UDP port, when it "
                        "differs from the SCTP port (servers bind it; clients send to it)")
    parser.add_argument("--mptcp", action="store_true",
                        help="Multipath TCP (RFC 8684): one connection over several paths "
                        "at once, for more bandwidth and to survive losing a path. Needs "
                        "it at both ends (Linux, net.mptcp.enabled=1); extra paths also "
                        "need addresses configured with 'ip mptcp endpoint' (signal on "
                        "the server, subflow on the client) and 'ip mptcp limits'. Falls "
                        "back to plain TCP where this kernel or the peer lacks MPTCP, and "
                        "says which was used. AF_UNIX (--unix, unix:) ignores it; not "
                        "with --transport sctp")


def _client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-P", "--port", type=parse_port, default=DEFAULT_PORT,
                        help=f"server port (default {DEFAULT_PORT}); a port in the remote "
                        "spec (HOST:PORT:PATH, sockferry://HOST:PORT/PATH) wins")
    family = parser.add_mutually_exclusive_group()
    family.add_argument("-4", "--ipv4", dest="family", action="store_const",
                        const=socket.AF_INET, default=0, help="connect over IPv4 only")
    family.add_argument("-6", "--ipv6", dest="family", action="store_const",
                        const=socket.AF_INET6, help="connect over IPv6 only")
    _transport_options(parser)
    parser.add_argument("--unix", metavar="SOCKET",
                        help="connect over an AF_UNIX socket instead of TCP (write remote "
                        "paths as :PATH)")
    parser.add_argument("--token-file", metavar="FILE",
                        help="shared token (default: $SOCKFERRY_TOKEN, then "
                        "~/.config/sockferry/token)")
    parser.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                        help="connect and handshake timeout (default 10)")
    parser.add_argument("--tls", action="store_true",
                        help="TLS 1.3 (the server must run with --tls). The server's "
                        "certificate is checked against --ca or --fingerprint, or else "
                        "trusted on first use and remembered in the known-hosts file")
    parser.add_argument("--ca", metavar="FILE",
                        help="with --tls (implied): trust certificates signed by these CA "
                        "certificates (PEM) and check the host name")
    parser.add_argument("--fingerprint", metavar="FP",
                        help="with --tls (implied): trust only the certificate with this "
                        "SHA-256 fingerprint (SHA256:base64, or the hex `openssl x509 "
                        "-fingerprint -sha256` prints)")
    parser.add_argument("--known-hosts", metavar="FILE",
                        help="with --tls: the known-hosts file for trust on first use "
                        "(default ~/.config/sockferry/known_hosts)")


def _copy_options(parser: argparse.ArgumentParser) -> None:
    _client_options(parser)
    parser.add_argument("-u", "--update", action="store_true",
                        help="skip files the receiver already has with the same size and "
                        "modification time (rsync's quick check); implies -p, so that a "
                        "second run finds the times equal")
    parser.add_argument("-c", "--checksum", action="store_true",
                        help="skip files the receiver already has with the same size and "
                        "digest (rsync's -c; both sides read every such file, the server "
                        "computes its digest on request)")
    parser.add_argument("--include", action=_FilterRule, dest="filters", default=[],
                        metavar="PATTERN", help="keep names matching PATTERN even if a "
                        "later --exclude matches them (in a config file, include "
                        "patterns come before exclude patterns)")
    parser.add_argument("--exclude", action=_FilterRule, dest="filters", default=[],
                        metavar="PATTERN", help="leave out names matching PATTERN "
                        "(rsync's basic rules: * and ? stay within a name, ** crosses /, "
                        "a leading / anchors at the tree's top, a trailing / matches "
                        "directories only; the first matching --exclude/--include wins)")
    parser.add_argument("--limit-rate", type=_rate, metavar="RATE",
                        help="move at most RATE bytes per second each way, averaged over "
                        "a twentieth of a second (suffixes K, M, G are 1024-based: 10M is "
                        "10 MiB/s; rsync's --bwlimit, curl's --limit-rate)")
    parser.add_argument("-l", "--links", action="store_true",
                        help="with -r: copy symbolic links as links (their targets kept "
                        "as they are) when they point inside the copied tree; others are "
                        "skipped, and said so (without -l links to files are followed, "
                        "links to directories skipped)")
    parser.add_argument("-n", "--dry-run", action="store_true",
                        help="print what would be copied (on stdout) and copy nothing")
    parser.add_argument("-r", "--recursive", action="store_true",
                        help="copy directories and everything below them")
    parser.add_argument("-p", "--preserve", action="store_true",
                        help="keep modification times too (permission bits are always "
                        "kept, capped by the receiver's umask)")


class _FilterRule(argparse.Action):
    """--include and --exclude, kept in the order given: the first match decides."""

    repeatable = True  # for the config file: an array of patterns

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        # None: the config layer's "not given yet" (see cli/config.hide_defaults).
        rules = [*(getattr(namespace, self.dest, None) or []),
                 (option_string == "--include", values)]
        setattr(namespace, self.dest, rules)


def _sync_options(args: argparse.Namespace) -> SyncOptions:
    from sockferry.ferry.sync import Filters  # noqa: PLC0415

    if getattr(args, "delete", False) and not args.recursive:
        raise UsageError("--delete removes names inside a copied tree: add -r")
    if (args.update or args.checksum or args.dry_run or args.filters) and args.resume:
        raise UsageError("--resume does not go with --update, --checksum, --dry-run or "
                         "filters")
    return SyncOptions(update=args.update, filters=Filters.parse(args.filters),
                       dry_run=args.dry_run, delete=getattr(args, "delete", False),
                       checksum=args.checksum, links=args.links)


def _register_serve(sub: Any) -> None:
    parser = sub.add_parser(
        "serve", help="serve a directory to sockferry clients",
        description="Serve ROOT to sockferry clients. Client paths are confined to ROOT; "
        "files are written under a temporary name, checked against the sender's digest, "
        "fsynced and renamed. Stops on SIGINT/SIGTERM after a grace period.")
    parser.add_argument("root", metavar="ROOT", help="directory to serve")
    parser.add_argument("--listen", action="append", metavar="ADDR",
                        help="HOST:PORT, [IPv6]:PORT, :PORT (all interfaces) or unix:PATH; "
                        f"repeatable (default localhost:{DEFAULT_PORT})")
    parser.add_argument("--token-file", metavar="FILE",
                        help="shared token (default ~/.config/sockferry/token, created "
                        "with a random token if missing)")
    parser.add_argument("--umask", type=_octal, default=f"{DEFAULT_UMASK:03o}", metavar="MASK",
                        help="permission bits removed from every file and directory "
                        "written (default 022)")
    parser.add_argument("--no-clobber", action="store_true",
                        help="refuse to overwrite existing files")
    parser.add_argument("--max-connections", type=_positive, default=256, metavar="N",
                        help="clients served at once, authenticated or not (default 256)")
    parser.add_argument("--max-startups", type=_startups, default="10:30:100",
                        metavar="START:RATE:FULL",
                        help="connections still authenticating: from START on, a new one "
                        "is refused with a chance of RATE %%, growing to 100 %% at FULL "
                        "(as sshd's MaxStartups; N alone means N:100:N; default 10:30:100)")
    parser.add_argument("--max-startups-per-source", type=_positive, default=4, metavar="N",
                        help="connections still authenticating from one address (IPv6: "
                        "one /64) at once; more are refused (default 4)")
    parser.add_argument("--handshake-timeout", type=_seconds, default=5.0, metavar="SECONDS",
                        help="drop a client that has not authenticated this long after "
                        "connecting (default 5)")
    parser.add_argument("--idle-timeout", type=float, default=120.0, metavar="SECONDS",
                        help="drop a client that makes no progress for this long "
                        "(default 120)")
    parser.add_argument("--grace", type=float, default=10.0, metavar="SECONDS",
                        help="on SIGINT/SIGTERM, time given to transfers in flight "
                        "(default 10)")
    parser.add_argument("--backlog", type=_positive, default=128, metavar="N",
                        help="listen() backlog (default 128)")
    parser.add_argument("--fsync", choices=[d.value for d in Durability],
                        default=Durability.BATCH.value,
                        help="when uploads are made durable before COMMITTED is sent: "
                        "batch (default) fsyncs the files finished together, then their "
                        "directories, and answers them together; each fsyncs every file "
                        "and its directory on its own; none never fsyncs (a crash of the "
                        "machine may lose files the client was told were committed)")
    parser.add_argument("--partial-keep", type=_hours, default=24.0, metavar="HOURS",
                        help="keep the partial file of an interrupted resumable upload "
                        "this long for send --resume (default 24)")
    parser.add_argument("--partial-max-bytes", type=_byte_count, default=16 * 1024**3,
                        metavar="BYTES", help="at most this much in partial files; the "
                        "oldest go first (suffixes K, M, G, T; default 16G)")
    parser.add_argument("--tls", action="store_true",
                        help="accept TLS 1.3 clients only; without --cert, a self-signed "
                        "certificate and key (mode 0600) are made beside the token on "
                        "first use; the certificate's fingerprint is logged at start")
    parser.add_argument("--cert", metavar="FILE",
                        help="with --tls (implied): this PEM certificate (chain) instead")
    parser.add_argument("--key", metavar="FILE", help="the private key (PEM) of --cert")
    parser.add_argument("--read-only", action="store_true",
                        help="serve ROOT for reading only: uploads, MKDIR and resume "
                        "queries are refused with READ_ONLY")
    parser.add_argument("--max-file-size", type=_byte_count, default="4T", metavar="BYTES",
                        help="refuse uploads announced larger than this, with TOO_LARGE "
                        "(suffixes K, M, G, T; default 4T)")
    parser.add_argument("--max-bytes-per-connection", type=_byte_count, default="0",
                        metavar="BYTES", help="refuse a PUT or GET that would take one "
                        "connection over this many bytes, with TOO_LARGE (default 0: no "
                        "limit)")
    parser.add_argument("--max-files-per-connection", type=_count, default=0, metavar="N",
                        help="refuse PUTs and GETs on one connection after this many, with "
                        "TOO_LARGE (default 0: no limit)")
    parser.add_argument("--max-list-entries", type=_positive, default=1_000_000,
                        metavar="N", help="refuse a LIST (ls -R, get -r) of more entries, "
                        "with TOO_LARGE (default 1000000)")
    parser.add_argument("--quota", type=_byte_count, default="0", metavar="BYTES",
                        help="refuse an upload, with NO_SPACE, that would take the bytes "
                        "under ROOT over this (approximate: measured at start, then "
                        "counted; default 0: no quota)")
    add_server_options(parser, unix=True)
    _transport_options(parser)
    parser.set_defaults(handler=run_serve)


def _register_send(sub: Any) -> None:
    parser = sub.add_parser(
        "send", help="copy local files to a server",
        description="Copy local files to HOST:DEST. A DEST that ends in / or names an "
        "existing directory receives the files under their own names. Succeeds only "
        "once the server has verified every file's digest and committed it.")
    parser.add_argument("sources", nargs="+", metavar="SRC",
                        help="local files; - reads standard input (to HOST:NAME)")
    parser.add_argument("dest", metavar="HOST:DEST",
                        help="server and path ([::1]:DEST for IPv6, :DEST for localhost, "
                        "HOST:PORT:DEST or sockferry://HOST:PORT/DEST with a port)")
    _copy_options(parser)
    parser.add_argument("--resume", action="store_true",
                        help="let the server keep what it got if the transfer breaks, and "
                        "send only what it lacks of an earlier broken transfer (its kept "
                        "bytes are proven by digest first)")
    parser.add_argument("--delete", action="store_true",
                        help="with -r: remove files and directories on the server inside the "
                        "copied tree that the local tree lacks, before sending (names "
                        "--exclude matches are kept; links are removed, never followed); "
                        "try it with -n first")
    parser.set_defaults(handler=run_send)


def _register_get(sub: Any) -> None:
    parser = sub.add_parser(
        "get", help="copy files from a server",
        description="Copy HOST:SRC... to the local DEST. Each file is written under a "
        "temporary name and renamed once its digest matches the server's.")
    parser.add_argument("sources", nargs="+", metavar="HOST:SRC",
                        help="remote files; globs (quoted: 'host:*.txt') are matched "
                        "against the server's listing, as a shell would")
    parser.add_argument("dest", metavar="DEST",
                        help="local file or directory; - writes the one file to standard "
                        "output once its digest is verified")
    _copy_options(parser)
    parser.add_argument("--delete", action="store_true",
                        help="with -r: remove local files and directories inside the copied "
                        "tree that the server's tree lacks (names --exclude matches are kept; "
                        "links are removed, never followed); try it with -n first")
    parser.add_argument("--resume", action="store_true",
                        help="keep what was received beside DEST if the transfer breaks, and "
                        "fetch only the rest of an earlier broken transfer (proven by "
                        "digest first)")
    parser.set_defaults(handler=run_get)


def _register_ls(sub: Any) -> None:
    parser = sub.add_parser("ls", help="list a directory on a server",
                            description="List HOST:PATH on a sockferry server.")
    parser.add_argument("target", metavar="HOST:[PATH]")
    parser.add_argument("-R", "--recursive", action="store_true",
                        help="list everything below PATH")
    _client_options(parser)
    parser.set_defaults(handler=run_ls)


def _octal(text: str) -> int:
    try:
        value = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an octal mask like 022") from None
    if not 0 <= value <= 0o777:
        raise argparse.ArgumentTypeError(f"'{text}' is not a mask between 000 and 777")
    return value


def _hours(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"'{text}' is not a positive number of hours")
    return value


_BYTE_SUFFIXES = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def _byte_count(text: str) -> int:
    number, suffix = text[:-1], text[-1:].upper()
    if suffix.isdigit():
        number, suffix = text, ""
    if not number.isdigit() or suffix not in _BYTE_SUFFIXES:
        raise argparse.ArgumentTypeError(f"'{text}' is not a byte count like 500M or 16G")
    return int(number) * _BYTE_SUFFIXES[suffix]


def _rate(text: str) -> int:
    """--limit-rate: bytes per second, with the suffixes of a byte count."""
    rate = _byte_count(text)
    if rate <= 0:
        raise argparse.ArgumentTypeError(f"'{text}' is not a rate like 500K or 10M (bytes "
                                         "per second, more than 0)")
    return rate


def _startups(text: str) -> Startups:
    from sockferry.admission import Startups  # noqa: PLC0415 - serve only

    try:
        return Startups.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 86400:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of seconds above 0")
    return value


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number")
    return int(text)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"'{text}' is not a positive whole number")
    return int(text)


# ---- remote paths ----------------------------------------------------------------------


@record
class Remote:
    host: str
    path: str
    port: int | None = None  # given in the spec: it wins over -P


URL_SCHEME = "sockferry://"


def parse_remote(text: str) -> Remote | None:
    """A remote spec, or None for a local path (scp's rule: a colon before any slash
    means remote).  ``HOST:PATH``, ``HOST:PORT:PATH`` (a part of digits between two
    colons is a port), ``[v6]:PATH``, ``[v6]:PORT:PATH`` and
    ``sockferry://HOST[:PORT]/PATH`` (percent-escapes decoded); an empty host is
    localhost."""
    if text.startswith(URL_SCHEME):
        return _parse_url(text)
    if text.startswith("["):
        close = text.find("]")
        if close <= 0 or text[close + 1 : close + 2] != ":":
            return None
        host, rest = text[1:close], text[close + 2 :]
    else:
        colon = text.find(":")
        if colon < 0 or "/" in text[:colon]:
            return None
        host, rest = text[:colon], text[colon + 1 :]
    port_text, separator, path = rest.partition(":")
    if separator and port_text.isdigit():
        return Remote(host or "localhost", path, parse_port(port_text))
    return Remote(host or "localhost", rest)


def _parse_url(text: str) -> Remote:
    from urllib.parse import unquote, urlsplit  # noqa: PLC0415 - URLs only

    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise UsageError(f"'{text}' is not a valid sockferry:// URL ({exc})") from None
    if parts.query or parts.fragment or parts.username or parts.password:
        raise UsageError(f"'{text}': a sockferry:// URL has a host, a port and a path "
                         "only")
    return Remote(parts.hostname or "localhost", unquote(parts.path[1:]), port)


def split_remote(text: str) -> tuple[str, str] | None:
    """``HOST:PATH`` -> (host, path) (see ``parse_remote``; the port is dropped)."""
    remote = parse_remote(text)
    return None if remote is None else (remote.host, remote.path)


def _server_address(args: argparse.Namespace, host: str) -> Address:
    if args.unix:
        if args.transport == "sctp":
            raise UsageError("--unix and --transport sctp do not go together: SCTP runs "
                             "over IP")
        return UnixPath(args.unix)
    return HostPort(host, args.port, args.family)


def _client_tls(args: argparse.Namespace) -> ClientTLS | None:
    """The TLS trust the options ask for (``--ca`` and ``--fingerprint`` imply --tls)."""
    if not (args.tls or args.ca or args.fingerprint):
        if args.known_hosts:
            raise UsageError("--known-hosts applies to --tls connections only: add --tls")
        return None
    if args.transport == "sctp":
        raise UsageError("--tls runs over TCP only; drop --transport sctp or --tls")
    if args.ca and args.fingerprint:
        raise UsageError("--ca and --fingerprint are two ways to trust a server: give one")
    # Here, not at the top: only TLS clients load the TLS code.
    from sockferry.ferry.secure import ClientTLS  # noqa: PLC0415
    from sockferry.known_hosts import default_path  # noqa: PLC0415
    from sockferry.tls import parse_fingerprint  # noqa: PLC0415

    if args.fingerprint:
        return ClientTLS(pin=parse_fingerprint(args.fingerprint))
    if args.ca:
        return ClientTLS(ca=args.ca)
    return ClientTLS(known_hosts=Path(args.known_hosts) if args.known_hosts
                     else default_path())


@asynccontextmanager
async def _connected(args: argparse.Namespace, address: Address,
                     token: bytes) -> AsyncIterator[FerryClient]:
    """An authenticated client over TCP (or AF_UNIX), or over an SCTP association."""
    tls = _client_tls(args)
    if args.transport == "sctp" and args.mptcp:
        raise UsageError("--mptcp and --transport sctp do not go together: SCTP has "
                         "its own multihoming")
    if args.transport == "sctp":
        # The SCTP stacks take a while to import; plain TCP never loads them.
        from sockferry.ferry.over_sctp import sctp_client  # noqa: PLC0415

        async with sctp_client(address, token, stack=args.sctp_stack,
                               udp_port=args.udp_port, timeout_s=args.timeout) as client:
            if getattr(args, "limit_rate", None):
                client.limit_rate(args.limit_rate)
            yield client
        return
    client = await FerryClient.connect(address, token, timeout_s=args.timeout,
                                       mptcp=args.mptcp, tls=tls)
    if getattr(args, "limit_rate", None):
        client.limit_rate(args.limit_rate)
    try:
        yield client
    finally:
        client.close()


# ---- serve -----------------------------------------------------------------------------


def run_serve(args: argparse.Namespace, console: Console) -> int:
    # Here, not at the top: a client command or --help loads no server and no token code.
    from sockferry.ferry.server import FerryServerConfig  # noqa: PLC0415
    from sockferry.ferry.tokens import server_token  # noqa: PLC0415

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
    return run_async(_serve(args.root, addresses, config, args.grace, sctp, options))


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
    from sockferry.tls import (  # noqa: PLC0415 - TLS servers only
        ensure_certificate,
        format_fingerprint,
        format_hex,
        server_tls,
    )

    if args.cert:
        cert, key = Path(args.cert), Path(args.key)
    else:
        cert, key, created = ensure_certificate(token_path.parent)
        if created:
            console.notice(f"created a self-signed TLS certificate {cert} and its key {key} "
                           "(mode 0600)")
    tls = server_tls(str(cert), str(key))
    log.info("TLS 1.3 only; certificate %s, SHA-256 fingerprint %s (%s) — clients pin it "
             "with --fingerprint", cert, format_fingerprint(tls.fingerprint),
             format_hex(tls.fingerprint))
    return tls


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

    server = await start_server(root, addresses, config, grace=grace_s,
                                inherited=options.activated,
                                sctp_stack=sctp.stack if sctp else None,
                                udp_port=sctp.udp_port if sctp else None)
    log.info("serving %s%s; listening on %s", os.path.abspath(root),
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


# ---- send / get ------------------------------------------------------------------------


class _ConsoleReporter(Reporter):
    def __init__(self, progress: TransferProgress) -> None:
        self.bar = progress

    def progress_for(self, key: str, label: str, size: int | None) -> Progress:
        self.bar.start(key, label, size)
        return lambda n, hole=False: self.bar.advance(key, n, hole)

    def done(self, key: str) -> None:
        self.bar.finish(key)

    def all_started(self) -> None:
        self.bar.all_started()


def _remote_sources(args: argparse.Namespace, texts: list[str]) -> tuple[str, list[str]]:
    remotes = [_remote_or_fail(args, text, "a remote path — write HOST:PATH")
               for text in texts]
    if len({(r.host, r.port) for r in remotes}) > 1:
        raise UsageError("all sources must be on the same server")
    return remotes[0].host, [r.path for r in remotes]


def _remote_or_fail(args: argparse.Namespace, text: str, wanted: str) -> Remote:
    """The remote spec ``text``; a port inside it replaces -P for this command."""
    remote = parse_remote(text)
    if remote is None:
        raise UsageError(f"'{text}' is not {wanted}")
    if remote.port is not None:
        args.port = remote.port
    return remote


def run_send(args: argparse.Namespace, console: Console) -> int:
    remote = _remote_or_fail(args, args.dest, "a remote destination — write HOST:DEST "
                             "(:DEST for localhost)")
    if STDIO in args.sources:
        return _send_stdin(args, console, remote.host, remote.path)
    for source in args.sources:
        if split_remote(source) is not None:
            raise UsageError(f"'{source}' looks remote; send copies local files "
                             "(write ./NAME for a local name with a colon)")
    host, dest = remote.host, remote.path
    sync = _sync_options(args)
    return _copy(args, console, host, "sent", lambda client, reporter: send_paths(
        client, args.sources, dest, recursive=args.recursive,
        keep_mtime=args.preserve or args.update, reporter=reporter, resume=args.resume,
        sync=sync))


def run_get(args: argparse.Namespace, console: Console) -> int:
    host, sources = _remote_sources(args, args.sources)
    if args.dest == STDIO:
        return _get_stdout(args, console, host, sources)
    sync = _sync_options(args)
    return _copy(args, console, host, "received", lambda client, reporter: get_paths(
        client, sources, args.dest, recursive=args.recursive,
        keep_mtime=args.preserve or args.update, reporter=reporter, resume=args.resume,
        sync=sync))


# ---- pipes: send - / get ... - ---------------------------------------------------------

STDIO = "-"  # as a source: standard input; as a destination: standard output
PIPE_CHUNK = 1 << 20


def _pipe_checks(args: argparse.Namespace, what: str) -> None:
    if args.recursive:
        raise UsageError(f"{what} carries one file: drop -r")
    if args.resume:
        raise UsageError(f"{what} cannot resume: a pipe cannot be read again")


class _NoStream(Exception):
    """The server does not take streamed PUTs (an older one): spool, then send."""


def _send_stdin(args: argparse.Namespace, console: Console, host: str, dest: str) -> int:
    """``send - HOST:NAME``: standard input sent as it is read, as a streamed PUT
    (docs/protocol.md §5.2), digest-verified and atomic.  A server without STREAM gets
    it spooled into a private file first and sent as an ordinary PUT, on a new
    connection so that a slow pipe never holds one idle."""
    _pipe_checks(args, "send -")
    if args.sources != [STDIO]:
        raise UsageError("send - reads one stream: give '-' as the only source "
                         "(./- names a local file called '-')")
    if not dest or dest.endswith("/"):
        raise UsageError("send - needs the name of the file to create: HOST:NAME")
    import sys  # noqa: PLC0415 - pipes only

    fd = sys.stdin.fileno()
    try:
        os.set_blocking(fd, True)  # an inherited O_NONBLOCK would fail the reads
    except OSError as exc:
        raise storage_error(exc, "standard input") from exc

    async def streamed(client: FerryClient, reporter: Reporter) -> list[Outcome]:
        if not client.can_stream:
            raise _NoStream
        return await send_stream_as(client, fd, "standard input", dest, reporter=reporter)

    try:
        return _copy(args, console, host, "sent", streamed)
    except _NoStream:
        return _send_spooled(args, console, host, dest)


def _send_spooled(args: argparse.Namespace, console: Console, host: str, dest: str) -> int:
    """``send -`` to a server without STREAM: standard input read to its end into a
    private file, which is then sent."""
    import shutil  # noqa: PLC0415 - pipes only
    import sys  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    if args.verbose:
        console.notice("the server does not take streams; reading standard input to its "
                       "end first")
    with tempfile.TemporaryDirectory(prefix="sockferry-stdin-") as spool_dir:  # mode 0700
        spool = os.path.join(spool_dir, "stdin")
        try:
            with open(spool, "wb") as out:
                shutil.copyfileobj(sys.stdin.buffer, out, PIPE_CHUNK)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(spool, 0o666 & ~umask)  # what `cat > NAME` would make
        except OSError as exc:
            raise storage_error(exc, spool) from exc
        return _copy(args, console, host, "sent", lambda client, reporter: send_file_as(
            client, spool, "standard input", dest, reporter=reporter))


def _get_stdout(args: argparse.Namespace, console: Console, host: str,
                sources: list[str]) -> int:
    """``get HOST:NAME -``: the file is received and verified as any other, then copied
    to standard output — no byte that failed its digest check ever reaches the pipe."""
    _pipe_checks(args, "get ... -")
    if len(sources) != 1:
        raise UsageError("get ... - writes one file to standard output: give one source")
    import sys  # noqa: PLC0415 - pipes only
    import tempfile  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="sockferry-stdout-") as spool_dir:
        spool = os.path.join(spool_dir, "file")
        async def received(client: FerryClient, reporter: Reporter) -> list[Outcome]:
            outcomes = await get_paths(client, sources, spool, recursive=False,
                                       keep_mtime=False, reporter=reporter)
            return [Outcome(o.source, "standard output", o.size, o.error, o.is_directory,
                            o.skipped) for o in outcomes]

        code = _copy(args, console, host, "received", received, results_on_stdout=False)
        if code != ExitCode.OK:
            return code
        sys.stdout.flush()
        fd = sys.stdout.fileno()
        try:
            os.set_blocking(fd, True)  # an inherited O_NONBLOCK would split writes
            with open(spool, "rb") as spooled:
                while chunk := spooled.read(PIPE_CHUNK):
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view):]
        except BrokenPipeError:
            # The reader left (`| head`): not an error to report, but not everything
            # was delivered either.  Point stdout at /dev/null so exit does not retry.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
            return ExitCode.STORAGE
        except OSError as exc:
            raise storage_error(exc, "standard output") from exc
    return ExitCode.OK


def _copy(args: argparse.Namespace, console: Console, host: str, verb: str,
          operation: Callable[[FerryClient, Reporter], Any], *,
          results_on_stdout: bool = True) -> int:
    from sockferry.ferry.tokens import client_token_and_source  # noqa: PLC0415 - not for --help

    token, source = client_token_and_source(args.token_file)
    address = _server_address(args, host)
    started = time.monotonic()

    async def go() -> list[Outcome]:
        async with _connected(args, address, token) as client:
            with console.progress() as progress:
                result: list[Outcome] = await operation(client, _ConsoleReporter(progress))
                return result

    with _auth_hint(source):
        outcomes = run_async(go())
    return _report(console, args, outcomes, verb, time.monotonic() - started,
                   results_on_stdout)


@contextlib.contextmanager
def _auth_hint(source: str) -> Iterator[None]:
    """A refused token: say which one this client used and what to check."""
    from sockferry.ferry.tokens import auth_failed_hint  # noqa: PLC0415 - not for --help

    try:
        yield
    except AuthenticationFailed as exc:
        raise AuthenticationFailed(auth_failed_hint(source)) from exc


def _report(console: Console, args: argparse.Namespace, outcomes: list[Outcome], verb: str,
            elapsed: float, results_on_stdout: bool = True) -> int:
    """Errors, notices and the summary on stderr; with -v a line per file on stdout
    (stderr when stdout carries the file itself)."""
    say = console.print if results_on_stdout else console.notice
    code = ExitCode.OK
    files = total = kept = deleted = 0
    told = False
    for outcome in outcomes:
        if outcome.unchanged or outcome.deleted or outcome.dry_run:
            line = _sync_line(outcome, args.verbose)
            if line:
                say(line)
            kept += outcome.unchanged
            deleted += outcome.deleted
            if outcome.dry_run and not outcome.deleted:
                files, total = files + 1, total + outcome.size
        elif outcome.error is None:
            if not outcome.is_directory:
                files += 1
                total += outcome.size
                if args.verbose:
                    say(f"{verb} {outcome.source} -> {outcome.target} "
                                  f"({format_bytes(outcome.size)}{_resumed(outcome)}, "
                                  "digest verified)")
                    if outcome.resume_note and outcome.resume_note != NO_RESUME:
                        console.notice(outcome.resume_note)
                if outcome.resume_note == NO_RESUME and not told:
                    console.notice(NO_RESUME)  # once, and even without -v
                    told = True
        elif outcome.skipped:
            console.notice(str(outcome.error))
        else:
            console.error(str(outcome.error))
            if code == ExitCode.OK:
                code = exit_code_for(outcome.error)
    _summarize(console, getattr(args, "dry_run", False), verb, files, total,
               f"{f', {kept} unchanged' if kept else ''}"
               f"{f', {deleted} deleted' if deleted else ''}", elapsed)
    return code


def _sync_line(outcome: Outcome, verbose: bool) -> str:
    """What -n (always) or -v says of a file left alone, deleted or not copied."""
    if outcome.deleted:
        return (f"would delete {outcome.source}" if outcome.dry_run
                else f"deleted {outcome.source}" if verbose else "")
    if outcome.dry_run:
        return f"would copy {outcome.source} -> {outcome.target} " \
            f"({format_bytes(outcome.size)})"
    return ""


def _summarize(console: Console, dry_run: bool, verb: str, files: int, total: int,
               unchanged: str, elapsed: float) -> None:
    if dry_run:
        console.summary(f"dry run: would have {verb} {files} file(s), "
                        f"{format_bytes(total)}{unchanged}; nothing was copied")
    else:
        console.summary(f"{verb} {files} file(s), {format_bytes(total)}{unchanged} in "
                        f"{elapsed:.2f} s ({format_rate(total, elapsed)})")


def _resumed(outcome: Outcome) -> str:
    """``-v``: how much of the file an earlier transfer had already moved."""
    if not outcome.resumed:
        return ""
    return (f", resumed at {format_bytes(outcome.resumed)} ({outcome.resumed} bytes): "
            f"{format_bytes(outcome.size - outcome.resumed)} moved")


# ---- ls --------------------------------------------------------------------------------


def run_ls(args: argparse.Namespace, console: Console) -> int:
    remote = _remote_or_fail(args, args.target, "a remote path — write HOST:[PATH]")
    host, path = remote.host, remote.path
    from sockferry.ferry.tokens import client_token_and_source  # noqa: PLC0415 - not for --help

    token, source = client_token_and_source(args.token_file)

    async def go() -> list[Entry]:
        async with _connected(args, _server_address(args, host), token) as client:
            entries = await client.list(path, recursive=args.recursive)
            await client.finish()
            return entries

    with _auth_hint(source):
        listing = run_async(go())
    for entry in listing:
        console.print(format_entry(entry))
    return ExitCode.OK


_TYPE_BITS = {Kind.FILE: stat.S_IFREG, Kind.DIRECTORY: stat.S_IFDIR,
              Kind.SYMLINK: stat.S_IFLNK, Kind.OTHER: 0}


def format_entry(entry: Entry) -> str:
    """``ls -l``-like: mode, size in bytes, modification time (UTC), name."""
    mode = stat.filemode(_TYPE_BITS[entry.kind] | (entry.mode & 0o7777))
    if entry.kind is Kind.OTHER:
        mode = "?" + mode[1:]
    when = datetime.fromtimestamp(entry.mtime_ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M")
    suffix = "/" if entry.kind is Kind.DIRECTORY else ""
    return f"{mode} {entry.size:>12} {when} {entry.path}{suffix}"


__all__ = ["register"]
