"""The State Cookie: an association's parameters, signed, carried by the peer (RFC 9260 §5.1.3).

A listening endpoint keeps no state for an INIT: everything it needs to create the
association travels in the cookie, signed with HMAC-SHA256 under a key only it knows,
stamped with its creation time and lifetime, and bound to the peer's address so that a
cookie copied to another source is refused.  Pure: ``now`` comes from the caller.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass

COOKIE_VERSION = 1
_FIELDS = struct.Struct("!BIIIIIHHIIHHdd")
_MAC_SIZE = 32
# The peer host travels as text ("2001:db8::1%eth0" at most ~50 bytes); more is refused.
MAX_HOST_LENGTH = 64
MAX_COOKIE_SIZE = _FIELDS.size + MAX_HOST_LENGTH + _MAC_SIZE


@dataclass(frozen=True, slots=True)
class CookieState:
    """What the INIT and our INIT ACK agreed, plus the Tie-Tags of §5.2.2."""

    my_tag: int
    peer_tag: int
    my_initial_tsn: int
    peer_initial_tsn: int
    peer_a_rwnd: int
    outbound_streams: int
    inbound_streams: int
    local_tie_tag: int
    peer_tie_tag: int
    local_port: int
    peer_port: int
    created_at: float
    lifetime_s: float
    peer_host: str


def sign_cookie(state: CookieState, key: bytes) -> bytes:
    host = state.peer_host.encode()[:MAX_HOST_LENGTH]
    body = _FIELDS.pack(COOKIE_VERSION, state.my_tag, state.peer_tag, state.my_initial_tsn,
                        state.peer_initial_tsn, state.peer_a_rwnd, state.outbound_streams,
                        state.inbound_streams, state.local_tie_tag, state.peer_tie_tag,
                        state.local_port, state.peer_port, state.created_at,
                        state.lifetime_s) + host
    return body + hmac.new(key, body, hashlib.sha256).digest()


class CookieRefused(Exception):
    """A cookie that is not ours, was altered, was sent from elsewhere, or has expired."""

    def __init__(self, reason: str, stale: CookieState | None = None,
                 staleness_us: int = 0) -> None:
        super().__init__(reason)
        self.stale = stale  # set only for a genuine cookie that has expired
        self.staleness_us = staleness_us


def open_cookie(cookie: bytes, key: bytes, peer_host: str, now: float) -> CookieState:
    """The state inside ``cookie``, or ``CookieRefused`` saying why not (§5.1.5)."""
    if not _FIELDS.size + _MAC_SIZE <= len(cookie) <= MAX_COOKIE_SIZE:
        raise CookieRefused(f"a state cookie of {len(cookie)} bytes is not one of ours")
    body, mac = cookie[:-_MAC_SIZE], cookie[-_MAC_SIZE:]
    if not hmac.compare_digest(mac, hmac.new(key, body, hashlib.sha256).digest()):
        raise CookieRefused("the state cookie's signature does not match")
    (version, my_tag, peer_tag, my_tsn, peer_tsn, peer_rwnd, outbound, inbound, local_tie,
     peer_tie, local_port, peer_port, created_at, lifetime_s) = _FIELDS.unpack_from(body)
    if version != COOKIE_VERSION:
        raise CookieRefused(f"state cookie version {version} is unknown")
    host = body[_FIELDS.size:].decode(errors="replace")
    if host != peer_host[:MAX_HOST_LENGTH]:
        raise CookieRefused(f"a state cookie issued to {host} came from {peer_host}")
    state = CookieState(my_tag, peer_tag, my_tsn, peer_tsn, peer_rwnd, outbound, inbound,
                        local_tie, peer_tie, local_port, peer_port, created_at, lifetime_s,
                        host)
    if now > created_at + lifetime_s:
        # §3.3.10.3: the staleness is reported in microseconds.
        staleness_us = min(int((now - created_at - lifetime_s) * 1e6), 0xFFFFFFFF)
        raise CookieRefused("the state cookie has expired", state, staleness_us)
    return state
