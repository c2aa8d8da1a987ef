"""``sockferry sctp-serve`` and ``sockferry sctp-send``: the seed's SCTP programs, done right."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import stat
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

from sockferry.addresses import format_sockaddr, parse_address, parse_port
from sockferry.cli.console import Console
from sockferry.cli.runtime import ExitCode, run_async
from sockferry.cli.serving import ServerOptions, add_server_options
from sockferry.errors import NetworkError, PeerRefused, SockferryError, UsageError
from sockferry.logfields import fields
from sockferry.sctp.endpoint import (
    DEFAULT_UDP_PORT,
    MAX_STREAMS,
    AssociationChange,
    AssocId,
    AssocState,
    Endpoint,
    StreamCounts,
    UserMessage,
)
from sockferry.sctp.library import start_sctp_server
from sockferry.sctp.transport import TRANSPORTS, open_endpoint

association_log = logging.getLogger("sockferry.association")

DEFAULT_PORT = DEFAULT_UDP_PORT
# Longest message text printed as is; longer or binary messages print as a byte count.
MAX_SHOWN = 1000
# How long sctp-send waits, after its last message is acknowledged, for replies.
DEFAULT_LINGER_S = 0.5
# One line of standard input is one message; longer lines are refused, never truncated.
MAX_LINE = 1 << 20


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--transport", choices=TRANSPORTS, default="auto",
                        help="kernel SCTP, SCTP over UDP (RFC 6951), or auto: kernel "
                        "where the kernel has SCTP, else udp (default auto)")
    parser.add_argument("--udp-port", type=_port, metavar="N",
                        help="with the udp transport: the UDP port, when it differs from "
                        "the SCTP port (servers bind it; clients send to it)")
    parser.add_argument("--streams", type=_streams, default=10, metavar="N",
                        help="outbound streams asked for and inbound streams allowed "
                        "(1 to 65535, default 10)")


def register(sub: Any) -> None:
    serve = sub.add_parser(
        "sctp-serve", help="one-to-many SCTP message server",
        description="Accept SCTP associations from any number of clients on one "
        "endpoint and print each message with its association id, stream, ppid and "
        "peer, and every association event (COMM_UP, COMM_LOST, SHUTDOWN_COMP, "
        "RESTART, CANT_STR_ASSOC). Ctrl-C stops it cleanly.")
    serve.add_argument("--listen", action="append", metavar="ADDR",
                       help=f"address to bind, HOST:PORT or [IPv6]:PORT or :PORT; may be "
                       f"repeated (default :{DEFAULT_PORT}, all addresses)")
    serve.add_argument("--echo", action="store_true",
                       help="send every message back on its stream with its ppid")
    add_server_options(serve)
    _common(serve)
    serve.set_defaults(handler=run_serve)

    send = sub.add_parser(
        "sctp-send", help="send messages to an SCTP server",
        description="Set up an association with HOST:PORT, send each MESSAGE (or each "
        "line of standard input) as one SCTP message, print the server's replies, and "
        "shut the association down gracefully.")
    send.add_argument("address", metavar="HOST[:PORT]",
                      help=f"the server (default port {DEFAULT_PORT})")
    send.add_argument("messages", nargs="*", metavar="MESSAGE",
                      help="messages to send; none: read lines from standard input")
    send.add_argument("--stream", type=int, default=0, metavar="N",
                      help="stream to send on (default 0)")
    send.add_argument("--ppid", type=_u32, default=0, metavar="N",
                      help="payload protocol identifier (default 0)")
    send.add_argument("--unordered", action="store_true",
                      help="send unordered messages (delivered as they arrive)")
    send.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                      help="how long to wait for the association to come up (default 10)")
    send.add_argument("--linger", type=float, default=DEFAULT_LINGER_S, metavar="SECONDS",
                      help="after the last message, wait this long with no reply before "
                      f"shutting down (default {DEFAULT_LINGER_S})")
    _common(send)
    send.set_defaults(handler=run_send)


def _port(text: str) -> int:
    return parse_port(text)


def _streams(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_STREAMS:
        raise UsageError(f"'{text}' is not a stream count — use 1 to {MAX_STREAMS}")
    return int(text)


def _u32(text: str) -> int:
    if not text.isdigit() or int(text) > 0xFFFFFFFF:
        raise UsageError(f"'{text}' is not a ppid — use 0 to {0xFFFFFFFF}")
    return int(text)


def describe_message(message: UserMessage) -> str:
    try:
        text = message.data.decode()
    except UnicodeDecodeError:
        text = None
    if text is None or len(text) > MAX_SHOWN or not text.isprintable():
        body = f"<{len(message.data)} bytes>"
    else:
        body = text
    order = " unordered" if message.unordered else ""
    return (f"[assoc {message.assoc_id}] stream {message.stream} ppid {message.ppid}{order} "
            f"from {format_sockaddr(message.peer)}: {body}")


def describe_change(change: AssociationChange) -> str:
    peer = format_sockaddr(change.peer) if change.peer is not None else "?"
    text = f"[assoc {change.assoc_id}] {change.state.value} {peer}"
    if change.state in (AssocState.COMM_UP, AssocState.RESTART):
        text += f" (streams out {change.outbound_streams}, in {change.inbound_streams})"
    if change.reason:
        text += f": {change.reason}"
    return text


# ---------------------------------------------------------------------------------------
# sctp-serve


def run_serve(args: argparse.Namespace, console: Console) -> int:
    options = ServerOptions.from_args(args, socket.SOCK_DGRAM)
    if options.activated and args.listen:
        raise UsageError("with socket activation the .socket unit says where to listen: "
                         "drop --listen")
    default = [] if options.activated else [f":{DEFAULT_PORT}"]
    listen = [parse_address(a, DEFAULT_PORT) for a in args.listen or default]
    return run_async(_serve(args, listen, console, options))


async def _serve(args: argparse.Namespace, listen: list[Any], console: Console,
                 options: ServerOptions) -> int:
    def on_change(change: AssociationChange) -> None:
        console.print(describe_change(change))
        _log_change(change)

    server = await start_sctp_server(
        listen, transport=args.transport, udp_port=args.udp_port,
        streams=StreamCounts(args.streams, args.streams), inherited=options.activated,
        echo=args.echo, access=options.access, metrics=options.metrics,
        on_message=lambda message: console.print(describe_message(message)),
        on_change=on_change, notice=console.notice)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    console.notice(f"SCTP server on {', '.join(server.addresses)} — Ctrl-C to stop")
    try:
        options.after_binding()  # bound: drop to --user now
        serving = loop.create_task(server.serve_forever())  # ends if the server fails
        stopping = loop.create_task(stop.wait())
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        serving.cancel()
    finally:
        options.stopping()
        server.close()
        await server.wait_closed()  # raises what made the server fail, if anything did
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signum)
    console.notice("stopped")
    return ExitCode.OK


def _log_change(change: AssociationChange) -> None:
    """The association event of --log-format json (text logs leave it to stdout)."""
    peer = format_sockaddr(change.peer) if change.peer is not None else None
    association_log.info("%s", describe_change(change), extra=fields(
        "association", transport="sctp", peer=peer, outcome=change.state.value.lower(),
        error=change.reason or None))


# ---------------------------------------------------------------------------------------
# sctp-send


def run_send(args: argparse.Namespace, console: Console) -> int:
    address = parse_address(args.address, DEFAULT_PORT)
    if args.stream < 0 or args.stream >= args.streams:
        raise UsageError(f"--stream {args.stream} is not among the {args.streams} outbound "
                         f"streams (0 to {args.streams - 1}) — raise --streams")
    return run_async(_send(args, address, console))


async def _send(args: argparse.Namespace, address: Any, console: Console) -> int:
    endpoint = await open_endpoint(args.transport, udp_port=args.udp_port,
                                   streams=StreamCounts(args.streams, args.streams))
    try:
        assoc_id = await endpoint.connect(address, timeout_s=args.timeout)
        try:
            outbound, inbound = endpoint.streams(assoc_id)
        except NetworkError:  # aborted at once (a server refusing us): say why
            reason = await _why_it_ended(endpoint, assoc_id, args.timeout)
            if reason is None:
                raise
            raise PeerRefused(f"the association with {address} ended: {reason}") from None
        console.notice(f"association {assoc_id} with {address} is up (streams out "
                       f"{outbound}, in {inbound})")
        replies = _Replies(endpoint, assoc_id, console)
        async with asyncio.TaskGroup() as group:
            reader = group.create_task(replies.run())
            async for data in _messages(args.messages):
                try:
                    await endpoint.send(data, to=assoc_id, stream=args.stream,
                                        ppid=args.ppid, unordered=args.unordered)
                except NetworkError:
                    # Aborted under us (a server refusing us, say): report its reason.
                    if not await replies.ended_within(args.timeout):
                        raise
                    break
            await replies.settle(args.linger)
            if replies.lost is None:
                await endpoint.shutdown(assoc_id)
            reader.cancel()
        if replies.lost is not None:
            raise PeerRefused(f"the association with {address} ended: {replies.lost}")
        console.notice(f"association {assoc_id} shut down")
        return ExitCode.OK
    finally:
        await endpoint.close()


async def _why_it_ended(endpoint: Endpoint, assoc_id: AssocId, timeout_s: float
                        ) -> str | None:
    """The reason of the event that ended ``assoc_id``, from the endpoint's queue."""
    with contextlib.suppress(TimeoutError, SockferryError):
        async with asyncio.timeout(timeout_s):
            while True:
                item = await endpoint.receive()
                if (isinstance(item, AssociationChange) and item.assoc_id == assoc_id
                        and item.state not in (AssocState.COMM_UP, AssocState.RESTART)):
                    return item.reason or item.state.value
    return None


