"""The association's parts alone: receiving (TSNs, gaps, reassembly, order), sending
(fragmentation, gap acks, fast retransmit marks), congestion control, and the parts that
drive an association (handshake, shutdown, heartbeats) on a host of their own."""

from __future__ import annotations

import random
import struct
from collections import deque

import pytest

from sockferry.errors import LocalProtocolError
from sockferry.rto import RetransmitTimer
from sockferry.sctp import chunks as c
from sockferry.sctp.config import Config
from sockferry.sctp.congestion import CLOCK_GRANULARITY_S, CongestionControl, initial_cwnd
from sockferry.sctp.cookie import CookieState
from sockferry.sctp.endpoint import AssocId, AssocState, Received, UserMessage
from sockferry.sctp.handshake import Handshake
from sockferry.sctp.heartbeat import Heartbeat
from sockferry.sctp.receiving import MAX_DUPLICATES, Receiver
from sockferry.sctp.sending import PacketBuilder, Sender
from sockferry.sctp.shutdown import Shutdown
from sockferry.sctp.states import AssociationState as S

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


# -------------------------------------------------------------------------------------
# The parts that drive an association, each on a host that keeps what it is asked to do
# (HandshakeHost, ShutdownHost and HeartbeatHost) with real send and receive parts.


class Host:
    def __init__(self, state: S = S.ESTABLISHED, max_retrans: int = 2) -> None:
        self.assoc_id = AssocId(1)
        self.peer = ("10.0.0.1", 5000)
        self.state = state
        self.my_tag, self.peer_tag, self.my_initial_tsn = 0x1111, 0x2222, 1
        self.outbound_streams = self.inbound_streams = 2
        self.error_count = 0
        self.max_retrans = max_retrans
        self.control: list[c.Chunk] = []  # queued to go with the next packet
        self.packets: list[bytes] = []  # sent at once
        self.sacks: list[c.SackChunk] = []
        self.errors: list[c.ErrorChunk] = []
        self.changes: list[tuple[AssocState, str]] = []
        self.transmits = 0
        self.reset_transfer_state(1, BASE, 1 << 20)

    def enter(self, state: S) -> None:
        self.state = state

    def reset_transfer_state(self, my_tsn: int, peer_tsn: int, peer_rwnd: int) -> None:
        self.sender = Sender(my_tsn, peer_rwnd, outbound_streams=self.outbound_streams,
                             max_payload=1000, max_burst=4, measure_rtt=lambda _s: None)
        self.receiver = Receiver(deque(), self.assoc_id, self.peer, initial_tsn=peer_tsn,
                                 inbound_streams=self.inbound_streams,
                                 receive_buffer=1 << 20, max_message_size=1 << 19)

    def adopt(self, cookie: CookieState, now: float) -> None:
        self.my_tag, self.peer_tag = cookie.my_tag, cookie.peer_tag
        self.outbound_streams = cookie.outbound_streams
        self.inbound_streams = cookie.inbound_streams
        self.reset_transfer_state(cookie.my_initial_tsn, cookie.peer_initial_tsn,
                                  cookie.peer_a_rwnd)

    def establish(self, change: AssocState) -> None:
        self.state = S.ESTABLISHED
        self.changes.append((change, ""))

    def queue_control(self, chunk: c.Chunk) -> None:
        self.control.append(chunk)

    def send_packet(self, chunks: list[bytes], tag: int | None = None) -> None:
        self.packets.append(c.encode_packet(1, 2, self.peer_tag if tag is None else tag,
                                            chunks))

    def sent(self) -> list[c.Packet]:
        return [c.decode_packet(p) for p in self.packets]

    def transmit(self, now: float) -> None:
        self.transmits += 1

    def on_sack(self, chunk: c.SackChunk, now: float) -> None:
        self.sacks.append(chunk)

    def on_error(self, chunk: c.ErrorChunk, now: float) -> None:
        self.errors.append(chunk)

    def abort(self, reason: str, now: float) -> None:
        self.close(AssocState.CANT_STR_ASSOC, reason)

    def abort_with(self, cause: c.Cause, reason: str) -> None:
        self.close(AssocState.COMM_LOST, reason)

    def close(self, change: AssocState, reason: str = "") -> None:
        self.state = S.CLOSED
        self.changes.append((change, reason))

    def count_error(self, what: str) -> bool:
        self.error_count += 1
        if self.error_count > self.max_retrans:
            self.close(AssocState.COMM_LOST, what)
            return True
        return False


