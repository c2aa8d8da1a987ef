"""SCTP messaging for asyncio programs: ``sockferry.sctp.open_endpoint`` (a one-to-many
endpoint, as lksctp's SOCK_SEQPACKET sockets are), ``send`` and ``serve`` (what
``sockferry sctp-send`` and ``sctp-serve`` run).

The endpoint runs over the kernel's SCTP where it has it, else over the userspace RFC
9260 stack in UDP datagrams (RFC 6951), interoperable with usrsctp; its ``connect``,
``send``, ``receive``, ``shutdown`` and ``close`` are documented in
``sockferry.sctp.endpoint.Endpoint``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Iterable, Sequence

from sockferry.access import AccessRules, RateLimitedLog
from sockferry.addresses import Address, HostPort, format_sockaddr, parse_address
from sockferry.errors import NetworkError, PeerRefused, SockferryError, TransferTimeout
from sockferry.library import Server
from sockferry.metrics import OFF, Metrics
from sockferry.sctp.endpoint import (
    DEFAULT_UDP_PORT,
    AssociationChange,
    AssocId,
    AssocState,
    Endpoint,
    StreamCounts,
    UserMessage,
)
from sockferry.sctp.transport import open_endpoint

__all__ = ["DEFAULT_PORT", "AssociationChange", "Endpoint", "StreamCounts", "UserMessage",
           "open_endpoint", "send", "serve", "start_sctp_server"]

log = logging.getLogger("sockferry.sctp")

DEFAULT_PORT = DEFAULT_UDP_PORT  # the SCTP port sockferry sctp-serve listens on


async def send(host: str, messages: Iterable[bytes], *, port: int = DEFAULT_PORT,
               stream: int = 0, ppid: int = 0, unordered: bool = False,
               transport: str = "auto", linger: float = 0.0,
               timeout: float = 30.0) -> list[UserMessage]:
    """Open an association with ``host``:``port``, send each of ``messages`` on
    ``stream`` (with ``ppid``; ``unordered``: delivered as soon as they arrive), wait
    until the peer has sent nothing for ``linger`` seconds (for replies: a peer may not
    send once the association is shutting down), shut it down gracefully (every message
    acknowledged) and return what the peer sent.  An association the peer aborts raises
    PeerRefused with its reason; one that does not come up or end within ``timeout``
    seconds, TransferTimeout."""
    endpoint = await open_endpoint(transport,
                                   streams=StreamCounts(max(stream + 1, 10), 10))
    try:
        assoc_id = await endpoint.connect(HostPort(host, port), timeout_s=timeout)
        replies: list[UserMessage] = []
        ended: AssociationChange | None = None
        with contextlib.suppress(NetworkError):  # aborted under us: its reason below
            for data in messages:
                await endpoint.send(data, to=assoc_id, stream=stream, ppid=ppid,
                                    unordered=unordered)
            ended = await _quiet(endpoint, assoc_id, replies, linger)
            if ended is None:
                await endpoint.shutdown(assoc_id)
        try:
            async with asyncio.timeout(timeout):
                ended = ended or await _next_end(endpoint, assoc_id, replies)
        except TimeoutError:
            raise TransferTimeout(f"the association with {host}:{port} did not end within "
                                  f"{timeout:g} s") from None
        if ended.state is not AssocState.SHUTDOWN_COMP:
            raise PeerRefused(f"the association with {host}:{port} ended: "
                              f"{ended.reason or ended.state.value}")
        return replies
    finally:
        await endpoint.close()


async def _quiet(endpoint: Endpoint, assoc_id: AssocId, replies: list[UserMessage],
                 linger: float) -> AssociationChange | None:
    """Collect replies until none came for ``linger`` s; the end event if it ended."""
    while linger > 0:
        try:
            async with asyncio.timeout(linger):
                item = await _next_of(endpoint, assoc_id)
        except TimeoutError:
            return None
        if isinstance(item, UserMessage):
            replies.append(item)
        elif _ends(item):
            return item
    return None


async def _next_end(endpoint: Endpoint, assoc_id: AssocId,
                    replies: list[UserMessage]) -> AssociationChange:
    """Collect ``assoc_id``'s messages until the event that ends it."""
    while True:
        item = await _next_of(endpoint, assoc_id)
        if isinstance(item, UserMessage):
            replies.append(item)
        elif _ends(item):
            return item


async def _next_of(endpoint: Endpoint, assoc_id: AssocId) -> UserMessage | AssociationChange:
    while True:
        item = await endpoint.receive()
        if item.assoc_id == assoc_id:
            return item


def _ends(change: AssociationChange) -> bool:
    return change.state not in (AssocState.COMM_UP, AssocState.RESTART)


