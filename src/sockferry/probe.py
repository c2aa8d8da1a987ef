"""``sockferry probe``: what the resolver returns and which addresses answer.

The seeds' client flow made visible: getaddrinfo, a non-blocking connect per address
with a deadline, getsockname/getpeername, and getnameinfo for the reverse names.
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass

from sockferry.addresses import Address, UnixPath, format_sockaddr
from sockferry.errors import NetworkError
from sockferry.sockets import Resolved, connect, connect_one, network_error, resolve, reverse_name


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """The outcome of connecting to one resolved address."""

    target: str
    family: str
    connected: bool
    connect_ms: float
    local: str = ""
    peer: str = ""
    peer_name: str | None = None
    error: str = ""


_FAMILY_NAMES = {int(socket.AF_INET): "IPv4", int(socket.AF_INET6): "IPv6",
                 int(socket.AF_UNIX): "unix"}


def family_name(family: int) -> str:
    return _FAMILY_NAMES.get(int(family), str(family))


async def probe(address: Address, timeout_s: float, *, reverse: bool = True,
                ) -> tuple[list[Resolved], list[ProbeResult]]:
    """Resolve ``address``, then connect to every result in turn (never stopping early)."""
    if isinstance(address, UnixPath):
        return [], [await _probe_unix(address, timeout_s)]
    targets = await resolve(address)
    results = [await _probe_one(target, timeout_s, reverse) for target in targets]
    return targets, results


async def _probe_one(target: Resolved, timeout_s: float, reverse: bool) -> ProbeResult:
    started = time.perf_counter()
    try:
        sock = await connect_one(target, timeout_s)
    except (OSError, TimeoutError) as exc:
        elapsed = (time.perf_counter() - started) * 1000
        return ProbeResult(str(target), family_name(target.family), False, elapsed,
                           error=str(network_error(exc, target, "connect")))
    elapsed = (time.perf_counter() - started) * 1000
    with sock:
        local, peer = sock.getsockname(), sock.getpeername()
    name = await reverse_name(peer) if reverse else None
    return ProbeResult(str(target), family_name(target.family), True, elapsed,
                       format_sockaddr(local), format_sockaddr(peer), name)


async def _probe_unix(address: UnixPath, timeout_s: float) -> ProbeResult:
    started = time.perf_counter()
    try:
        sock = await connect(address, timeout_s)
    except NetworkError as exc:
        return ProbeResult(str(address), "unix", False,
                           (time.perf_counter() - started) * 1000, error=str(exc))
    elapsed = (time.perf_counter() - started) * 1000
    with sock:
        local, peer = sock.getsockname(), sock.getpeername()
    await asyncio.sleep(0)
    return ProbeResult(str(address), "unix", True, elapsed, format_sockaddr(local),
                       format_sockaddr(peer))
