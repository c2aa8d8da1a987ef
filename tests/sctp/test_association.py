"""Two stacks back to back over an in-memory lossy link, on virtual time."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sockferry.sctp import chunks as c
from sockferry.sctp.config import Config
from sockferry.sctp.endpoint import AssocState, StreamCounts
from tests.lossy import LossyLink, lossy_link
from tests.sctp.harness import Network, Node


def pair(link: LossyLink[Any] | None = None, **kwargs: object) -> tuple[Network, Node, Node]:
    net = Network(link or lossy_link(0))
    client = net.add("127.0.0.1", 5000, **kwargs)  # type: ignore[arg-type]
    server = net.add("127.0.0.2", 6000, **kwargs)  # type: ignore[arg-type]
    return net, client, server


def established(link: LossyLink[Any] | None = None, **kwargs: object) -> tuple[Network, Node, Node]:
    net, client, server = pair(link, **kwargs)
    net.connect(client, server)
    net.run(lambda: client.up() is not None and server.up() is not None)
    return net, client, server


def test_handshake_negotiates_streams() -> None:
    net = Network(lossy_link(0))
    client = net.add("127.0.0.1", 5000, Config(streams=StreamCounts(5, 5)))
    server = net.add("127.0.0.2", 6000, Config(streams=StreamCounts(10, 3)))
    net.connect(client, server)
    net.run(lambda: client.up() is not None and server.up() is not None)
    up_client, up_server = client.changes[0], server.changes[0]
    assert up_client.state == up_server.state == AssocState.COMM_UP
    assert (up_client.outbound_streams, up_client.inbound_streams) == (3, 5)
    assert (up_server.outbound_streams, up_server.inbound_streams) == (5, 3)
    assert up_server.peer == ("127.0.0.1", 5000)


def test_messages_both_ways_with_streams_ppids_and_fragments() -> None:
    net, client, server = established()
    cid, sid = client.up(), server.up()
    assert cid is not None and sid is not None
    big = random.Random(1).randbytes(200_000)  # about 140 fragments at 1452 bytes
    client.stack.send(cid, b"hello", stream=1, ppid=51, unordered=False, now=net.now)
    client.stack.send(cid, big, stream=2, ppid=7, unordered=False, now=net.now)
    client.stack.send(cid, b"fast", stream=3, ppid=9, unordered=True, now=net.now)
    server.stack.send(sid, b"reply", stream=4, ppid=1, unordered=False, now=net.now)
    net.run(lambda: len(server.messages) == 3 and len(client.messages) == 1)
    got = {(m.stream, m.ppid, m.unordered): m.data for m in server.messages}
    assert got == {(1, 51, False): b"hello", (2, 7, False): big, (3, 9, True): b"fast"}
    assert client.messages[0].data == b"reply"
    assert client.messages[0].assoc_id == cid


def _exchange(link: LossyLink[Any], count: int, seed: int) -> None:
    net, client, server = established(link)
    cid = client.up()
    assert cid is not None
    rng = random.Random(seed)
    sent: list[tuple[int, bool, bytes]] = []
    for index in range(count):
        data = index.to_bytes(4, "big") + rng.randbytes(rng.choice([10, 1000, 5000, 30_000]))
        stream, unordered = rng.randrange(4), rng.random() < 0.3
        sent.append((stream, unordered, data))
        client.stack.send(cid, data, stream=stream, ppid=index, unordered=unordered,
                          now=net.now)
    net.run(lambda: len(server.messages) >= count, max_time_s=20_000)
    net.run(lambda: True)
    assert sorted(m.data for m in server.messages) == sorted(d for _, _, d in sent)
    for stream in range(4):
        expected = [d for s, u, d in sent if s == stream and not u]
        delivered = [m.data for m in server.messages if m.stream == stream and not m.unordered]
        assert delivered == expected  # §6.6: in order within a stream


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), loss=st.sampled_from([0.0, 0.05, 0.2]),
       duplicate=st.sampled_from([0.0, 0.1]), reorder=st.sampled_from([0.0, 0.3]))
def test_delivery_survives_a_bad_link(seed: int, loss: float, duplicate: float,
                                      reorder: float) -> None:
    link = lossy_link(seed, loss=loss, duplicate=duplicate, reorder=reorder)
    _exchange(link, 40, seed)


def test_association_fails_when_the_link_dies() -> None:
    net, client, server = established()
    cid = client.up()
    assert cid is not None
    net.link.impairment.loss = 1.0
    client.stack.send(cid, b"into the void", stream=0, ppid=0, unordered=False, now=net.now)
    start = net.now
    net.run(lambda: AssocState.COMM_LOST in client.states()
            and AssocState.COMM_LOST in server.states(), max_time_s=5000)
    # Association.Max.Retrans (10) T3 expiries with RTO doubling up to RTO.Max (60 s)
    assert 300 < net.now - start < 1000
    assert "stopped answering" in client.changes[-1].reason
    assert client.stack.association_ids == [] and server.stack.association_ids == []


def test_peer_restart_is_reported_as_restart() -> None:
    net, client, server = established()
    sid = server.up()
    reborn = net.replace(client)
    net.connect(reborn, server)
    net.run(lambda: reborn.up() is not None and AssocState.RESTART in server.states())
    assert server.changes[-1].assoc_id == sid
    rid = reborn.up()
    assert rid is not None
    reborn.stack.send(rid, b"after restart", stream=0, ppid=0, unordered=False, now=net.now)
    server.stack.send(sid, b"to the new one", stream=0, ppid=0, unordered=False, now=net.now)  # type: ignore[arg-type]
    net.run(lambda: len(server.messages) == 1 and len(reborn.messages) == 1)
    assert reborn.messages[0].data == b"to the new one"


def test_init_collision_gives_one_association_each() -> None:
    net, a, b = pair()
    net.connect(a, b)
    net.connect(b, a)
    net.run(lambda: a.up() is not None and b.up() is not None)
    net.run(lambda: True)
    aid, bid = a.up(), b.up()
    assert aid is not None and bid is not None
    a.stack.send(aid, b"from a", stream=0, ppid=0, unordered=False, now=net.now)
    b.stack.send(bid, b"from b", stream=0, ppid=0, unordered=False, now=net.now)
    net.run(lambda: len(a.messages) == 1 and len(b.messages) == 1)
    assert a.states() == [AssocState.COMM_UP] and b.states() == [AssocState.COMM_UP]
    assert len(a.stack.association_ids) == len(b.stack.association_ids) == 1


def test_graceful_shutdown_delivers_queued_data_first() -> None:
    net, client, server = established(lossy_link(3, loss=0.1))
    cid = client.up()
    assert cid is not None
    for index in range(20):
        client.stack.send(cid, bytes([index]) * 3000, stream=0, ppid=0, unordered=False,
                          now=net.now)
    client.stack.shutdown(cid, net.now)
    net.run(lambda: AssocState.SHUTDOWN_COMP in client.states()
            and AssocState.SHUTDOWN_COMP in server.states(), max_time_s=5000)
    assert [m.data[0] for m in server.messages] == list(range(20))


def test_abort_reaches_the_peer_with_its_reason() -> None:
    net, client, server = established()
    cid = client.up()
    assert cid is not None
    client.stack.abort(cid, "operator said stop", net.now)
    net.run(lambda: AssocState.COMM_LOST in server.states())
    assert "operator said stop" in server.changes[-1].reason
    assert client.changes[-1].state == AssocState.COMM_LOST


def test_unanswered_init_cannot_start() -> None:
    net, client, server = pair()
    net.link.impairment.loss = 1.0
    net.connect(client, server)
    net.run(lambda: AssocState.CANT_STR_ASSOC in client.states(), max_time_s=5000)
    assert "INIT" in client.changes[-1].reason


@pytest.mark.parametrize("packet_size", [508, 1452, 65507])
def test_packets_fit_the_path(packet_size: int) -> None:
    sizes: list[int] = []
    link = lossy_link(0, keep=lambda data, s, d: sizes.append(len(data)) or True)
    net, client, server = established(link, packet_size=packet_size)
    cid = client.up()
    assert cid is not None
    for _ in range(10):
        client.stack.send(cid, bytes(65536), stream=0, ppid=0, unordered=False, now=net.now)
    net.run(lambda: len(server.messages) == 10)
    assert max(sizes) <= packet_size
    assert max(sizes) > packet_size - 64  # full packets, not a fixed small chunk


def _data_packets(data: bytes) -> list[c.DataChunk]:
    return [ch for ch in c.decode_packet(data).chunks if isinstance(ch, c.DataChunk)]


def _sacks(data: bytes) -> list[c.SackChunk]:
    return [ch for ch in c.decode_packet(data).chunks if isinstance(ch, c.SackChunk)]


def test_a_lone_packet_is_acknowledged_after_the_delay() -> None:
    seen: list[tuple[float, bytes]] = []
    net, client, _server = established()
    net.link.keep = lambda data, s, d: seen.append((net.now, data)) or True
    cid = client.up()
    assert cid is not None
    start = net.now
    client.stack.send(cid, b"one", stream=0, ppid=0, unordered=False, now=net.now)
    net.run(lambda: any(_sacks(d) for _, d in seen))
    sack_time = next(t for t, d in seen if _sacks(d))
    # link delay + §6.2 delay
    assert sack_time - start == pytest.approx(net.link.impairment.delay_s + 0.2)


def test_a_lost_packet_is_fast_retransmitted_before_the_timer() -> None:
    dropped: list[int] = []

    def drop_first_tsn_once(data: bytes, source: object, destination: object) -> bool:
        chunks = _data_packets(data)
        if chunks and not dropped and chunks[0].ssn == 0 and chunks[0].stream == 1:
            dropped.append(chunks[0].tsn)
            return False
        return True

    net, client, server = established()
    net.link.keep = drop_first_tsn_once
    cid = client.up()
    assert cid is not None
    start = net.now
    for _ in range(20):
        client.stack.send(cid, bytes(1000), stream=1, ppid=0, unordered=False, now=net.now)
    net.run(lambda: len(server.messages) == 20)
    assert dropped
    assert net.now - start < 0.5  # RTO.Min is 1 s: the gap was repaired by fast retransmit
    assoc = client.stack.association(cid)
    assert assoc is not None


def test_duplicates_are_reported_in_the_sack() -> None:
    seen: list[bytes] = []
    link = lossy_link(0, duplicate=1.0)
    net, client, server = established(link)
    net.link.keep = lambda data, s, d: seen.append(data) or True
    cid = client.up()
    assert cid is not None
    client.stack.send(cid, b"twice", stream=0, ppid=0, unordered=False, now=net.now)
    net.run(lambda: any(s.duplicates for d in seen for s in _sacks(d)))
    assert [m.data for m in server.messages] == [b"twice"]


def test_receiver_window_holds_the_sender_back_until_read() -> None:
    config = Config(receive_buffer=100_000, max_message_size=50_000)
    net, client, server = established(config=config)
    server.read_messages = False
    cid = client.up()
    assert cid is not None
    for _ in range(50):
        client.stack.send(cid, bytes(10_000), stream=0, ppid=0, unordered=False, now=net.now)
    net.run(lambda: len(server.messages) >= 10)
    net.run_for(30)
    assert 10 <= len(server.messages) <= 11  # the window is full; the rest waits
    sid = server.up()
    assert sid is not None
    server.read_messages = True
    server.stack.release(sid, sum(len(m.data) for m in server.messages), net.now)
    net.run(lambda: len(server.messages) == 50, max_time_s=1000)


def test_idle_association_sends_heartbeats_and_survives() -> None:
    kinds: list[type] = []
    net, client, server = established()
    net.link.keep = lambda data, s, d: kinds.extend(
        type(ch) for ch in c.decode_packet(data).chunks) or True
    net.run_for(300)
    assert client.states() == [AssocState.COMM_UP] and server.states() == [AssocState.COMM_UP]
    # §8.3: about one HEARTBEAT per 30 s + RTO from each side, each acknowledged
    assert 10 <= kinds.count(c.HeartbeatChunk) <= 20
    assert kinds.count(c.HeartbeatAckChunk) == kinds.count(c.HeartbeatChunk)


def test_a_stale_cookie_is_asked_again_with_a_preservative() -> None:
    seen: list[c.Chunk] = []
    net = Network(lossy_link(0, delay_s=0.05,
                            keep=lambda data, s, d: seen.extend(
                                c.decode_packet(data).chunks) or True))
    client = net.add("127.0.0.1", 5000)
    server = net.add("127.0.0.2", 6000, Config(valid_cookie_life_s=0.01))
    net.connect(client, server)
    net.run(lambda: client.up() is not None and server.up() is not None)
    assert client.states() == [AssocState.COMM_UP]
    stale = [ch for ch in seen if isinstance(ch, c.ErrorChunk)
             and ch.causes[0].code == c.CauseCode.STALE_COOKIE]
    inits = [ch for ch in seen if isinstance(ch, c.InitChunk)]
    assert len(stale) == 1 and len(inits) == 2
    assert any(p.type == c.ParamType.COOKIE_PRESERVATIVE for p in inits[1].params)


def test_slow_start_grows_cwnd_and_a_timeout_collapses_it() -> None:
    net, client, server = established()
    cid = client.up()
    assert cid is not None
    assoc = client.stack.association(cid)
    assert assoc is not None
    initial = assoc.congestion.cwnd
    for _ in range(100):
        client.stack.send(cid, bytes(10_000), stream=0, ppid=0, unordered=False, now=net.now)
    net.run(lambda: len(server.messages) == 100)
    assert assoc.congestion.cwnd > 10 * initial
    net.link.impairment.loss = 1.0
    client.stack.send(cid, bytes(10_000), stream=0, ppid=0, unordered=False, now=net.now)
    net.run(lambda: assoc.congestion.cwnd == assoc.max_packet_size)
