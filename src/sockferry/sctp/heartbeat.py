"""Heartbeats of an idle association (pure): RFC 9260 §8.3.

Every HB.interval plus a jittered RTO, an association with nothing in flight sends a
HEARTBEAT whose info is the time it left and a random nonce; only a HEARTBEAT ACK with
that nonce answers it (and gives an RTT sample).  The association decides in which
states to probe and counts an unanswered one as an error (§8.1).
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from sockferry.sctp import chunks as c

_INFO = struct.Struct("!dQ")  # sent at, nonce


class Heartbeat:
    """The heartbeat deadline and the nonce of the one HEARTBEAT awaiting its ACK."""

    __slots__ = ("_interval_s", "_rng", "at", "nonce")

    def __init__(self, interval_s: float, rng: Callable[[int], bytes]) -> None:
        self._interval_s = interval_s
        self._rng = rng
        self.at: float | None = None
        self.nonce: int | None = None

    def schedule(self, now: float, rto_s: float) -> None:
        """The next HEARTBEAT is due one interval from ``now``; none is awaited."""
        jitter = int.from_bytes(self._rng(2), "big") / 65535 - 0.5  # §8.3: ±50% of RTO
        self.nonce = None
        self.at = now + self._interval_s + rto_s * (1 + jitter)

    def probe(self, now: float, rto_s: float) -> c.HeartbeatChunk:
        """A HEARTBEAT to send now; unanswered within ``rto_s`` it counts as an error."""
        self.nonce = int.from_bytes(self._rng(8), "big")
        self.at = now + rto_s
        return c.HeartbeatChunk(_INFO.pack(now, self.nonce))

    def answered(self, info: bytes) -> float | None:
        """When the HEARTBEAT that ``info`` (of a HEARTBEAT ACK) answers was sent, if it
        is the one awaited; None for any other (late, repeated or forged)."""
        if self.nonce is None or len(info) != _INFO.size:
            return None
        sent_at, nonce = _INFO.unpack(info)
        if nonce != self.nonce:
            return None
        self.nonce = None
        return float(sent_at)