class _Replies:
    """Prints what the server sends back and notices when the association ends."""

    def __init__(self, endpoint: Endpoint, assoc_id: AssocId, console: Console) -> None:
        self._endpoint = endpoint
        self._assoc_id = assoc_id
        self._console = console
        self._activity = asyncio.Event()
        self.lost: str | None = None
        self._ended = asyncio.Event()

    async def run(self) -> None:
        while True:
            item = await self._endpoint.receive()
            if isinstance(item, UserMessage):
                self._console.print(describe_message(item))
                self._activity.set()
            elif item.state in (AssocState.COMM_LOST, AssocState.CANT_STR_ASSOC):
                self.lost = item.reason or item.state.value
                self._ended.set()
                self._activity.set()
            elif item.state == AssocState.SHUTDOWN_COMP:
                self._ended.set()

    async def ended_within(self, timeout_s: float) -> bool:
        """Wait for the event that ended the association; True once it is lost."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._ended.wait()
        return self.lost is not None

    async def settle(self, linger_s: float) -> None:
        """Wait until no reply has come for ``linger_s`` (or the association ended)."""
        while not self._ended.is_set():
            self._activity.clear()
            try:
                async with asyncio.timeout(linger_s):
                    await self._activity.wait()
            except TimeoutError:
                return


async def _messages(arguments: list[str]) -> AsyncIterator[bytes]:
    """The arguments, or standard input line by line, read without blocking the loop
    (no gets(): a line is refused above MAX_LINE bytes)."""
    if arguments:
        for text in arguments:
            yield text.encode()
        return
    if stat.S_ISREG(os.fstat(sys.stdin.fileno()).st_mode):
        lines: AsyncIterator[bytes] | Iterator[bytes] = iter(sys.stdin.buffer.readline, b"")
    else:
        lines = await _pipe_lines()
    async for line in _aiter(lines):
        if len(line) > MAX_LINE:
            raise UsageError(f"a line of standard input is longer than {MAX_LINE} bytes")
        data = line.rstrip(b"\r\n")
        if data:
            yield data


async def _pipe_lines() -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_LINE + 1)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def lines() -> AsyncIterator[bytes]:
        while True:
            try:
                line = await reader.readline()
            except ValueError:  # asyncio's LimitOverrunError arrives as ValueError
                raise UsageError(f"a line of standard input is longer than {MAX_LINE} "
                                 "bytes") from None
            if not line:
                return
            yield line

    return lines()


async def _aiter(lines: AsyncIterator[bytes] | Iterator[bytes]) -> AsyncIterator[bytes]:
    if isinstance(lines, Iterator):
        for line in lines:
            yield line
    else:
        async for line in lines:
            yield line
