"""Congestion control and the retransmission timer of one association (pure).

RFC 9260 §7.2: slow start and congestion avoidance (cwnd, ssthresh, partial_bytes_acked),
fast recovery after a fast retransmit (§7.2.4), and the collapse to one packet when the
T3-rtx timer expires (§7.2.3).  The RTO comes from the estimator TFTP uses too
(``sockferry.rto``, RFC 6298 with SCTP's bounds and clock granularity, §6.3.1); the
T3-rtx deadline follows the rules of §6.3.2.
"""

from __future__ import annotations

from sockferry.rto import RetransmitTimer

CLOCK_GRANULARITY_S = 0.001  # G of RFC 9260 §6.3.1: RTO is at least SRTT + 1 ms


def initial_cwnd(mtu: int) -> int:
    """§7.2.1: min(4·MTU, max(2·MTU, 4404))."""
    return min(4 * mtu, max(2 * mtu, 4404))


class CongestionControl:
    """cwnd, ssthresh and fast recovery; the RTO estimator and the T3-rtx deadline."""

    __slots__ = ("cwnd", "fast_pending", "fast_recovery_exit", "mtu", "partial_bytes_acked",
                 "rtx", "ssthresh", "t3_at")

    def __init__(self, *, rto_initial_s: float, rto_min_s: float, rto_max_s: float,
                 mtu: int) -> None:
        self.rtx = RetransmitTimer(max_s=rto_max_s, min_s=rto_min_s, initial_s=rto_initial_s,
                                   granularity_s=CLOCK_GRANULARITY_S)
        self.t3_at: float | None = None
        self.mtu = mtu
        self.reset(0)

    def reset(self, peer_rwnd: int) -> None:
        """A new (or restarted) association: the initial window; ssthresh starts at the
        peer's window (§7.2.1).  What the RTO estimator learned is kept."""
        mtu = self.mtu
        self.cwnd = initial_cwnd(mtu)
        self.ssthresh = max(peer_rwnd, 4 * mtu)
        self.partial_bytes_acked = 0
        # The highest TSN outstanding when fast recovery began; None outside it.
        self.fast_recovery_exit: int | None = None
        # The next retransmission is a fast one: its first packet ignores cwnd.
        self.fast_pending = False

    def enter_fast_recovery(self, highest_outstanding: int) -> None:
        """§7.2.4: chunks were marked for fast retransmit; halve cwnd unless already
        recovering."""
        if self.fast_recovery_exit is None:
            self.ssthresh = max(self.cwnd // 2, 4 * self.mtu)
            self.cwnd = self.ssthresh
            self.partial_bytes_acked = 0
            self.fast_recovery_exit = highest_outstanding
        self.fast_pending = True

    def on_cumulative_ack(self, cum: int, acked: int, flight_before: int) -> None:
        """The cumulative ack advanced to ``cum``, acknowledging ``acked`` new bytes of
        the ``flight_before`` that were in flight."""
        if self.fast_recovery_exit is not None:
            if cum < self.fast_recovery_exit:
                return  # no growth during fast recovery
            self.fast_recovery_exit = None
        if acked == 0 or flight_before < self.cwnd:
            return  # §7.2.1: only when the window was in use
        if self.cwnd <= self.ssthresh:
            self.cwnd += min(acked, self.mtu)  # slow start
        else:
            self.partial_bytes_acked += acked  # congestion avoidance (§7.2.2)
            if self.partial_bytes_acked >= self.cwnd:
                self.partial_bytes_acked -= self.cwnd
                self.cwnd += self.mtu

    def on_t3_expired(self) -> None:
        """§7.2.3 and §6.3.3 E2: back to one packet, and a doubled RTO."""
        self.ssthresh = max(self.cwnd // 2, 4 * self.mtu)
        self.cwnd = self.mtu
        self.partial_bytes_acked = 0
        self.fast_recovery_exit = None
        self.rtx.back_off()
