"""The adaptive retransmission timeout of TFTP transfers and SCTP associations (pure).

Both use RFC 6298's estimator (SRTT, RTTVAR, RTO = SRTT + max(G, 4·RTTVAR)), which RFC
9260 §6.3.1 repeats for SCTP, with Karn's rule (a retransmitted packet gives no sample)
and exponential backoff.  TFTP (RFC 1123 §4.2.3.2 asks it to adapt and back off) bounds
the RTO by the negotiated RFC 2349 ``timeout``, so a lost packet on a fast link costs
milliseconds and one on a slow link never waits longer than agreed; SCTP by RTO.Min and
RTO.Max.
"""

from __future__ import annotations

# TFTP's lower bound: below this a scheduling hiccup on a busy host looks like loss and
# wastes packets; above it a lost packet on a LAN costs more than it needs to.
MIN_RTO_S = 0.02
# RFC 6298 §2.1: one second before the first measurement (capped by the upper bound).
INITIAL_RTO_S = 1.0
ALPHA = 1 / 8
BETA = 1 / 4


class RetransmitTimer:
    """SRTT/RTTVAR estimator with exponential backoff, clamped to [min_s, max_s].

    ``rto_s`` is kept up to date by every method rather than computed on each read: a
    lock-step transfer reads it once per packet.
    """

    __slots__ = ("_backoff", "_granularity_s", "_max_s", "_min_s", "_rttvar", "_srtt",
                 "rto_s")

    def __init__(self, max_s: float, min_s: float = MIN_RTO_S,
                 initial_s: float = INITIAL_RTO_S, granularity_s: float = 0.0) -> None:
        self._min_s = min(min_s, max_s)
        self._granularity_s = granularity_s  # G, the clock granularity of RFC 6298 §2
        self._max_s = max_s
        self._srtt: float | None = None
        self._rttvar = initial_s / 2  # so that the first RTO is initial_s
        self._backoff = 1
        self.rto_s = 0.0
        self._update()

    def _update(self) -> None:
        base = (2 * self._rttvar if self._srtt is None
                else self._srtt + max(self._granularity_s, 4 * self._rttvar))
        self.rto_s = min(self._max_s, max(self._min_s, base) * self._backoff)

    @property
    def srtt_s(self) -> float | None:
        return self._srtt

    @property
    def max_s(self) -> float:
        return self._max_s

    def set_max(self, max_s: float) -> None:
        """A new upper bound (a negotiated timeout); what was measured is kept."""
        self._max_s = max_s
        self._min_s = min(self._min_s, max_s)
        self._update()

    def sample(self, rtt_s: float) -> None:
        """A round trip measured on a packet that was sent once (Karn's rule)."""
        rtt_s = max(rtt_s, 0.0)
        srtt = self._srtt
        if srtt is None:
            self._srtt = srtt = rtt_s
            self._rttvar = rttvar = rtt_s / 2
        else:
            self._rttvar = rttvar = self._rttvar + BETA * (abs(srtt - rtt_s) - self._rttvar)
            self._srtt = srtt = srtt + ALPHA * (rtt_s - srtt)
        self._backoff = 1
        # _update(), inlined: this runs once per round trip.
        rto = srtt + max(self._granularity_s, 4 * rttvar)
        rto = max(rto, self._min_s)
        self.rto_s = rto if rto < self._max_s else self._max_s

    def back_off(self) -> None:
        """A timeout expired: double the next one (RFC 1123 §4.2.3.2, RFC 9260 §6.3.3 E2),
        up to max_s, until the next sample or ``progressed``."""
        if self.rto_s < self._max_s:
            self._backoff *= 2
            self._update()

    def progressed(self) -> None:
        """The peer answered something new: stop backing off."""
        if self._backoff != 1:
            self._backoff = 1
            self._update()
