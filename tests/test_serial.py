"""serial.py: RFC 1982 unwrapping, as TFTP block numbers and SCTP TSNs use it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sockferry.serial import unwrap


@given(st.sampled_from([16, 32]), st.integers(0, 2**40), st.data())
def test_unwrap_finds_the_nearest_number_with_those_low_bits(
        bits: int, reference: int, data: st.DataObject) -> None:
    half = 1 << (bits - 1)
    offset = data.draw(st.integers(-half, half - 1))
    number = reference + offset  # anything within half the space of the reference
    assert unwrap(number % (1 << bits), reference, bits) == number


def test_wrapping_across_zero() -> None:
    assert unwrap(0, 65535, 16) == 65536  # TFTP block 65536 after 65535
    assert unwrap(65535, 65536, 16) == 65535
    assert unwrap(5, 0xFFFFFFF0, 32) == 0x100000005
    assert unwrap(0x80000000, 0, 32) == -0x80000000  # half away: downwards