def rtx() -> RetransmitTimer:
    return RetransmitTimer(max_s=60, min_s=1, initial_s=1, granularity_s=CLOCK_GRANULARITY_S)


def in_flight(host: Host, *sizes: int) -> None:
    for size in sizes:
        host.sender.enqueue_message(bytes(size), 0, 0, False, streams=2,
                                    max_message_size=1 << 20)
    host.sender.send_new_data(PacketBuilder([], 1, 2, 3, 100_000), cwnd=1 << 20, now=0.0)


def acknowledge_all(host: Host) -> None:
    cc = CongestionControl(rto_initial_s=1, rto_min_s=1, rto_max_s=60, mtu=1452)
    assert host.sender.process_sack(c.SackChunk(host.sender.next_tsn - 1, 1 << 20), cc, 0.1)
    assert host.sender.idle


def test_our_shutdown_drains_first_and_is_repeated_under_t2_until_given_up() -> None:
    host = Host()
    timer = rtx()
    shutdown = Shutdown(host, timer)
    in_flight(host, 100)
    shutdown.start(0.0)
    assert host.state is S.SHUTDOWN_PENDING and host.transmits == 1
    shutdown.maybe_finish(0.1)
    assert host.control == [] and shutdown.t2_at is None  # TSN 1 is not acknowledged yet
    acknowledge_all(host)
    shutdown.maybe_finish(0.2)
    assert host.state is S.SHUTDOWN_SENT
    assert host.control == [c.ShutdownChunk(BASE - 1)]
    assert shutdown.t2_at == pytest.approx(1.2)
    # DATA that still arrives is answered with SHUTDOWN and a SACK at once.
    host.receiver.receive_data(data(BASE))
    shutdown.answer_data(0.5)
    assert host.control[-1] == c.ShutdownChunk(BASE) and host.receiver.sack_now
    assert shutdown.t2_at == pytest.approx(1.5)
    # T2: SHUTDOWN again after a doubled RTO each time, every one an error (§8.1).
    host.control.clear()
    shutdown.on_t2(1.5)
    assert host.control == [c.ShutdownChunk(BASE)] and shutdown.t2_at == pytest.approx(3.5)
    shutdown.on_t2(3.5)
    assert len(host.control) == 2 and shutdown.t2_at == pytest.approx(7.5)
    shutdown.on_t2(7.5)
    assert len(host.control) == 2 and host.changes == [(AssocState.COMM_LOST, "SHUTDOWN")]


def test_the_peers_shutdown_acknowledges_and_is_answered_once_we_drained() -> None:
    host = Host()
    shutdown = Shutdown(host, rtx())
    in_flight(host, 100, 100)
    window = host.sender.peer_rwnd + host.sender.flight
    shutdown.on_shutdown(c.ShutdownChunk(1), 0.0)  # its cumulative TSN acknowledges TSN 1
    assert host.sacks == [c.SackChunk(1, window)]
    assert host.state is S.SHUTDOWN_RECEIVED
    shutdown.on_shutdown(c.ShutdownChunk(0), 0.1)  # nothing new: no SACK made of it
    assert len(host.sacks) == 1
    shutdown.maybe_finish(0.1)
    assert host.control == []  # TSN 2 still unacknowledged: no SHUTDOWN ACK yet
    acknowledge_all(host)
    shutdown.maybe_finish(0.2)
    assert host.state is S.SHUTDOWN_ACK_SENT and host.control == [c.ShutdownAckChunk()]
    assert shutdown.t2_at == pytest.approx(1.2)
    shutdown.on_shutdown(c.ShutdownChunk(2), 0.3)  # our SHUTDOWN ACK was lost
    shutdown.resend_ack(0.4)  # and so is an INIT answered in SHUTDOWN-ACK-SENT
    assert host.control == [c.ShutdownAckChunk()] * 3 and host.transmits == 1
    shutdown.on_shutdown_complete(c.ShutdownCompleteChunk(), 0.5)
    assert host.changes == [(AssocState.SHUTDOWN_COMP, "")]


