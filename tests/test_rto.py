"""The adaptive retransmission timeout (RFC 1123 §4.2.3.2, RFC 6298 estimator)."""

from __future__ import annotations

import pytest

from sockferry.rto import MIN_RTO_S, RetransmitTimer


def test_starts_at_one_second_capped_by_the_bound() -> None:
    assert RetransmitTimer(max_s=5).rto_s == 1.0
    assert RetransmitTimer(max_s=0.5).rto_s == 0.5


def test_adapts_to_a_fast_link_down_to_the_floor() -> None:
    timer = RetransmitTimer(max_s=5)
    for _ in range(20):
        timer.sample(0.0002)
    assert timer.rto_s == MIN_RTO_S


def test_adapts_to_a_slow_link() -> None:
    timer = RetransmitTimer(max_s=5)
    for _ in range(50):
        timer.sample(0.3)
    assert timer.rto_s == pytest.approx(0.3, rel=0.1)


def test_backs_off_exponentially_up_to_the_bound_and_recovers() -> None:
    timer = RetransmitTimer(max_s=1.0)
    timer.sample(0.1)
    first = timer.rto_s
    timer.back_off()
    assert timer.rto_s == pytest.approx(2 * first)
    for _ in range(10):
        timer.back_off()
    assert timer.rto_s == 1.0
    timer.progressed()
    assert timer.rto_s == pytest.approx(first)


def test_set_max_keeps_what_was_measured() -> None:
    timer = RetransmitTimer(max_s=5)
    timer.sample(0.05)
    before = timer.rto_s
    timer.set_max(2)
    assert timer.rto_s == before and timer.max_s == 2


def test_clock_granularity_is_the_floor_of_the_variance_term() -> None:
    # RFC 9260 §6.3.1 (SCTP): RTO = SRTT + max(G, 4 * RTTVAR); steady samples drive
    # RTTVAR towards 0, leaving SRTT + G.
    timer = RetransmitTimer(max_s=60.0, min_s=0.0, granularity_s=0.001)
    for _ in range(200):
        timer.sample(0.010)
    assert abs(timer.rto_s - 0.011) < 1e-6
    timer.back_off()
    assert abs(timer.rto_s - 0.022) < 1e-6
    timer.sample(0.010)  # a new measurement ends the backoff
    assert abs(timer.rto_s - 0.011) < 1e-6
