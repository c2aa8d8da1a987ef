"""Heartbeats of an idle association (pure): RFC 9260 §8.3.

Every HB.interval plus a jittered RTO, an association with nothing in flight sends a
HEARTBEAT whose info is the time it left and a random nonce; only a HEARTBEAT ACK with
that nonce answers it (and gives an RTT sample, and clears the error count).  One that
goes unanswered counts as an error (§8.1) and is sent again after a doubled RTO; the
peer's HEARTBEATs are echoed back.  Probes go out only in states that exchange DATA.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Protocol

from sockferry.rto import RetransmitTimer
from sockferry.sctp import chunks as c
from sockferry.sctp.sending import Sender
from sockferry.sctp.states import DATA_STATES, AssociationState

_INFO = struct.Struct("!dQ")  # sent at, nonce


class HeartbeatHost(Protocol):
    """What the heartbeats read and drive in their association."""

    error_count: int

    @property
    def state(self) -> AssociationState: ...
    @property
    def sender(self) -> Sender: ...
    def queue_control(self, chunk: c.Chunk) -> None: ...
    def count_error(self, what: str) -> bool: ...


class Heartbeat:
    """The heartbeat deadline and the nonce of the one HEARTBEAT awaiting its ACK."""

    __slots__ = ("_host", "_interval_s", "_rng", "_rtx", "at", "nonce")

    def __init__(self, host: HeartbeatHost, interval_s: float, rtx: RetransmitTimer,
                 rng: Callable[[int], bytes]) -> None:
        self._host = host
        self._interval_s = interval_s
        self._rtx = rtx
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

    def on_heartbeat(self, chunk: c.HeartbeatChunk, now: float) -> None:
        self._host.queue_control(c.HeartbeatAckChunk(chunk.info))

    def on_heartbeat_ack(self, chunk: c.HeartbeatAckChunk, now: float) -> None:
        sent_at = self.answered(chunk.info)
        if sent_at is None:
            return
        self._host.error_count = 0  # §8.3: an acknowledged HEARTBEAT clears the count
        rtx = self._rtx
        rtx.sample(now - sent_at)
        self.schedule(now, rtx.rto_s)

    def on_timer(self, now: float) -> None:
        """The deadline passed: probe, or count the last probe as unanswered first."""
        host = self._host
        if host.state not in DATA_STATES:
            self.at = None
            return
        rtx = self._rtx
        if self.nonce is not None:  # the last one went unanswered
            rtx.back_off()
            if host.count_error("HEARTBEAT"):
                return
        if host.sender.sent:
            self.schedule(now, rtx.rto_s)  # data in flight probes the path already
        else:
            host.queue_control(self.probe(now, rtx.rto_s))
