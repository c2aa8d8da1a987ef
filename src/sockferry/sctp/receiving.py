"""The receive side of one association (pure): RFC 9260 §6.2, §6.5, §6.6, §6.9.

DATA chunks go in; whole ``UserMessage`` events come out, in order per stream unless
sent unordered, and the SACK that reports what arrived.  Here are the cumulative TSN,
the TSNs received above it (the gap blocks), duplicates, fragments waiting for the rest
of their message, messages waiting for an earlier one of their stream, the advertised
window and when a SACK is due.  The association decides which states accept DATA and
what to do when the peer broke the rules (``Violation``: abort).

TSNs are unbounded integers here; only the wire carries their low 32 bits.
"""

from __future__ import annotations

import struct
from collections import deque

from sockferry.addresses import SockAddr
from sockferry.sctp import chunks as c
from sockferry.sctp.endpoint import AssocId, Received, UserMessage
from sockferry.serial import unwrap

# A SACK reports at most this many gaps and duplicates; the rest wait for the next one.
MAX_GAP_BLOCKS = 128
MAX_DUPLICATES = 32
# How far ahead of the cumulative TSN a DATA chunk may be and still be kept.
MAX_TSN_AHEAD = 1 << 16
_U16_PAIR = struct.Struct("!HH")


class Receiver:
    """What arrived from the peer, what is delivered, and what the next SACK says."""

    __slots__ = ("_duplicates", "_expected_ssn", "_fragment_bytes", "_fragments",
                 "_highest_received", "_received_above", "_reorder", "advertised_rwnd",
                 "assoc_id", "cumulative_tsn", "data_packets_unacked", "events", "held",
                 "inbound_streams", "max_message_size", "peer", "receive_buffer", "sack_at",
                 "sack_now")

    def __init__(self, events: deque[Received], assoc_id: AssocId, peer: SockAddr, *,
                 initial_tsn: int, inbound_streams: int, receive_buffer: int,
                 max_message_size: int) -> None:
        # Delivered messages go to the association's own queue, in order with its
        # association changes.
        self.events = events
        self.assoc_id = assoc_id
        self.peer = peer
        self.receive_buffer = receive_buffer
        self.max_message_size = max_message_size
        self.inbound_streams = inbound_streams
        self.cumulative_tsn = initial_tsn - 1
        self._highest_received = initial_tsn - 1
        self._received_above: set[int] = set()
        self._duplicates: list[int] = []
        self._fragments: dict[int, c.DataChunk] = {}
        self._fragment_bytes = 0
        self._expected_ssn = [0] * max(inbound_streams, 1)
        self._reorder: list[dict[int, UserMessage]] = [{} for _ in self._expected_ssn]
        # Bytes delivered and not yet released by the application.
        self.held = 0
        self.advertised_rwnd = receive_buffer
        self.data_packets_unacked = 0
        # A SACK is due with the next packet out (sack_now) or at sack_at (§6.2 delay).
        self.sack_now = False
        self.sack_at: float | None = None

    def receive_data(self, chunk: c.DataChunk) -> c.Violation | c.Cause | None:
        """One DATA chunk: kept, delivered or dropped.  A ``Cause`` is to be reported in
        an ERROR chunk (the rest goes on); a ``Violation`` ends the association."""
        tsn = unwrap(chunk.tsn, self.cumulative_tsn, 32)
        if tsn <= self.cumulative_tsn or tsn in self._received_above:
            if len(self._duplicates) < MAX_DUPLICATES:
                self._duplicates.append(tsn)
            self.sack_now = True
            return None
        if not chunk.payload:
            return c.Violation(c.Cause(c.CauseCode.NO_USER_DATA, struct.pack("!I", chunk.tsn)),
                             "the peer sent a DATA chunk without data")
        size = len(chunk.payload)
        over = self.held + self._fragment_bytes + size > self.receive_buffer
        if tsn > self.cumulative_tsn + MAX_TSN_AHEAD or (over and tsn > self._highest_received):
            self.sack_now = True  # §6.2: no room: drop it and say where we are
            return None
        if chunk.immediate:
            self.sack_now = True
        self._mark_received(tsn)
        if chunk.stream >= self.inbound_streams:
            # §6.5: report it and drop the data (its TSN is still acknowledged).
            return c.Cause(c.CauseCode.INVALID_STREAM_IDENTIFIER,
                           _U16_PAIR.pack(chunk.stream, 0))
        if chunk.beginning and chunk.end:
            self._complete(chunk.stream, chunk.ssn, chunk.ppid, chunk.unordered, chunk.payload)
            return None
        return self._add_fragment(tsn, chunk, size)

    def _mark_received(self, tsn: int) -> None:
        self._highest_received = max(self._highest_received, tsn)
        if tsn != self.cumulative_tsn + 1:
            self._received_above.add(tsn)
            self.sack_now = True  # §6.7: a gap appeared: report it at once
            return
        self.cumulative_tsn = tsn
        above = self._received_above
        if above:
            while self.cumulative_tsn + 1 in above:
                self.cumulative_tsn += 1
                above.discard(self.cumulative_tsn)
            if above:
                self.sack_now = True

    def _add_fragment(self, tsn: int, chunk: c.DataChunk, size: int) -> c.Violation | None:
        self._fragments[tsn] = chunk
        self._fragment_bytes += size
        # A message completes with its last missing fragment: the E fragment or one whose
        # successor is already here; only then is a walk worth it.
        if chunk.end or tsn + 1 in self._fragments:
            return self._reassemble(tsn)
        return self._check_fragment_limit()

    def _reassemble(self, tsn: int) -> c.Violation | None:
        """Join the fragments around ``tsn`` once B..E are all here (consecutive TSNs)."""
        fragments = self._fragments
        first = tsn
        while not fragments[first].beginning:
            if first - 1 not in fragments:
                return self._check_fragment_limit()
            first -= 1
        last = tsn
        while not fragments[last].end:
            if last + 1 not in fragments:
                return self._check_fragment_limit()
            last += 1
        parts = [fragments.pop(t) for t in range(first, last + 1)]
        head = parts[0]
        data = b"".join(p.payload for p in parts)
        self._fragment_bytes -= len(data)
        if any(p.stream != head.stream or p.unordered != head.unordered for p in parts):
            return c.Violation(c.Cause(c.CauseCode.PROTOCOL_VIOLATION, b"fragments disagree"),
                             "the peer sent fragments of one message on different streams")
        self._complete(head.stream, head.ssn, head.ppid, head.unordered, data)
        return None

    def _check_fragment_limit(self) -> c.Violation | None:
        if self._fragment_bytes > self.max_message_size:
            return c.Violation(c.Cause(c.CauseCode.OUT_OF_RESOURCE),
                             f"the peer sent a message over {self.max_message_size} bytes")
        return None

    def _complete(self, stream: int, ssn: int, ppid: int, unordered: bool,
                  data: bytes) -> None:
        message = UserMessage(data, self.assoc_id, stream, ppid, self.peer, unordered)
        self.held += len(data)
        if unordered:
            self.events.append(message)
            return
        expected = self._expected_ssn[stream]
        if ssn != expected:
            self._reorder[stream][ssn] = message  # §6.6: wait for the earlier ones
            return
        self.events.append(message)
        waiting = self._reorder[stream]
        expected = (expected + 1) & 0xFFFF
        while expected in waiting:
            self.events.append(waiting.pop(expected))
            expected = (expected + 1) & 0xFFFF
        self._expected_ssn[stream] = expected

    def after_packet(self, now: float, delay_s: float) -> None:
        """§6.2: SACK every second packet with DATA, at once on gaps, else after a delay."""
        self.data_packets_unacked += 1
        if self.data_packets_unacked >= 2:
            self.sack_now = True
        elif self.sack_at is None and not self.sack_now:
            self.sack_at = now + delay_s

    def rwnd(self) -> int:
        """The receive window: the buffer less what is held and being reassembled."""
        return max(0, self.receive_buffer - self.held - self._fragment_bytes)

    def release(self, nbytes: int, threshold: int) -> bool:
        """The application consumed ``nbytes``; True when the window grew by at least
        ``threshold`` since the last SACK (§6.2: a blocked sender is to hear of it)."""
        self.held -= nbytes
        return self.rwnd() - self.advertised_rwnd >= threshold

    def build_sack(self) -> bytes:
        """The SACK chunk, encoded; what it reports is no longer due."""
        base = self.cumulative_tsn
        gaps: list[tuple[int, int]] = []
        for tsn in sorted(self._received_above):
            offset = tsn - base
            if gaps and gaps[-1][1] + 1 == offset:
                gaps[-1] = (gaps[-1][0], offset)
            elif len(gaps) < MAX_GAP_BLOCKS:
                gaps.append((offset, offset))
            else:
                break
        duplicates = tuple(self._duplicates)
        self._duplicates.clear()
        rwnd = self.rwnd()
        self.advertised_rwnd = rwnd
        self.data_packets_unacked = 0
        self.sack_now = False
        self.sack_at = None
        return c.encode_chunk(c.SackChunk(base, rwnd, tuple(gaps), duplicates))
