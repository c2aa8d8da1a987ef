"""Serial-number arithmetic (RFC 1982, pure): the wire carries the low bits of a number
that grows without bound — TFTP's 16-bit block numbers, SCTP's 32-bit TSNs — and the
cores keep the whole number, recovered from the one they expect."""

from __future__ import annotations


def unwrap(wire: int, reference: int, bits: int) -> int:
    """The number nearest ``reference`` whose low ``bits`` bits are ``wire`` (ties, half
    the space away, resolve downwards, as RFC 1982 leaves them undefined)."""
    modulus = 1 << bits
    delta = (wire - reference) % modulus
    return reference + delta - (modulus if delta >= modulus >> 1 else 0)