async def start_sctp_server(listen: Sequence[Address], *, transport: str = "auto",
                            udp_port: int | None = None, streams: StreamCounts | None = None,
                            inherited: Sequence[socket.socket] = (), echo: bool = False,
                            access: AccessRules | None = None, metrics: Metrics = OFF,
                            on_message: Callable[[UserMessage], None] | None = None,
                            on_change: Callable[[AssociationChange], None] | None = None,
                            notice: Callable[[str], None] = log.warning) -> Server:
    """A one-to-many SCTP server (what ``sockferry sctp-serve`` runs): every message is
    given to ``on_message`` and every association event to ``on_change``; with ``echo``
    each message goes back to its sender on its stream (a sender that stops reading its
    echoes holds up only itself: past ECHO_BACKLOG waiting ones they are dropped);
    associations from peers ``access`` refuses are aborted as soon as they are up.
    ``notice`` is told what it should know (a refused peer, a dropped echo)."""
    endpoint = await open_endpoint(transport, listen=listen, udp_port=udp_port,
                                   streams=streams or StreamCounts(), inherited=inherited)
    worker = asyncio.get_running_loop().create_task(_serve_loop(
        endpoint, echo, access or AccessRules(), metrics, on_message or _ignore,
        on_change or _ignore, notice))

    async def stop() -> None:
        worker.cancel()
        await asyncio.wait([worker])  # what it died of, if anything, goes to fail()
        await endpoint.close()

    server = Server(stop, [format_sockaddr(a) for a in endpoint.local_addresses])

    def ended(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            server.fail(exc)

    worker.add_done_callback(ended)
    return server


async def serve(host: str = "", port: int = DEFAULT_PORT, *,
                listen: list[str] | None = None, transport: str = "auto",
                echo: bool = False,
                on_message: Callable[[UserMessage], None] | None = None) -> Server:
    """Serve SCTP on ``host``:``port`` (all addresses by default) or on every
    ``listen`` address: each message goes to ``on_message`` and, with ``echo``, back to
    its sender — ``start_sctp_server`` takes every option of ``sctp-serve``."""
    addresses = [parse_address(a, DEFAULT_PORT) for a in listen] if listen \
        else [HostPort(host, port)]
    return await start_sctp_server(addresses, transport=transport, echo=echo,
                                   on_message=on_message)


def _ignore(_item: object) -> None:
    pass


# One echo queue per association holds at most this many messages.
ECHO_BACKLOG = 64


async def _serve_loop(endpoint: Endpoint, echo: bool, access: AccessRules, metrics: Metrics,
                      on_message: Callable[[UserMessage], None],
                      on_change: Callable[[AssociationChange], None],
                      notice: Callable[[str], None]) -> None:
    echoes = _Echoes(endpoint, notice)
    gate = _Gate(endpoint, access, notice)
    up: set[AssocId] = set()  # associations counted open in the metrics
    try:
        while True:
            item = await endpoint.receive()
            if not gate.admits(item):
                continue
            if isinstance(item, AssociationChange):
                on_change(item)
                if item.state in (AssocState.COMM_UP, AssocState.RESTART):
                    if item.assoc_id not in up:
                        up.add(item.assoc_id)
                        metrics.connection_opened("sctp")
                    continue
                echoes.forget(item.assoc_id)
                if item.assoc_id in up:
                    up.discard(item.assoc_id)
                    metrics.connection_closed("sctp", item.state.value.lower(), 0, 0)
                continue
            on_message(item)
            metrics.transferred("sctp", "upload", len(item.data))
            if echo:
                metrics.transferred("sctp", "download", len(item.data))
                echoes.queue(item)
    finally:
        echoes.close()


class _Gate:
    """--allow/--deny: an association from a refused peer is aborted as soon as it is
    up (the ABORT says why), and nothing of it is shown or echoed."""

    def __init__(self, endpoint: Endpoint, access: AccessRules,
                 notice: Callable[[str], None]) -> None:
        self._endpoint = endpoint
        self._access = access
        self._notice = notice
        self._refused: set[AssocId] = set()
        self._log = RateLimitedLog()

    def admits(self, item: UserMessage | AssociationChange) -> bool:
        if not self._access.restricts:
            return True
        if isinstance(item, UserMessage):
            return item.assoc_id not in self._refused
        if item.assoc_id in self._refused:
            if item.state not in (AssocState.COMM_UP, AssocState.RESTART):
                self._refused.discard(item.assoc_id)  # it has ended: the id may return
            return False
        if item.state not in (AssocState.COMM_UP, AssocState.RESTART) or \
                self._access.admits_peer(item.peer):
            return True
        self._refused.add(item.assoc_id)
        self._endpoint.abort(item.assoc_id, "not allowed by the server's --allow/--deny")
        show, left_out = self._log.allow()
        if left_out:
            self._notice(f"{left_out} more refused associations were not shown")
        if show:
            self._notice(f"[assoc {item.assoc_id}] refused "
                                 f"{format_sockaddr(item.peer)}: not allowed by "
                                 "--allow/--deny")
        return False


class _Echoes:
    """One echo queue per association, so a client that stops reading its echoes
    holds up only itself: past ECHO_BACKLOG waiting messages its echoes are dropped."""

    def __init__(self, endpoint: Endpoint, notice: Callable[[str], None]) -> None:
        self._endpoint = endpoint
        self._notice = notice
        self._queues: dict[AssocId, asyncio.Queue[UserMessage]] = {}
        self._tasks: dict[AssocId, asyncio.Task[None]] = {}

    def queue(self, message: UserMessage) -> None:
        assoc_id = message.assoc_id
        if assoc_id not in self._queues:
            self._queues[assoc_id] = asyncio.Queue(ECHO_BACKLOG)
            self._tasks[assoc_id] = asyncio.create_task(self._run(assoc_id))
        try:
            self._queues[assoc_id].put_nowait(message)
        except asyncio.QueueFull:
            self._notice(f"[assoc {assoc_id}] echo dropped: the client is not "
                                 "reading its replies")

    async def _run(self, assoc_id: AssocId) -> None:
        queue = self._queues[assoc_id]
        while True:
            item = await queue.get()
            try:
                await self._endpoint.send(item.data, to=assoc_id, stream=item.stream,
                                          ppid=item.ppid, unordered=item.unordered)
            except SockferryError as exc:  # that client went away: the others go on
                self._notice(f"[assoc {assoc_id}] echo not sent: {exc}")
                return

    def forget(self, assoc_id: AssocId) -> None:
        self._queues.pop(assoc_id, None)
        task = self._tasks.pop(assoc_id, None)
        if task is not None:
            task.cancel()

    def close(self) -> None:
        for assoc_id in list(self._tasks):
            self.forget(assoc_id)


