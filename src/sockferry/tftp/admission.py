"""Who the TFTP server answers, and how often: sources and token buckets (pure).

A datagram's source address is only a claim: anyone can send a request "from" a victim,
or from another TFTP server's port.  The server therefore counts per *source* — an IPv4
address, or an IPv6 /64 (one host, or one customer's network, usually holds a whole /64)
— and answers the request port through token buckets, one shared and one per source, so
that neither a forged flood nor a confused peer can turn it into a reflector.
"""

from __future__ import annotations

from collections import OrderedDict

from sockferry.admission import TokenBucket, source_key

__all__ = ["MAX_TRACKED_SOURCES", "ReplyLimiter", "TokenBucket", "source_key"]

# Sources whose buckets are remembered; beyond it the least recently seen is forgotten
# (a forged flood from many addresses must not grow memory without bound).
MAX_TRACKED_SOURCES = 4096


class ReplyLimiter:
    """A shared bucket and one per source: a reply goes out only if both have a token."""

    def __init__(self, rate: float, per_source_rate: float, now: float) -> None:
        self._shared = TokenBucket(rate, rate, now)
        self._per_source_rate = per_source_rate
        self._sources: OrderedDict[str, TokenBucket] = OrderedDict()

    def allow(self, source: str, now: float) -> bool:
        bucket = self._sources.get(source)
        if bucket is None:
            bucket = TokenBucket(self._per_source_rate, self._per_source_rate, now)
            self._sources[source] = bucket
            if len(self._sources) > MAX_TRACKED_SOURCES:
                self._sources.popitem(last=False)
        else:
            self._sources.move_to_end(source)
        # The source's token first: a flood from one source must not drain the shared
        # bucket that everybody else's replies need.
        return bucket.take(now) and self._shared.take(now)
