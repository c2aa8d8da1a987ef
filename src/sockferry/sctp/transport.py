"""Choosing an SCTP backend: ``open_endpoint(transport="auto" | "kernel" | "udp")``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from sockferry.errors import NotAvailable, UsageError
from sockferry.sctp.association import Config
from sockferry.sctp.endpoint import Endpoint, StreamCounts
from sockferry.sctp.udp import UdpEndpoint
from sockferry.sockets import Address

Transport = Literal["auto", "kernel", "udp"]
TRANSPORTS: tuple[Transport, ...] = ("auto", "kernel", "udp")


async def open_endpoint(transport: str = "auto", *, listen: Sequence[Address] = (),
                        udp_port: int | None = None,
                        streams: StreamCounts | None = None) -> Endpoint:
    """An endpoint bound to ``listen`` (or to an ephemeral port, for a client).

    ``udp_port`` concerns the udp transport only: with ``listen`` it is the local UDP
    port (the SCTP port stays the one in the address); without, the peers' UDP port.
    """
    if transport not in TRANSPORTS:
        raise UsageError(f"unknown SCTP transport '{transport}' — use auto, kernel or udp")
    if transport == "kernel":
        raise NotAvailable("the kernel SCTP backend is not available in this build of "
                           "sockferry — use --transport udp (SCTP over UDP)")
    config = Config(streams=streams or StreamCounts())
    if listen:
        return await UdpEndpoint.open(listen, udp_port=udp_port, config=config)
    return await UdpEndpoint.open((), peer_udp_port=udp_port, config=config)
