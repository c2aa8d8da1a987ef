"""The association's parts alone: receiving (TSNs, gaps, reassembly, order), sending
(fragmentation, gap acks, fast retransmit marks) and congestion control."""

from __future__ import annotations

from collections import deque

import pytest

from sockferry.errors import LocalProtocolError
from sockferry.sctp import chunks as c
from sockferry.sctp.congestion import CongestionControl, initial_cwnd
from sockferry.sctp.endpoint import AssocId, Received, UserMessage
from sockferry.sctp.receiving import MAX_DUPLICATES, Receiver
from sockferry.sctp.sending import PacketBuilder, Sender

BASE = 1000  # the peer's initial TSN


def receiver(streams: int = 4, buffer: int = 1 << 20) -> tuple[Receiver, deque[Received]]:
    events: deque[Received] = deque()
    return Receiver(events, AssocId(1), ("10.0.0.1", 5000), initial_tsn=BASE,
                    inbound_streams=streams, receive_buffer=buffer,
                    max_message_size=buffer // 2), events


def data(tsn: int, payload: bytes = b"x", *, stream: int = 0, ssn: int = 0,
         b: bool = True, e: bool = True, unordered: bool = False) -> c.DataChunk:
    return c.DataChunk(tsn & 0xFFFFFFFF, stream, ssn, 0, payload, unordered=unordered,
                       beginning=b, end=e)


def sack_of(rx: Receiver) -> c.SackChunk:
    [chunk] = c.decode_packet(c.encode_packet(1, 2, 3, [rx.build_sack()])).chunks
    assert isinstance(chunk, c.SackChunk)
    return chunk


def test_gap_blocks_and_duplicates_from_crafted_tsns() -> None:
    rx, events = receiver()
    for offset in (0, 1, 3, 4, 7):
        assert rx.receive_data(data(BASE + offset, bytes([offset]), ssn=offset)) is None
    assert rx.receive_data(data(BASE + 1)) is None  # a duplicate
    sack = sack_of(rx)
    assert sack.cumulative_tsn == BASE + 1
    assert sack.gaps == ((2, 3), (6, 6))  # TSNs +3..+4 and +7, as offsets from cum
    assert sack.duplicates == (BASE + 1,)
    assert len(events) == 2  # ssn 0 and 1; 3 and 4 wait for 2
    # The hole filled: the cumulative TSN jumps over what was above it, in order.
    rx.receive_data(data(BASE + 2, bytes([2]), ssn=2))
    assert rx.cumulative_tsn == BASE + 4
    assert [m.data for m in events if isinstance(m, UserMessage)] == [
        bytes([n]) for n in range(5)]
    assert sack_of(rx).gaps == ((3, 3),)


def test_duplicates_are_bounded_per_sack() -> None:
    rx, _ = receiver()
    rx.receive_data(data(BASE))
    for _ in range(MAX_DUPLICATES + 10):
        rx.receive_data(data(BASE))
    assert len(sack_of(rx).duplicates) == MAX_DUPLICATES
    assert sack_of(rx).duplicates == ()  # reported once


def test_reassembly_out_of_order_and_stream_order() -> None:
    rx, events = receiver()
    # Message ssn 1 on stream 2 (three fragments) arrives before ssn 0, scrambled.
    rx.receive_data(data(BASE + 3, b"cc", stream=2, ssn=1, b=False, e=True))
    rx.receive_data(data(BASE + 1, b"aa", stream=2, ssn=1, b=True, e=False))
    assert not events
    rx.receive_data(data(BASE + 2, b"bb", stream=2, ssn=1, b=False, e=False))
    assert not events  # whole, but ssn 0 is not here yet
    rx.receive_data(data(BASE, b"first", stream=2, ssn=0))
    delivered = [m for m in events if isinstance(m, UserMessage)]
    assert [m.data for m in delivered] == [b"first", b"aabbcc"]
    assert rx.held == len(b"first") + 6
    assert rx.cumulative_tsn == BASE + 3


def test_unordered_message_skips_the_queue() -> None:
    rx, events = receiver()
    rx.receive_data(data(BASE, b"late", ssn=1))
    rx.receive_data(data(BASE + 1, b"now", unordered=True))
    assert [m.data for m in events if isinstance(m, UserMessage)] == [b"now"]


def test_fragments_on_two_streams_are_a_violation() -> None:
    rx, _ = receiver()
    rx.receive_data(data(BASE, b"aaaa", stream=0, b=True, e=False))
    problem = rx.receive_data(data(BASE + 1, b"bbbb", stream=1, b=False, e=True))
    assert isinstance(problem, c.Violation)
    assert problem.cause.code == c.CauseCode.PROTOCOL_VIOLATION


def test_empty_data_and_unknown_stream() -> None:
    rx, events = receiver(streams=2)
    problem = rx.receive_data(data(BASE, b""))
    assert isinstance(problem, c.Violation) and problem.cause.code == c.CauseCode.NO_USER_DATA
    report = rx.receive_data(data(BASE, stream=5))
    assert isinstance(report, c.Cause)
    assert report.code == c.CauseCode.INVALID_STREAM_IDENTIFIER
    assert rx.cumulative_tsn == BASE and not events  # acknowledged, not delivered


def test_full_window_drops_new_data_and_release_reopens_it() -> None:
    rx, events = receiver(buffer=10)
    rx.receive_data(data(BASE, b"123456"))
    rx.receive_data(data(BASE + 1, b"789012"))  # over the buffer: dropped
    assert rx.cumulative_tsn == BASE and rx.rwnd() == 4
    assert [m.data for m in events if isinstance(m, UserMessage)] == [b"123456"]
    sack_of(rx)
    assert rx.release(6, threshold=5)  # the window grew by 6 since the SACK
    assert rx.rwnd() == 10


def test_delayed_sack_every_second_packet() -> None:
    rx, _ = receiver()
    rx.receive_data(data(BASE))
    rx.after_packet(5.0, 0.2)
    assert not rx.sack_now and rx.sack_at == pytest.approx(5.2)
    rx.receive_data(data(BASE + 1))
    rx.after_packet(5.1, 0.2)
    assert rx.sack_now


# -------------------------------------------------------------------------------------


def sender() -> tuple[Sender, list[bytes], list[float]]:
    samples: list[float] = []
    tx = Sender(1, 1 << 20, outbound_streams=2, max_payload=1000, max_burst=4,
                measure_rtt=samples.append)
    return tx, [], samples


def builder(outbox: list[bytes], size: int = 1100) -> PacketBuilder:
    return PacketBuilder(outbox, 1, 2, 0xABCD, size)


def test_messages_are_cut_to_the_path_and_bursts_are_bounded() -> None:
    tx, outbox, _ = sender()
    tx.enqueue_message(bytes(10_000), 0, 7, False, streams=2, max_message_size=1 << 20)
    tx.send_new_data(builder(outbox), cwnd=1 << 20, now=0.0)
    assert len(outbox) == 4  # Max.Burst
    chunks = [ch for p in outbox for ch in c.decode_packet(p).chunks]
    assert all(isinstance(ch, c.DataChunk) for ch in chunks)
    assert chunks[0].beginning and not chunks[0].end  # type: ignore[union-attr]
    assert [ch.tsn for ch in chunks] == [1, 2, 3, 4]  # type: ignore[union-attr]
    assert tx.flight == sum(len(ch.payload) for ch in chunks)  # type: ignore[union-attr]
    assert tx.buffered_amount == 10_000


def test_misuse_is_a_local_protocol_error() -> None:
    tx, _, _ = sender()
    with pytest.raises(LocalProtocolError, match="stream 2 is not open"):
        tx.enqueue_message(b"x", 2, 0, False, streams=2, max_message_size=10)
    with pytest.raises(LocalProtocolError, match="empty"):
        tx.enqueue_message(b"", 0, 0, False, streams=2, max_message_size=10)
    with pytest.raises(LocalProtocolError, match="over the limit"):
        tx.enqueue_message(bytes(11), 0, 0, False, streams=2, max_message_size=10)


def _sent(count: int) -> tuple[Sender, CongestionControl, list[float]]:
    tx, outbox, samples = sender()
    for _ in range(count):
        tx.enqueue_message(bytes(1000), 0, 0, False, streams=2, max_message_size=1 << 20)
    tx.send_new_data(PacketBuilder(outbox, 1, 2, 3, 100_000), cwnd=1 << 20, now=1.0)
    assert tx.next_tsn == count + 1
    return tx, CongestionControl(rto_initial_s=1, rto_min_s=1, rto_max_s=60, mtu=1452), samples


def test_gap_acks_and_three_misses_mark_a_fast_retransmit() -> None:
    tx, cc, samples = _sent(6)
    cc.cwnd = 20_000
    # TSN 1 acked, 2 lost, 3.. arriving: each SACK reports one more above the hole.
    for highest in (3, 4, 5):
        progress = tx.process_sack(c.SackChunk(1, 1 << 20, ((2, highest - 1),)), cc, 1.5)
        assert progress is True
    assert samples == [pytest.approx(0.5)]  # TSN 1 was timed
    assert tx.marked == 1 and cc.fast_recovery_exit == 6
    assert cc.cwnd == cc.ssthresh == 10_000  # halved once
    assert tx.flight == 1000  # TSN 6 only: 3..5 acked, 2 marked lost
    outbox: list[bytes] = []
    packets = builder(outbox)
    tx.send_retransmissions(packets, cc.cwnd, ignore_cwnd=cc.fast_pending)
    packets.close_packet()
    [again] = [ch for p in outbox for ch in c.decode_packet(p).chunks]
    assert isinstance(again, c.DataChunk) and again.tsn == 2
    # A SACK leaving 3 out again: reneged, so it is no longer counted as acknowledged.
    tx.process_sack(c.SackChunk(2, 1 << 20, ((2, 3),)), cc, 1.6)
    assert [(ch.tsn, ch.acked) for ch in tx.sent] == [(3, False), (4, True), (5, True),
                                                      (6, False)]


def test_a_sack_beyond_what_was_sent_is_a_violation() -> None:
    tx, cc, _ = _sent(2)
    assert isinstance(tx.process_sack(c.SackChunk(3, 0), cc, 1.0), c.Violation)
    assert tx.process_sack(c.SackChunk(2, 0), cc, 1.0) is True
    assert tx.idle and cc.t3_at is None


def test_cwnd_slow_start_avoidance_and_t3_collapse() -> None:
    mtu = 1452
    cc = CongestionControl(rto_initial_s=1, rto_min_s=1, rto_max_s=60, mtu=mtu)
    cc.reset(peer_rwnd=10 * mtu)
    start = initial_cwnd(mtu)
    assert cc.cwnd == start == 4404  # min(4·MTU, max(2·MTU, 4404))
    cc.on_cumulative_ack(10, acked=5000, flight_before=start)
    assert cc.cwnd == start + mtu  # slow start: at most one MTU per SACK
    cc.on_cumulative_ack(11, acked=5000, flight_before=cc.cwnd - 1)
    assert cc.cwnd == start + mtu  # the window was not in use: no growth
    cc.ssthresh = cc.cwnd - 1  # congestion avoidance from here
    before = cc.cwnd
    cc.on_cumulative_ack(12, acked=before - 1, flight_before=before)
    assert cc.cwnd == before and cc.partial_bytes_acked == before - 1
    cc.on_cumulative_ack(13, acked=1, flight_before=before)
    assert cc.cwnd == before + mtu and cc.partial_bytes_acked == 0
    rto = cc.rtx.rto_s
    cc.on_t3_expired()
    assert cc.cwnd == mtu and cc.ssthresh == max((before + mtu) // 2, 4 * mtu)
    assert cc.rtx.rto_s == 2 * rto


def test_fast_recovery_halves_once_and_holds_growth_until_exit() -> None:
    cc = CongestionControl(rto_initial_s=1, rto_min_s=1, rto_max_s=60, mtu=1000)
    cc.cwnd = 40_000
    cc.enter_fast_recovery(100)
    cc.enter_fast_recovery(120)  # still recovering: no second halving
    assert cc.cwnd == cc.ssthresh == 20_000 and cc.fast_recovery_exit == 100
    cc.on_cumulative_ack(99, acked=5000, flight_before=30_000)
    assert cc.cwnd == 20_000  # no growth during recovery
    cc.on_cumulative_ack(100, acked=5000, flight_before=30_000)
    # out of recovery, and slow start again (cwnd <= ssthresh): one MTU more
    assert cc.fast_recovery_exit is None and cc.cwnd == 21_000
