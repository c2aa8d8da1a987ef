"""The send side of one association (pure): RFC 9260 §6.1, §6.2.1, §6.10, §7.2.4.

Messages wait whole in a queue and are cut into DATA chunks only as they go out (lazy
fragmentation), so a message queued while the association is still being set up, or
behind a full window, is cut to the path's size of the moment.  A chunk keeps its TSN
until the peer acknowledges it cumulatively; Gap Ack Blocks and miss reports mark it
acknowledged, reneged or due for retransmission.  ``PacketBuilder`` bundles control
chunks and DATA into packets of at most the path's size.  How much may be in flight is
the congestion controller's word (``congestion.py``), passed in as ``cwnd``.

TSNs are unbounded integers here; only the wire carries their low 32 bits.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from sockferry.errors import LocalProtocolError
from sockferry.sctp import chunks as c
from sockferry.sctp.checksum import crc32c
from sockferry.sctp.congestion import CongestionControl
from sockferry.serial import unwrap


class OutgoingChunk:
    """A DATA chunk from the moment it gets its TSN until it is cumulatively acked."""

    __slots__ = ("acked", "fast_retransmitted", "header", "in_flight", "marked", "misses",
                 "payload", "sent_at", "sent_count", "size", "tsn")

    def __init__(self, tsn: int, header: bytes, payload: memoryview, now: float) -> None:
        self.tsn = tsn
        self.header = header
        self.payload = payload
        self.size = len(payload)
        self.sent_at = now
        self.sent_count = 1
        self.acked = False
        self.in_flight = True
        self.marked = False
        self.fast_retransmitted = False
        self.misses = 0


class PendingMessage:
    """A queued message; cut into DATA chunks only when it is sent (lazy fragmentation)."""

    __slots__ = ("data", "offset", "ppid", "ssn", "stream", "unordered")

    def __init__(self, data: memoryview, stream: int, ssn: int, ppid: int,
                 unordered: bool) -> None:
        self.data = data
        self.offset = 0
        self.stream = stream
        self.ssn = ssn
        self.ppid = ppid
        self.unordered = unordered


class PacketBuilder:
    """Packs chunks into packets of at most ``max_size`` bytes, CRC computed per packet,
    appended to ``outbox``."""

    __slots__ = ("_local_port", "_max_size", "_outbox", "_parts", "_peer_port", "_size",
                 "_tag", "has_data", "packets")

    def __init__(self, outbox: list[bytes], local_port: int, peer_port: int, tag: int,
                 max_size: int) -> None:
        self._outbox = outbox
        self._local_port = local_port
        self._peer_port = peer_port
        self._tag = tag
        self._max_size = max_size
        self._parts: list[bytes | memoryview] = []
        self._size = c.COMMON_HEADER_SIZE
        self.packets = 0
        self.has_data = False

    def room(self) -> int:
        """Payload bytes that still fit in the current packet after a DATA header."""
        return self._max_size - self._size - c.DATA_HEADER_SIZE

    def _make_room(self, length: int) -> None:
        if self._size + length > self._max_size and self._parts:
            self.close_packet()

    def add_control(self, chunk: bytes) -> None:
        self._make_room(len(chunk))
        self._parts.append(chunk)
        self._size += len(chunk)

    def add_control_first(self, chunk: bytes) -> None:
        """A SACK goes ahead of the DATA it would otherwise wait behind."""
        if self.packets and not self._parts:
            self.add_control(chunk)
            return
        if self._size + len(chunk) > self._max_size:
            self.close_packet()
            self.add_control(chunk)
            return
        self._parts.insert(0, chunk)
        self._size += len(chunk)

    def add_data(self, header: bytes, payload: memoryview) -> None:
        length = c.DATA_HEADER_SIZE + len(payload)
        self._make_room(length)
        self._parts.append(header)
        self._parts.append(payload)
        padding = -len(payload) & 3
        if padding:
            self._parts.append(bytes(padding))
        self._size += length + padding
        self.has_data = True

    def close_packet(self) -> None:
        if not self._parts:
            return
        header = c.COMMON_HEADER.pack(self._local_port, self._peer_port, self._tag, 0)
        crc = crc32c(header, 0)
        for part in self._parts:
            crc = crc32c(part, crc)
        header = header[:8] + c.CHECKSUM.pack(crc)
        self._outbox.append(b"".join([header, *self._parts]))
        self._parts = []
        self._size = c.COMMON_HEADER_SIZE
        self.packets += 1


class Sender:
    """Queued messages, DATA chunks in flight, and what the peer's SACKs say of them.

    ``flight`` counts bytes sent and neither acknowledged nor marked lost; ``marked``
    counts chunks waiting for retransmission; ``sent`` is ordered by TSN and starts just
    above the cumulative ack.
    """

    __slots__ = ("_gap_acked", "_max_burst", "_max_payload", "_measure_rtt", "_next_ssn",
                 "_rtt_sent_at", "_rtt_tsn", "cumulative_ack", "flight", "marked",
                 "next_tsn", "peer_rwnd", "pending", "pending_bytes", "sent", "sent_bytes")

    def __init__(self, initial_tsn: int, peer_rwnd: int, *, outbound_streams: int,
                 max_payload: int, max_burst: int,
                 measure_rtt: Callable[[float], None]) -> None:
        self.next_tsn = initial_tsn
        self.cumulative_ack = initial_tsn - 1
        self.sent: list[OutgoingChunk] = []
        self.pending: deque[PendingMessage] = deque()
        self.pending_bytes = 0
        self.sent_bytes = 0
        self.flight = 0
        self.marked = 0
        self.peer_rwnd = peer_rwnd
        self._next_ssn = [0] * max(outbound_streams, 1)
        self._max_payload = max_payload
        self._max_burst = max_burst
        # One chunk at a time is timed for an RTT sample (§6.3.1 C4), never a resent one.
        self._measure_rtt = measure_rtt
        self._rtt_tsn: int | None = None
        self._rtt_sent_at = 0.0
        self._gap_acked = False

    @property
    def buffered_amount(self) -> int:
        """Bytes queued or in flight, not yet acknowledged by the peer."""
        return self.pending_bytes + self.sent_bytes

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing waiting for an acknowledgement."""
        return not self.sent and not self.pending

    def set_max_payload(self, max_payload: int) -> None:
        self._max_payload = max_payload

    def enqueue_message(self, data: bytes, stream: int, ppid: int, unordered: bool, *,
                        streams: int, max_message_size: int) -> None:
        """A user's message; arguments out of range are the caller's bug."""
        if not 0 <= stream < streams:
            raise LocalProtocolError(f"stream {stream} is not open: the association has "
                                     f"{streams} outbound streams (0 to {streams - 1})")
        if not 0 <= ppid <= 0xFFFFFFFF:
            raise LocalProtocolError(f"payload protocol identifier {ppid} does not fit 32 "
                                     "bits")
        if not data:
            raise LocalProtocolError("SCTP cannot send an empty message (RFC 9260 §6.2)")
        if len(data) > max_message_size:
            raise LocalProtocolError(f"a message of {len(data)} bytes is over the limit of "
                                     f"{max_message_size} bytes")
        self.enqueue(memoryview(data), stream, ppid, unordered)

    def enqueue(self, data: memoryview, stream: int, ppid: int, unordered: bool) -> None:
        ssn = 0
        if not unordered:
            if stream >= len(self._next_ssn):
                self._next_ssn.extend([0] * (stream + 1 - len(self._next_ssn)))
            ssn = self._next_ssn[stream]
            self._next_ssn[stream] = (ssn + 1) & 0xFFFF
        self.pending.append(PendingMessage(data, stream, ssn, ppid, unordered))
        self.pending_bytes += len(data)

    def requeue(self, messages: list[PendingMessage], outbound_streams: int) -> None:
        """Messages queued before the association's parameters changed, sent anew (on
        the streams that still exist)."""
        for message in messages:
            if message.stream < outbound_streams:
                self.enqueue(message.data, message.stream, message.ppid, message.unordered)

    def clear(self) -> None:
        self.pending.clear()
        self.sent.clear()

    # -----------------------------------------------------------------------------------
    # Transmission: retransmissions first, then new DATA (§6.1)

    def send_retransmissions(self, builder: PacketBuilder, cwnd: int,
                             ignore_cwnd: bool) -> None:
        """Marked chunks, in TSN order, while the window allows; ``ignore_cwnd`` for the
        first packet of a fast retransmission (§7.2.4)."""
        for chunk in self.sent:
            if not self.marked:
                break
            if not chunk.marked:
                continue
            if self.flight >= cwnd and not (ignore_cwnd and builder.packets == 0):
                break
            chunk.marked = False
            self.marked -= 1
            chunk.in_flight = True
            chunk.sent_count += 1
            chunk.misses = 0
            self.flight += chunk.size
            builder.add_data(chunk.header, chunk.payload)
            if chunk.tsn == self._rtt_tsn:
                self._rtt_tsn = None  # Karn: no RTT from a retransmitted chunk

    def send_new_data(self, builder: PacketBuilder, cwnd: int, now: float) -> None:
        """Queued messages cut into chunks, at most Max.Burst packets (§6.1 D)."""
        max_payload = self._max_payload
        burst_end = builder.packets + self._max_burst
        pending = self.pending
        while pending and self.flight < cwnd and builder.packets < burst_end:
            message = pending[0]
            remaining = len(message.data) - message.offset
            size = min(remaining, builder.room(), max_payload)
            if size < remaining:
                size &= ~3  # keep middle fragments free of padding
            if size < min(remaining, max_payload // 4):
                builder.close_packet()  # too little room left: start a fresh packet
                continue
            if self.flight and size > self.peer_rwnd:  # §6.1 A
                size = self.peer_rwnd & ~3
                if size < min(remaining, max_payload // 4):
                    break
            self._send_fragment(message, size, builder, now)

    def _send_fragment(self, message: PendingMessage, size: int, builder: PacketBuilder,
                       now: float) -> None:
        start = message.offset
        payload = message.data[start:start + size]
        message.offset += size
        end = message.offset == len(message.data)
        flags = ((c.FLAG_END if end else 0) | (c.FLAG_BEGINNING if start == 0 else 0)
                 | (c.FLAG_UNORDERED if message.unordered else 0))
        tsn = self.next_tsn
        self.next_tsn += 1
        header = c.DATA_HEADER.pack(c.ChunkType.DATA, flags, c.DATA_HEADER_SIZE + size,
                                    tsn & 0xFFFFFFFF, message.stream, message.ssn,
                                    message.ppid)
        self.sent.append(OutgoingChunk(tsn, header, payload, now))
        self.sent_bytes += size
        self.flight += size
        self.peer_rwnd = max(0, self.peer_rwnd - size)
        self.pending_bytes -= size
        if end:
            self.pending.popleft()
        if self._rtt_tsn is None:
            self._rtt_tsn = tsn
            self._rtt_sent_at = now
        builder.add_data(header, payload)

    # -----------------------------------------------------------------------------------
    # Acknowledgements (§6.2.1)

    def process_sack(self, sack: c.SackChunk, congestion: CongestionControl,
                     now: float) -> c.Violation | bool:
        """A SACK (or the cumulative TSN of a SHUTDOWN): chunks acknowledged, marked for
        fast retransmit, the window and T3-rtx moved.  True when it acknowledged
        something new (the peer is alive)."""
        previous = self.cumulative_ack
        cum = unwrap(sack.cumulative_tsn, previous, 32)
        if cum < previous:
            return False  # an old SACK, overtaken by a newer one
        if cum >= self.next_tsn:
            return c.Violation(c.Cause(c.CauseCode.PROTOCOL_VIOLATION, b"SACK beyond sent"),
                               "the peer acknowledged data that was never sent")
        flight_before = self.flight
        newly_acked, highest_new = self.ack_cumulative(cum, now)
        gap_bytes, gap_highest = self.ack_gaps(sack.gaps)
        highest_new = max(highest_new, gap_highest)
        if highest_new >= 0 and self.count_misses(highest_new):
            congestion.enter_fast_recovery(self.next_tsn - 1)
        if cum > previous:
            congestion.on_cumulative_ack(cum, newly_acked, flight_before)
            # §6.3.2 R2/R3
            congestion.t3_at = now + congestion.rtx.rto_s if self.sent else None
        self.peer_rwnd = max(0, sack.a_rwnd - self.flight)
        if not self.sent:
            congestion.t3_at = None
        return bool(newly_acked or gap_bytes)

    def ack_cumulative(self, cum: int, now: float) -> tuple[int, int]:
        """Drop the chunks up to ``cum``: (bytes newly acknowledged, ``cum`` or -1 when
        nothing was)."""
        sent = self.sent
        count = 0
        acked_bytes = 0
        for chunk in sent:
            if chunk.tsn > cum:
                break
            count += 1
            if chunk.in_flight:
                self.flight -= chunk.size
            if not chunk.acked:
                acked_bytes += chunk.size
            if chunk.marked:
                self.marked -= 1
            self.sent_bytes -= chunk.size
        if count == 0:
            return 0, -1
        if self._rtt_tsn is not None and self._rtt_tsn <= cum:
            self._measure_rtt(now - self._rtt_sent_at)
            self._rtt_tsn = None
        del sent[:count]
        self.cumulative_ack = cum
        return acked_bytes, cum

    def ack_gaps(self, gaps: tuple[tuple[int, int], ...]) -> tuple[int, int]:
        """Mark chunks in Gap Ack Blocks (offsets from the cumulative ack, already
        applied); a chunk left out again was reneged on.  (bytes newly acknowledged,
        the highest TSN newly acknowledged or -1)."""
        sent = self.sent
        if not sent or not (gaps or self._gap_acked):
            return 0, -1
        # Everything up to the cumulative ack is gone, so sent[i] is TSN cum + 1 + i.
        acked_now: set[int] = set()
        for start, end in gaps:
            acked_now.update(range(max(start - 1, 0), min(end, len(sent))))
        self._gap_acked = bool(acked_now)
        newly = 0
        highest = -1
        for index, chunk in enumerate(sent):
            if index in acked_now:
                if not chunk.acked:
                    chunk.acked = True
                    newly += chunk.size
                    highest = chunk.tsn
                    if chunk.in_flight:
                        chunk.in_flight = False
                        self.flight -= chunk.size
                    if chunk.marked:
                        chunk.marked = False
                        self.marked -= 1
            elif chunk.acked:
                chunk.acked = False  # reneged: the T3 timer will resend it
        return newly, highest

    def count_misses(self, highest_new: int) -> bool:
        """§7.2.4: a SACK that newly acknowledged ``highest_new`` reports every chunk
        below it still missing; the third report marks one for fast retransmit.  True
        when one was."""
        marked = False
        for chunk in self.sent:
            if chunk.tsn >= highest_new:
                break
            if chunk.acked or chunk.fast_retransmitted:
                continue
            chunk.misses += 1
            if chunk.misses >= 3:
                chunk.fast_retransmitted = True
                self.mark(chunk)
                marked = True
        return marked

    def mark(self, chunk: OutgoingChunk) -> None:
        """Due for retransmission, and no longer counted in flight."""
        if not chunk.marked:
            chunk.marked = True
            self.marked += 1
        if chunk.in_flight:
            chunk.in_flight = False
            self.flight -= chunk.size

    def mark_all_unacked(self) -> None:
        """§6.3.3 E3: the T3 timer expired: everything not acknowledged goes again."""
        for chunk in self.sent:
            if not chunk.acked:
                self.mark(chunk)
        self._rtt_tsn = None
