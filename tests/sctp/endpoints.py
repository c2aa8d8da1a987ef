"""Waiting on any SCTP endpoint in tests: the next event, the next messages."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from sockferry.sctp.endpoint import AssociationChange, AssocState, Endpoint, Received, UserMessage


async def next_of(endpoint: Endpoint, kind: type, timeout_s: float = 20.0) -> Received:
    async with asyncio.timeout(timeout_s):
        while True:
            item = await endpoint.receive()
            if isinstance(item, kind):
                return item


async def next_change(endpoint: Endpoint) -> AssociationChange:
    change = await next_of(endpoint, AssociationChange)
    assert isinstance(change, AssociationChange)
    return change


async def next_end(endpoint: Endpoint) -> AssociationChange:
    """The next association change that is not a COMM_UP (or RESTART): an end."""
    change = await next_change(endpoint)
    while change.state in (AssocState.COMM_UP, AssocState.RESTART):
        change = await next_change(endpoint)
    return change


async def messages(endpoint: Endpoint, count: int) -> list[UserMessage]:
    got: list[UserMessage] = []
    while len(got) < count:
        item = await next_of(endpoint, UserMessage)
        assert isinstance(item, UserMessage)
        got.append(item)
    return got


def run(body: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        await body()
    asyncio.run(main())