def test_both_sides_shutting_down_and_shutdown_ack_completing() -> None:
    host = Host(S.SHUTDOWN_SENT)
    shutdown = Shutdown(host, rtx())
    shutdown.on_shutdown(c.ShutdownChunk(0), 0.0)
    assert host.state is S.SHUTDOWN_ACK_SENT and host.control == [c.ShutdownAckChunk()]
    host = Host(S.SHUTDOWN_SENT)
    shutdown = Shutdown(host, rtx())
    shutdown.on_shutdown_ack(c.ShutdownAckChunk(), 0.0)
    [complete] = host.sent()
    assert complete.chunks == [c.ShutdownCompleteChunk()] and complete.verification_tag == 0x2222
    assert host.changes == [(AssocState.SHUTDOWN_COMP, "")]


def test_a_shutdown_before_the_association_is_up_aborts_and_later_ones_do_nothing() -> None:
    host = Host(S.COOKIE_ECHOED)
    Shutdown(host, rtx()).start(0.0)
    assert host.changes == [(AssocState.CANT_STR_ASSOC,
                             "shut down before the association was up")]
    host = Host(S.SHUTDOWN_RECEIVED)
    Shutdown(host, rtx()).start(0.0)
    assert host.state is S.SHUTDOWN_RECEIVED and host.transmits == 0


def handshake(host: Host, config: Config | None = None) -> tuple[Handshake, RetransmitTimer,
                                                                  Heartbeat]:
    timer = rtx()
    rng = random.Random(5)
    beat = Heartbeat(host, 30.0, timer, rng.randbytes)
    return Handshake(host, config or Config(), timer, beat, rng.randbytes), timer, beat


def init_ack(tag: int = 0x5555, inbound: int = 3, cookie: bytes = b"cookie") -> c.InitAckChunk:
    return c.InitAckChunk(tag, 50_000, 7, inbound, 900,
                          (c.Param(c.ParamType.STATE_COOKIE, cookie),))


def test_init_then_cookie_echo_are_resent_under_t1_until_given_up() -> None:
    host = Host(S.CLOSED)
    hs, timer, _ = handshake(host, Config(max_init_retransmits=2))
    hs.start(0.0)
    assert host.state is S.COOKIE_WAIT and host.my_tag != 0
    [first] = host.sent()
    [init] = first.chunks
    assert first.verification_tag == 0  # §8.5.1
    assert isinstance(init, c.InitChunk) and init.initiate_tag == host.my_tag
    assert init.initial_tsn == host.my_initial_tsn == host.sender.next_tsn
    assert hs.t1_at == pytest.approx(1.0)
    hs.on_t1(1.0)
    assert host.packets[-1] == host.packets[0] and hs.t1_at == pytest.approx(3.0)
    # Messages queued meanwhile survive the INIT ACK, on the streams that still exist.
    for stream in (1, 5):
        host.sender.enqueue_message(b"early", stream, 0, False, streams=10,
                                    max_message_size=100)
    hs.on_init_ack(init_ack(inbound=3), 3.0)
    assert host.state is S.COOKIE_ECHOED and host.peer_tag == 0x5555
    assert (host.outbound_streams, host.inbound_streams) == (3, 7)
    assert [m.stream for m in host.sender.pending] == [1]
    echo = host.sent()[-1]
    assert echo.verification_tag == 0x5555 and echo.chunks == [c.CookieEchoChunk(b"cookie")]
    # The INIT ACK restarts the count: two more COOKIE ECHOs, then CANT_STR_ASSOC.
    for expiry in (1, 2):
        hs.on_t1(10.0 * expiry)
        assert host.packets[-1] == host.packets[2]
    hs.on_t1(30.0)
    assert host.changes == [(AssocState.CANT_STR_ASSOC,
                             "no answer to COOKIE ECHO after 3 tries")]
    assert timer.rto_s == pytest.approx(16.0)  # backed off at each expiry


