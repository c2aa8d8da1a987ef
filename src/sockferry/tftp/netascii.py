"""Netascii, TFTP's text mode (RFC 1350 §1 and RFC 764's NVT rules).

On the wire a newline is CR LF and a carriage return is CR NUL; on this (Unix) side a
newline is LF.  Encoding is stateless, so any chunking of the local file gives the same
bytes.  Decoding must remember a CR that ends one block, because the byte that tells
what it means arrives in the next one.
"""

from __future__ import annotations

CR = b"\r"


def encode(local: bytes) -> bytes:
    """Local bytes to netascii: CR -> CR NUL first, then LF -> CR LF."""
    return local.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")


class Decoder:
    """Netascii to local bytes, fed block by block."""

    __slots__ = ("_pending_cr",)

    def __init__(self) -> None:
        self._pending_cr = False

    def feed(self, wire: bytes) -> bytes:
        if self._pending_cr:
            wire = CR + wire
            self._pending_cr = False
        if wire.endswith(CR):
            # Hold the CR back: CR LF, CR NUL and a bare CR differ by the next byte.
            wire = wire[:-1]
            self._pending_cr = True
        # One left-to-right pass in effect: both patterns start with CR and differ in
        # their second byte, and neither replacement can create the other.
        return wire.replace(b"\r\n", b"\n").replace(b"\r\0", b"\r")

    def finish(self) -> bytes:
        """What is left at the end of the transfer: a final bare CR is kept as it is."""
        if self._pending_cr:
            self._pending_cr = False
            return CR
        return b""
