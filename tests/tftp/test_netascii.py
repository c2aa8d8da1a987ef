"""Netascii both ways, including a CR split across blocks."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sockferry.tftp import netascii


def decode_in_pieces(wire: bytes, cuts: list[int]) -> bytes:
    decoder = netascii.Decoder()
    out = b""
    start = 0
    for cut in sorted(set(cuts)):
        out += decoder.feed(wire[start:cut])
        start = cut
    return out + decoder.feed(wire[start:]) + decoder.finish()


def test_encode() -> None:
    assert netascii.encode(b"a\nb\rc\r\n") == b"a\r\nb\r\0c\r\0\r\n"


def test_decode() -> None:
    assert decode_in_pieces(b"a\r\nb\r\0c\r\0\r\n", []) == b"a\nb\rc\r\n"


def test_cr_at_a_block_boundary() -> None:
    wire = b"line one\r\nline two\r\0tail"
    for cut in range(len(wire) + 1):
        assert decode_in_pieces(wire, [cut]) == b"line one\nline two\rtail"


def test_bare_cr_is_kept() -> None:
    # Not valid netascii, but a peer may send it: the CR survives, even at the very end.
    assert decode_in_pieces(b"a\rb\r", [2]) == b"a\rb\r"


@given(st.binary(), st.lists(st.integers(0, 200), max_size=5))
def test_round_trip_in_any_pieces(local: bytes, cuts: list[int]) -> None:
    assert decode_in_pieces(netascii.encode(local), cuts) == local


@given(st.lists(st.sampled_from(b"\r\n\0ab"), max_size=64).map(bytes),
       st.lists(st.integers(0, 64), max_size=6))
def test_chunking_never_changes_the_result(wire: bytes, cuts: list[int]) -> None:
    assert decode_in_pieces(wire, cuts) == decode_in_pieces(wire, [])