def test_an_init_ack_with_a_zero_tag_aborts() -> None:
    host = Host(S.CLOSED)
    hs, _, _ = handshake(host)
    hs.start(0.0)
    hs.on_init_ack(init_ack(tag=0), 0.1)
    assert host.changes == [(AssocState.COMM_LOST,
                             "the peer's INIT ACK has a zero tag or stream count")]


def test_a_stale_cookie_is_asked_again_and_cookie_ack_establishes() -> None:
    host = Host(S.CLOSED)
    hs, timer, beat = handshake(host)
    hs.start(0.0)
    hs.on_init_ack(init_ack(), 0.1)
    other = c.ErrorChunk((c.Cause(c.CauseCode.OUT_OF_RESOURCE),))
    hs.on_error(other, 0.2)
    assert host.errors == [other] and host.state is S.COOKIE_ECHOED
    stale = c.Cause(c.CauseCode.STALE_COOKIE, struct.pack("!I", 5000))  # 5 ms too late
    hs.on_error(c.ErrorChunk((stale,)), 0.2)
    assert host.state is S.COOKIE_WAIT
    [again] = host.sent()[-1].chunks
    assert isinstance(again, c.InitChunk)
    assert c.Param(c.ParamType.COOKIE_PRESERVATIVE, struct.pack("!I", 11)) in again.params
    hs.on_init_ack(init_ack(cookie=b"fresh"), 0.3)
    hs.on_cookie_ack(c.CookieAckChunk(), 0.35)
    assert host.changes == [(AssocState.COMM_UP, "")]
    assert timer.srtt_s == pytest.approx(0.05)  # the COOKIE ECHO went once: an RTT sample
    assert beat.at is not None and beat.at > 30


def cookie(my_tag: int, peer_tag: int, ties: tuple[int, int] = (0, 0)) -> CookieState:
    return CookieState(my_tag, peer_tag, 500, 700, 10_000, 2, 2, ties[0], ties[1], 1, 2, 0.0,
                       60.0, "10.0.0.1")


def test_the_cookie_echo_table_of_5_2_4() -> None:
    host = Host()  # ESTABLISHED, our tag 0x1111, the peer's 0x2222
    hs, _, _ = handshake(host)
    assert hs.tie_tags() == (0x1111, 0x2222)
    hs.cookie_echo(cookie(0x3333, 0x4444), 0.0)  # new tags, Tie-Tags not ours: discarded
    hs.cookie_echo(cookie(0x9999, 0x2222), 0.0)  # C: only the peer's tag matches: stale
    assert host.control == [] and host.changes == []
    # A: both tags new and the Tie-Tags ours: the peer restarted.
    hs.cookie_echo(cookie(0x3333, 0x4444, (0x1111, 0x2222)), 0.0)
    assert host.changes == [(AssocState.RESTART, "")]
    assert (host.my_tag, host.peer_tag) == (0x3333, 0x4444)
    assert host.control == [c.CookieAckChunk()]
    # D: both match, already up: COOKIE ACK again and nothing else.
    hs.cookie_echo(cookie(0x3333, 0x4444), 0.0)
    assert host.control == [c.CookieAckChunk()] * 2 and len(host.changes) == 1
    # B: our tag, the peer's new (an INIT collision): what was queued is kept.
    host.sender.enqueue_message(b"queued", 1, 0, False, streams=2, max_message_size=100)
    hs.cookie_echo(cookie(0x3333, 0x5555), 0.0)
    assert host.peer_tag == 0x5555 and len(host.changes) == 1
    assert [bytes(m.data) for m in host.sender.pending] == [b"queued"]


