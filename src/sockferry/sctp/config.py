"""The SCTP parameters both backends take (pure): the userspace association runs by
them, and the kernel backend sets the same RTO bounds, retransmission limits, cookie
life, heartbeat interval, SACK delay and stream counts on its socket."""

from __future__ import annotations

from dataclasses import dataclass, field

from sockferry.sctp.endpoint import StreamCounts


@dataclass(frozen=True, slots=True)
class Config:
    """Protocol parameters (RFC 9260 §16) and local limits."""

    rto_initial_s: float = 1.0
    rto_min_s: float = 1.0
    rto_max_s: float = 60.0
    max_burst: int = 4
    association_max_retrans: int = 10
    max_init_retransmits: int = 8
    valid_cookie_life_s: float = 60.0
    hb_interval_s: float = 30.0
    # §6.2: a SACK is due within 500 ms; 200 ms is the usual delay.
    sack_delay_s: float = 0.2
    # Our a_rwnd: bytes we hold for the application, reassembled or not.
    receive_buffer: int = 8 << 20
    # The largest message we reassemble; above it the association is aborted (no partial
    # delivery API here), so it must stay below receive_buffer.
    max_message_size: int = 4 << 20
    streams: StreamCounts = field(default_factory=StreamCounts)
