"""The pre-authentication limits, as pure decisions (sockferry.admission)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sockferry.admission import StartupGate, Startups, source_key


def test_startups_parse_like_sshd() -> None:
    assert Startups.parse("10:30:100") == Startups(10, 30, 100)
    assert Startups.parse("20") == Startups(20, 100, 20)
    for bad in ("", "a:b:c", "10:30", "0:30:100", "10:101:100", "50:30:10", "1:2:3:4"):
        with pytest.raises(ValueError):
            Startups.parse(bad)


def test_drop_chance_grows_from_rate_to_certainty() -> None:
    startups = Startups(10, 30, 100)
    assert startups.drop_chance(9) == 0.0
    assert startups.drop_chance(10) == pytest.approx(0.30)
    assert startups.drop_chance(55) == pytest.approx(0.65)
    assert startups.drop_chance(100) == 1.0
    assert startups.drop_chance(10_000) == 1.0


def test_gate_caps_each_source_and_counts_releases() -> None:
    gate = StartupGate(Startups(10, 30, 100), per_source=2, chance=lambda: 0.0)
    assert gate.admit("192.0.2.1") is None
    assert gate.admit("192.0.2.1") is None
    refused = gate.admit("192.0.2.1")
    assert refused is not None and "192.0.2.1" in refused and "at most 2" in refused
    assert gate.admit("192.0.2.2") is None  # another source is not held back
    gate.release("192.0.2.1")
    assert gate.admit("192.0.2.1") is None
    assert gate.total == 3 and gate.holding("192.0.2.1") == 2


def test_gate_drops_at_random_between_start_and_full() -> None:
    draws = iter([0.9, 0.1])
    gate = StartupGate(Startups(2, 50, 4), per_source=100, chance=lambda: next(draws))
    for n in range(2):
        assert gate.admit(f"198.51.100.{n}") is None
    assert gate.admit("198.51.100.7") is None  # chance 0.5, drew 0.9: taken
    assert gate.admit("198.51.100.8") is not None  # chance 0.75, drew 0.1: dropped
    full = StartupGate(Startups(1, 0, 1), per_source=100, chance=lambda: 0.99)
    assert full.admit("a") is None
    assert full.admit("b") is not None  # at FULL: always


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 5)), max_size=200))
def test_gate_never_goes_below_zero_or_above_full(steps: list[tuple[bool, int]]) -> None:
    gate = StartupGate(Startups(3, 30, 6), per_source=2, chance=lambda: 0.5)
    held: list[str] = []
    for admit, n in steps:
        source = f"203.0.113.{n}"
        if admit:
            if gate.admit(source) is None:
                held.append(source)
        elif source in held:
            held.remove(source)
            gate.release(source)
        assert gate.total == len(held) <= 6
        assert all(gate.holding(s) <= 2 for s in set(held))


def test_sources_group_ipv6_by_64_and_unmap_ipv4() -> None:
    assert source_key("2001:db8:1:2:3:4:5:6") == source_key("2001:db8:1:2:ffff::1")
    assert source_key("2001:db8:1:2::1") != source_key("2001:db8:1:3::1")
    assert source_key("::ffff:192.0.2.9") == "192.0.2.9"