def test_cookie_echoes_during_setup_and_shutdown() -> None:
    host = Host(S.COOKIE_WAIT)
    hs, _, beat = handshake(host)
    assert hs.tie_tags() == (0x1111, 0)
    assert beat.at is None
    hs.cookie_echo(cookie(0x1111, 0x2222), 0.0)  # D in COOKIE-WAIT: up, and probed
    assert host.state is S.ESTABLISHED and host.changes == [(AssocState.COMM_UP, "")]
    assert beat.at is not None and beat.at > 30.0
    host = Host(S.SHUTDOWN_ACK_SENT)
    hs, _, _ = handshake(host)
    hs.cookie_echo(cookie(0x3333, 0x4444, (0x1111, 0x2222)), 0.0)  # no restart now
    assert host.control == [c.ShutdownAckChunk(), c.ErrorChunk((c.Cause(
        c.CauseCode.COOKIE_RECEIVED_WHILE_SHUTTING_DOWN),))]
    assert host.changes == [] and host.my_tag == 0x1111


def test_icmp_ends_only_a_setup_that_it_proves_ours() -> None:
    host = Host(S.CLOSED)
    hs, _, _ = handshake(host)
    hs.start(0.0)
    [init] = host.packets
    forged = init[:16] + bytes(4) + init[20:]  # another Initiate Tag
    assert not hs.unreachable(forged, "refused") and not hs.unreachable(init[:8], "refused")
    assert hs.unreachable(init, "refused")
    assert host.changes == [(AssocState.CANT_STR_ASSOC, "refused")]
    host = Host(S.CLOSED)  # in COOKIE-ECHOED what we sent carries the peer's tag
    hs, _, _ = handshake(host)
    hs.start(0.0)
    hs.on_init_ack(init_ack(tag=0x5555), 0.1)
    echo = host.packets[-1]
    assert not hs.unreachable(c.encode_packet(1, 2, 0x6666, []), "refused")
    assert hs.unreachable(echo, "refused") and host.state is S.CLOSED
    host = Host()  # an established association is left to its timers
    hs, _, _ = handshake(host)
    assert not hs.unreachable(c.encode_packet(1, 2, 0x2222, []), "refused")


def test_heartbeats_probe_an_idle_path_and_count_the_unanswered() -> None:
    host = Host()
    timer = rtx()
    beat = Heartbeat(host, 30.0, timer, random.Random(3).randbytes)
    beat.schedule(0.0, timer.rto_s)
    assert beat.at is not None and 30.5 <= beat.at <= 31.5  # HB.interval + RTO ± 50%
    due = beat.at
    beat.on_timer(due)
    [probe] = host.control
    assert isinstance(probe, c.HeartbeatChunk) and beat.at == pytest.approx(due + 1.0)
    beat.on_heartbeat_ack(c.HeartbeatAckChunk(probe.info[:8] + bytes(8)), due + 0.1)
    assert beat.nonce is not None  # another nonce: not the answer
    host.error_count = 2
    beat.on_heartbeat_ack(c.HeartbeatAckChunk(probe.info), due + 0.25)
    assert host.error_count == 0 and timer.srtt_s == pytest.approx(0.25)
    assert beat.nonce is None and beat.at is not None and beat.at > due + 30
    # Unanswered: the next deadline counts an error and probes again after double the RTO.
    beat.on_timer(beat.at)
    rto = timer.rto_s
    beat.on_timer(beat.at)
    assert host.error_count == 1 and timer.rto_s == 2 * rto and len(host.control) == 3
    # Data in flight probes the path already; outside the DATA states nothing is due.
    in_flight(host, 100)
    beat.on_timer(beat.at)
    assert len(host.control) == 3 and beat.nonce is None and host.error_count == 2
    host.state = S.COOKIE_ECHOED
    beat.on_timer(beat.at)
    assert beat.at is None
    beat.on_heartbeat(c.HeartbeatChunk(b"theirs"), 0.0)  # the peer's, echoed
    assert host.control[-1] == c.HeartbeatAckChunk(b"theirs")
