"""CRC32c, the SCTP checksum (RFC 9260 §6.8 and Appendix A; polynomial from RFC 3720 §B.4).

The ``crc32c`` package computes it with the CPU's CRC instruction when it can; the
table-driven version here is the fallback and the reference the tests check it against.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

Buffer = bytes | bytearray | memoryview

_POLYNOMIAL = 0x82F63B78  # Castagnoli, bit-reversed (RFC 3720 §B.4)


def _make_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _POLYNOMIAL if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _make_table()


def crc32c_pure(data: Buffer, value: int = 0) -> int:
    """CRC32c of ``data`` continuing from ``value`` (a previous result, 0 to start)."""
    crc = value ^ 0xFFFFFFFF
    table = _TABLE
    for byte in bytes(data):
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _fast_or_pure() -> Callable[[Buffer, int], int]:
    try:
        from crc32c import crc32c as fast  # noqa: PLC0415 - optional accelerator
    except ImportError:  # pragma: no cover - the dependency is normally installed
        return crc32c_pure
    return cast(Callable[[Buffer, int], int], fast)


crc32c: Callable[[Buffer, int], int] = _fast_or_pure()
