"""Options every server shares: what to serve, who may connect, and whom to run as
once bound."""

from __future__ import annotations

import argparse
import logging
import socket
from typing import TYPE_CHECKING

from sockferry import systemd
from sockferry.errors import UsageError
from sockferry.metrics import OFF, Metrics
from sockferry.records import record

if TYPE_CHECKING:  # loaded by servers only: a client command's start-up skips them
    from sockferry.access import AccessRules
    from sockferry.privileges import Identity

log = logging.getLogger("sockferry")
METRICS_PORT = 9469  # when --metrics gives a host only


def add_root_or_store(parser: argparse.ArgumentParser, *, store_note: str) -> None:
    """ROOT, or --store URL (``what_to_serve`` checks that one of the two is given);
    ``store_note``: what serving a bucket means for this server."""
    parser.add_argument("root", metavar="ROOT", nargs="?",
                        help="directory to serve (or give --store)")
    parser.add_argument("--store", metavar="URL",
                        help="serve an S3 bucket instead of a directory: "
                        "s3://BUCKET[/PREFIX][?endpoint=URL&region=REGION&profile=NAME]; "
                        "keys from the AWS environment variables or shared credentials "
                        f"file; {store_note}")


def what_to_serve(args: argparse.Namespace) -> str:
    """ROOT, or the --store URL: one of the two."""
    # Here, not at the top: a client command or --help loads no storage code.
    from sockferry.storage.stores import is_store_url  # noqa: PLC0415

    if args.store is not None and args.root is not None:
        raise UsageError("give ROOT or --store, not both")
    if args.store is not None:
        if not is_store_url(args.store):
            raise UsageError(f"--store '{args.store}' is not an S3 location; write "
                             "s3://BUCKET[/PREFIX][?endpoint=URL] (a directory goes as ROOT)")
        return str(args.store)
    if args.root is None:
        raise UsageError("give the directory to serve (ROOT) or an S3 bucket (--store URL)")
    return str(args.root)


def add_server_options(parser: argparse.ArgumentParser, *, unix: bool = False) -> None:
    unix_note = " Not applied to unix: listeners (they have no peer address)." if unix else ""
    parser.add_argument("--allow", action="append", metavar="CIDR",
                        help="serve only peers in this network (192.0.2.0/24, "
                        "2001:db8::/32 or one address); repeatable. IPv4 peers of a "
                        "dual-stack socket match IPv4 networks. Default: everyone."
                        + unix_note)
    parser.add_argument("--deny", action="append", metavar="CIDR",
                        help="never serve peers in this network, even if --allow "
                        "includes them (deny wins); repeatable")
    parser.add_argument("--log-format", choices=("text", "json"), default="text",
                        help="text lines (the default) or one JSON object per line with "
                        "a stable schema: one event per connection, transfer and "
                        "association (see the README)")
    parser.add_argument("--metrics", metavar="ADDR",
                        help="serve Prometheus metrics over HTTP on HOST[:PORT] (port 9469 "
                        "unless given; path /metrics); off by default. Anyone who can "
                        "reach ADDR can read them: keep it on loopback or a private network")
    parser.add_argument("--user", metavar="NAME",
                        help="started as root: become this user (name or uid) right "
                        "after binding the listeners and opening ROOT, so a port below "
                        "1024 needs no root afterwards. ROOT must be readable (and "
                        "writable, for uploads) by that user")
    parser.add_argument("--group", metavar="NAME",
                        help="with --user: the group to become (default: the user's "
                        "primary group); supplementary groups are dropped")


@record
class ServerOptions:
    access: AccessRules
    identity: Identity | None
    activated: tuple[socket.socket, ...]  # from socket activation, of the server's kind
    metrics: Metrics  # metrics.OFF without --metrics

    @classmethod
    def from_args(cls, args: argparse.Namespace, kind: socket.SocketKind) -> ServerOptions:
        """Everything checked before anything is bound; the sockets systemd handed over
        (``kind``: what the server listens with)."""
        from sockferry import privileges  # noqa: PLC0415
        from sockferry.access import AccessRules  # noqa: PLC0415

        return cls(AccessRules.parse(args.allow, args.deny),
                   privileges.resolve(args.user, args.group),
                   tuple(systemd.inherited_sockets(kind, f"sockferry {args.command}")),
                   _metrics(args.metrics))

    def after_binding(self) -> None:
        """Log the access rules; drop to --user, or warn once that we still are root."""
        from sockferry import privileges  # noqa: PLC0415

        if self.access.restricts:
            log.info("access: %s", self.access.describe())
        if self.identity is not None:
            privileges.drop(self.identity)
            log.info("dropped privileges: now %s; root cannot be regained",
                     self.identity.describe())
        elif privileges.running_as_root():
            log.warning(privileges.ROOT_WARNING)
        systemd.notify("READY=1")  # with Type=notify: started units wait for this

    def stopping(self) -> None:
        systemd.notify("STOPPING=1")
        self.metrics.close()


def _metrics(address: str | None) -> Metrics:
    """--metrics: the registry, served from now on (before privileges are dropped, so a
    port below 1024 works too)."""
    if address is None:
        return OFF
    from sockferry.addresses import parse_address  # noqa: PLC0415

    metrics = Metrics()
    where = metrics.serve(parse_address(address, METRICS_PORT))
    log.info("metrics: http://%s/metrics", where)
    return metrics

