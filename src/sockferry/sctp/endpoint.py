"""The SCTP one-to-many endpoint API, shared by every backend.

A one-to-many endpoint is the seed's SOCK_SEQPACKET socket: one socket, no accept(),
many associations told apart by their id.  Two backends implement it: the userspace
stack carried in UDP (RFC 9260 over RFC 6951) and, where the kernel has it, Linux SCTP.
Both deliver the same ``UserMessage`` and ``AssociationChange`` objects (RFC 6458 §6.1.1
names the association states).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import NewType, Protocol

from sockferry.addresses import Address, SockAddr
from sockferry.sctp import TRANSPORTS, Transport

__all__ = ["TRANSPORTS", "Transport"]  # re-exported: the backend names, with the API

AssocId = NewType("AssocId", int)

# RFC 9260 §5.1: stream counts travel in 16-bit fields; 0 is not allowed.
MAX_STREAMS = 65535
DEFAULT_STREAMS = 10
DEFAULT_UDP_PORT = 9899  # RFC 6951 §5.1: the IANA-registered SCTP-over-UDP port


class AssocState(Enum):
    """``sac_state`` of SCTP_ASSOC_CHANGE (RFC 6458 §6.1.1)."""

    COMM_UP = "COMM_UP"
    COMM_LOST = "COMM_LOST"
    RESTART = "RESTART"
    SHUTDOWN_COMP = "SHUTDOWN_COMP"
    CANT_STR_ASSOC = "CANT_STR_ASSOC"


@dataclass(frozen=True, slots=True)
class StreamCounts:
    """What INIT asks for (``sinit_num_ostreams`` / ``sinit_max_instreams``)."""

    outbound: int = DEFAULT_STREAMS
    max_inbound: int = DEFAULT_STREAMS


@dataclass(frozen=True, slots=True)
class UserMessage:
    """One user message, delivered whole (never a fragment)."""

    data: bytes
    assoc_id: AssocId
    stream: int
    ppid: int
    peer: SockAddr
    unordered: bool = False


@dataclass(frozen=True, slots=True)
class AssociationChange:
    """An association came up, went away, restarted or could not start."""

    state: AssocState
    assoc_id: AssocId
    peer: SockAddr | None
    outbound_streams: int = 0
    inbound_streams: int = 0
    # Why it went away, when known: the peer's ABORT cause or our own reason.
    reason: str = ""


Notification = AssociationChange
Received = UserMessage | AssociationChange


class Endpoint(Protocol):
    """An asyncio one-to-many SCTP endpoint."""

    @property
    def local_addresses(self) -> list[SockAddr]:
        """Where this endpoint is bound (the SCTP port, and the UDP port for udp)."""
        ...

    async def connect(self, address: Address, *, timeout_s: float = 30.0) -> AssocId:
        """Set up an association (like ``sctp_connectx``); returns at COMM_UP.

        Raises ``NetworkError`` when no association comes up within ``timeout_s``.
        """
        ...

    async def send(self, data: bytes, *, to: AssocId | Address, stream: int = 0,
                   ppid: int = 0, unordered: bool = False) -> AssocId:
        """Queue one message; to an address with no association, one is set up first."""
        ...

    async def receive(self) -> Received:
        """The next message or association event, in arrival order."""
        ...

    def streams(self, assoc_id: AssocId) -> tuple[int, int]:
        """Negotiated (outbound, inbound) stream counts of an association."""
        ...

    async def shutdown(self, assoc_id: AssocId) -> None:
        """Graceful SHUTDOWN: deliver what is queued, then end; returns at SHUTDOWN_COMP."""
        ...

    def abort(self, assoc_id: AssocId, reason: str = "") -> None:
        """ABORT at once; queued data is dropped."""
        ...

    async def close(self) -> None:
        """Shut every association down gracefully (bounded in time), then close."""
        ...
