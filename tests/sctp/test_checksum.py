"""CRC32c against the test vectors of RFC 3720 §B.4 and the fast against the pure one."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sockferry.sctp.checksum import crc32c, crc32c_pure

# RFC 3720 §B.4: the CRC bytes as they appear on the wire, least significant first.
VECTORS = [
    (bytes(32), "aa36918a"),
    (b"\xff" * 32, "43aba862"),
    (bytes(range(32)), "4e79dd46"),
    (bytes(range(31, -1, -1)), "5cdb3f11"),
    (bytes.fromhex(
        "01c00000000000000000000000000000"
        "14000000000004000000001400000018"
        "28000000000000000200000000000000"), "563a96d9"),
]


@pytest.mark.parametrize(("data", "wire"), VECTORS)
@pytest.mark.parametrize("function", [crc32c, crc32c_pure])
def test_rfc3720_vectors(function: object, data: bytes, wire: str) -> None:
    assert callable(function)
    assert function(data, 0).to_bytes(4, "little").hex() == wire


@given(st.binary(max_size=300), st.integers(0, 300))
def test_fast_matches_pure_incrementally(data: bytes, cut: int) -> None:
    cut = min(cut, len(data))
    assert crc32c(data[cut:], crc32c(data[:cut], 0)) == crc32c_pure(data, 0)
    assert crc32c_pure(data[cut:], crc32c_pure(data[:cut], 0)) == crc32c(data, 0)
