"""SCTP messaging for asyncio programs: ``sockferry.sctp.open_endpoint`` (a one-to-many
endpoint, as lksctp's SOCK_SEQPACKET sockets are) and ``sockferry.sctp.send``.

The endpoint runs over the kernel's SCTP where it has it, else over the userspace RFC
9260 stack in UDP datagrams (RFC 6951), interoperable with usrsctp; its ``connect``,
``send``, ``receive``, ``shutdown`` and ``close`` are documented in
``sockferry.sctp.endpoint.Endpoint``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

from sockferry.addresses import HostPort
from sockferry.errors import NetworkError, PeerRefused, TransferTimeout
from sockferry.sctp.endpoint import (
    DEFAULT_UDP_PORT,
    AssociationChange,
    AssocId,
    AssocState,
    Endpoint,
    Message,
    StreamCounts,
)
from sockferry.sctp.transport import open_endpoint

__all__ = ["DEFAULT_PORT", "AssociationChange", "Endpoint", "Message", "StreamCounts",
           "open_endpoint", "send"]

DEFAULT_PORT = DEFAULT_UDP_PORT  # the SCTP port sockferry sctp-serve listens on


async def send(host: str, messages: Iterable[bytes], *, port: int = DEFAULT_PORT,
               stream: int = 0, ppid: int = 0, unordered: bool = False,
               transport: str = "auto", linger: float = 0.0,
               timeout: float = 30.0) -> list[Message]:
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
        replies: list[Message] = []
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


async def _quiet(endpoint: Endpoint, assoc_id: AssocId, replies: list[Message],
                 linger: float) -> AssociationChange | None:
    """Collect replies until none came for ``linger`` s; the end event if it ended."""
    while linger > 0:
        try:
            async with asyncio.timeout(linger):
                item = await _next_of(endpoint, assoc_id)
        except TimeoutError:
            return None
        if isinstance(item, Message):
            replies.append(item)
        elif _ends(item):
            return item
    return None


async def _next_end(endpoint: Endpoint, assoc_id: AssocId,
                    replies: list[Message]) -> AssociationChange:
    """Collect ``assoc_id``'s messages until the event that ends it."""
    while True:
        item = await _next_of(endpoint, assoc_id)
        if isinstance(item, Message):
            replies.append(item)
        elif _ends(item):
            return item


async def _next_of(endpoint: Endpoint, assoc_id: AssocId) -> Message | AssociationChange:
    while True:
        item = await endpoint.receive()
        if item.assoc_id == assoc_id:
            return item


def _ends(change: AssociationChange) -> bool:
    return change.state not in (AssocState.COMM_UP, AssocState.RESTART)
