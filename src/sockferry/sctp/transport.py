"""Choosing an SCTP backend: ``open_endpoint(transport="auto" | "kernel" | "udp")``."""

from __future__ import annotations

import socket
from collections.abc import Sequence

from sockferry.addresses import Address
from sockferry.errors import UsageError
from sockferry.sctp.config import Config
from sockferry.sctp.endpoint import TRANSPORTS, Endpoint, StreamCounts, Transport
from sockferry.sctp.kernel import KernelEndpoint
from sockferry.sctp.kernel_socket import kernel_sctp_missing, kernel_udp_port
from sockferry.sctp.udp import UdpEndpoint

__all__ = ["TRANSPORTS", "Transport", "open_endpoint"]


async def open_endpoint(transport: str = "auto", *, listen: Sequence[Address] = (),
                        udp_port: int | None = None,
                        streams: StreamCounts | None = None,
                        inherited: Sequence[socket.socket] = ()) -> Endpoint:
    """An endpoint bound to ``listen`` (or to an ephemeral port, for a client).

    ``udp_port`` asks for SCTP over UDP (RFC 6951): with ``listen`` it is the local UDP
    port (the SCTP port stays the one in the address); without, the peers' UDP port.
    The kernel backend's local UDP port is the machine's sysctl net.sctp.udp_port.
    """
    if transport not in TRANSPORTS:
        raise UsageError(f"unknown SCTP transport '{transport}' — use auto, kernel or udp")
    config = Config(streams=streams or StreamCounts())
    if inherited:  # socket activation hands over UDP sockets: SCTP over UDP in them
        if transport == "kernel":
            raise UsageError("socket activation hands over UDP sockets, which carry "
                             "--transport udp only: drop --transport kernel")
        return await UdpEndpoint.open(config=config, inherited=inherited)
    if transport == "kernel" or (transport == "auto" and _kernel_fits(udp_port, listen)):
        # Where the kernel lacks SCTP, opening the socket says so in one sentence.
        if listen:
            return await KernelEndpoint.open(listen, udp_port=udp_port, config=config)
        return await KernelEndpoint.open((), peer_udp_port=udp_port, config=config)
    if listen:
        return await UdpEndpoint.open(listen, udp_port=udp_port, config=config)
    return await UdpEndpoint.open((), peer_udp_port=udp_port, config=config)


def _kernel_fits(udp_port: int | None, listen: Sequence[Address]) -> bool:
    """``auto``: kernel SCTP where the kernel has it — and, when a UDP port is asked for,
    only if the kernel's SCTP over UDP is on (sysctl net.sctp.udp_port), on that port
    for a server."""
    if kernel_sctp_missing() is not None:
        return False
    if udp_port is None:
        return True
    return kernel_udp_port() == udp_port if listen else kernel_udp_port() != 0
