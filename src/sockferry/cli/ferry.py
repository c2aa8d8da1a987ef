"""``serve``, ``send``, ``get`` and ``ls``: their arguments and options (the commands
run in ``cli/ferry_serve.py`` and ``cli/ferry_client.py``)."""

from __future__ import annotations

import argparse
import socket
from typing import TYPE_CHECKING, Any

from sockferry.addresses import parse_port
from sockferry.cli.ferry_client import run_get, run_ls, run_send
from sockferry.cli.serving import add_root_or_store, add_server_options
from sockferry.ferry import DEFAULT_PORT
from sockferry.sctp import TRANSPORTS
from sockferry.storage.durability import Durability
from sockferry.storage.names import DEFAULT_UMASK

if TYPE_CHECKING:
    from sockferry.admission import Startups
    from sockferry.cli.console import Console


def _run_serve(args: argparse.Namespace, console: Console) -> int:
    # Imported when serving only: a client's start-up does not load the server's modules.
    from sockferry.cli.ferry_serve import run_serve  # noqa: PLC0415

    return run_serve(args, console)


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


def _register_serve(sub: Any) -> None:
    parser = sub.add_parser(
        "serve", help="serve a directory to sockferry clients",
        description="Serve ROOT to sockferry clients. Client paths are confined to ROOT; "
        "files are written under a temporary name, checked against the sender's digest, "
        "fsynced and renamed. Stops on SIGINT/SIGTERM after a grace period.")
    add_root_or_store(parser, store_note="symbolic links are not kept there")
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
    parser.set_defaults(handler=_run_serve)


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
    _retry_option(parser)
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
    _retry_option(parser)
    parser.set_defaults(handler=run_get)


def _retry_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--retry", type=_retries, default=0, metavar="N",
                        help="when the connection is lost, refused or goes silent, connect "
                        "again up to N times (waiting 1, 2, 4 ... s, at most 30) and go on "
                        "where the copy stopped, as with --resume (implied): the file cut "
                        "off continues from what its receiver kept, files the server had "
                        "confirmed are left alone, and others that arrived whole are "
                        "checked by digest and left alone (default 0: fail at once)")


def _retries(text: str) -> int:
    from sockferry.ferry.retrying import MAX_RETRIES  # noqa: PLC0415 - tiny, but not for --help

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of retries") from None
    if not 0 <= value <= MAX_RETRIES:
        raise argparse.ArgumentTypeError(f"'{text}' is not between 0 and {MAX_RETRIES}")
    return value


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


__all__ = ["register"]
