"""Who may talk to a server before proving anything, and how often (pure).

Every server counts per *source*: an IPv4 address, or an IPv6 /64 (one host, or one
customer's network, usually holds a whole /64).  ``TokenBucket`` paces answers and log
lines; ``StartupGate`` is sshd's answer to a slow-loris flood, for the ferry servers:
a cap on connections that have not authenticated yet, separate from the cap on all
connections, with random early drop between a start and a full mark (``MaxStartups
start:rate:full``) and a cap per source (``PerSourceMaxStartups``).  A client that
authenticates leaves the count at once; one that never does is dropped at the
handshake deadline, which the server enforces.
"""

from __future__ import annotations

import ipaddress
import random
import time
from collections.abc import Callable

from sockferry.records import record


def source_key(host: str) -> str:
    """The source a peer address counts against: IPv4 as is (v4-mapped IPv6 too), IPv6
    by its /64."""
    bare = host.split("%", 1)[0]  # a link-local address's scope
    try:
        address = ipaddress.ip_address(bare)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; ``take`` spends one."""

    __slots__ = ("_at", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._at = now

    def take(self, now: float) -> bool:
        tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if tokens < 1.0:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1.0
        return True



@record
class Startups:
    """``start:rate:full``: below ``start`` unauthenticated connections every new one is
    taken; from there it is dropped with a chance of ``rate`` percent, growing linearly
    to 100 % at ``full``."""

    start: int = 10
    rate: int = 30
    full: int = 100

    @classmethod
    def parse(cls, text: str) -> Startups:
        """``N`` (= ``N:100:N``) or ``START:RATE:FULL``; ValueError with a sentence."""
        parts = text.split(":")
        try:
            numbers = [int(part) for part in parts]
        except ValueError:
            numbers = []
        if len(numbers) == 1:
            numbers = [numbers[0], 100, numbers[0]]
        if len(numbers) != 3:
            raise ValueError(f"'{text}' is not N or START:RATE:FULL (for example 10:30:100)")
        start, rate, full = numbers
        if not (1 <= start <= full and 0 <= rate <= 100):
            raise ValueError(f"'{text}': START and FULL must be at least 1 with START <= "
                             "FULL, and RATE a percentage (0 to 100)")
        return cls(start, rate, full)

    def drop_chance(self, unauthenticated: int) -> float:
        if unauthenticated < self.start:
            return 0.0
        if unauthenticated >= self.full:
            return 1.0
        span = self.full - self.start
        return (self.rate + (100 - self.rate) * (unauthenticated - self.start) / span) / 100


class StartupGate:
    """Counts connections that have not authenticated yet, in all and per source, and
    decides on each new one.  Memory: one entry per source holding such connections
    (at most ``startups.full`` of them)."""

    def __init__(self, startups: Startups, per_source: int,
                 chance: Callable[[], float] = random.random) -> None:
        self.startups = startups
        self.per_source = per_source
        self.total = 0
        self._by_source: dict[str, int] = {}
        self._chance = chance

    def admit(self, source: str) -> str | None:
        """None when admitted (counted until ``release``); else why not, a sentence for
        the client."""
        held = self._by_source.get(source, 0)
        if held >= self.per_source:
            return (f"too many connections from {source} are still authenticating "
                    f"(at most {self.per_source}); try again later")
        drop = self.startups.drop_chance(self.total)
        if drop and (drop >= 1.0 or self._chance() < drop):
            return (f"server busy: {self.total} connections are authenticating; "
                    "try again later")
        self.total += 1
        self._by_source[source] = held + 1
        return None

    def release(self, source: str) -> None:
        """A connection admitted from ``source`` authenticated or ended."""
        held = self._by_source.get(source, 0)
        if held <= 1:
            self._by_source.pop(source, None)
        else:
            self._by_source[source] = held - 1
        self.total = max(0, self.total - 1)

    def holding(self, source: str) -> int:
        return self._by_source.get(source, 0)


class RateLimitedLog:
    """At most ``per_second`` lines a second, then one line with how many were left out,
    so a flood of refused peers cannot flood the log."""

    def __init__(self, per_second: int = 10) -> None:
        self.per_second = per_second
        self._window = float("-inf")
        self._count = 0
        self.dropped = 0

    def allow(self, now: float | None = None) -> tuple[bool, int]:
        """(log this one?, lines left out in the window that just ended)."""
        now = time.monotonic() if now is None else now
        left_out = 0
        if now - self._window >= 1.0:
            left_out, self.dropped = self.dropped, 0
            self._window, self._count = now, 0
        if self._count < self.per_second:
            self._count += 1
            return True, left_out
        self.dropped += 1
        return False, left_out
