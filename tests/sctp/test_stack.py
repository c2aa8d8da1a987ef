"""The endpoint core against hand-made packets: cookies, tags, out-of-the-blue, errors."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from sockferry.sctp import chunks as c
from sockferry.sctp.config import Config
from sockferry.sctp.endpoint import AssociationChange, AssocState, StreamCounts
from sockferry.sctp.stack import Stack
from tests.lossy import lossy_link
from tests.sctp.harness import Network, Node
from tests.sctp.test_chunks import CHUNKS

PEER = ("127.0.0.9", 7000)


def server(config: Config | None = None) -> Stack:
    rng = random.Random(7)
    return Stack(6000, config or Config(), secret=b"k" * 32, rng=rng.randbytes,
                 packet_size=lambda _a: 1452)


def packet(tag: int, *chunks: c.Chunk, source: int = 7000, destination: int = 6000) -> bytes:
    return c.encode_packet(source, destination, tag, [c.encode_chunk(ch) for ch in chunks])


def replies(stack: Stack) -> list[c.Packet]:
    return [c.decode_packet(data) for data, _ in stack.datagrams_to_send()]


def init_ack_for(stack: Stack, *params: c.Param, now: float = 0.0) -> c.InitAckChunk:
    stack.receive_datagram(packet(0, c.InitChunk(0xABCD, 100_000, 5, 5, 1000, params)),
                           PEER, now)
    (reply,) = replies(stack)
    assert reply.verification_tag == 0xABCD
    (ack,) = reply.chunks
    assert isinstance(ack, c.InitAckChunk)
    return ack


def cookie_of(ack: c.InitAckChunk) -> bytes:
    return next(p.value for p in ack.params if p.type == c.ParamType.STATE_COOKIE)


def test_init_keeps_no_state_and_a_valid_cookie_creates_the_association() -> None:
    stack = server()
    ack = init_ack_for(stack)
    assert stack.association_ids == []  # §5.1: nothing kept before COOKIE ECHO
    data = c.DataChunk(1000, 0, 0, 0, b"bundled")
    stack.receive_datagram(packet(ack.initiate_tag, c.CookieEchoChunk(cookie_of(ack)), data),
                           PEER, 1.0)
    events = stack.events()
    assert [type(e).__name__ for e in events] == ["AssociationChange", "UserMessage"]
    (reply,) = replies(stack)
    assert reply.verification_tag == 0xABCD
    assert isinstance(reply.chunks[0], c.CookieAckChunk)


def test_altered_cookie_is_ignored() -> None:
    stack = server()
    ack = init_ack_for(stack)
    cookie = bytearray(cookie_of(ack))
    cookie[5] ^= 1
    stack.receive_datagram(packet(ack.initiate_tag, c.CookieEchoChunk(bytes(cookie))), PEER, 1)
    assert stack.association_ids == [] and replies(stack) == []


def test_cookie_from_another_address_is_ignored() -> None:
    stack = server()
    ack = init_ack_for(stack)
    stack.receive_datagram(packet(ack.initiate_tag, c.CookieEchoChunk(cookie_of(ack))),
                           ("127.0.0.10", 7000), 1.0)
    assert stack.association_ids == [] and replies(stack) == []


def test_cookie_with_wrong_verification_tag_is_ignored() -> None:
    stack = server()
    ack = init_ack_for(stack)
    stack.receive_datagram(packet(ack.initiate_tag ^ 1, c.CookieEchoChunk(cookie_of(ack))),
                           PEER, 1.0)
    assert stack.association_ids == []


def test_expired_cookie_gets_a_stale_cookie_error() -> None:
    stack = server(Config(valid_cookie_life_s=10))
    ack = init_ack_for(stack)
    stack.receive_datagram(packet(ack.initiate_tag, c.CookieEchoChunk(cookie_of(ack))),
                           PEER, 12.5)
    assert stack.association_ids == []
    (reply,) = replies(stack)
    (error,) = reply.chunks
    assert isinstance(error, c.ErrorChunk)
    assert error.causes[0].code == c.CauseCode.STALE_COOKIE
    assert int.from_bytes(error.causes[0].body, "big") == 2_500_000


def test_unrecognized_init_parameters_are_reported_or_skipped() -> None:
    stack = server()
    ack = init_ack_for(stack, c.Param(0xC123, b"report me"), c.Param(0x8123, b"skip me"))
    reported = [p for p in ack.params if p.type == c.ParamType.UNRECOGNIZED_PARAMETER]
    assert [r.value for r in reported] == [c.encode_param(c.Param(0xC123, b"report me"))]


def test_init_with_zero_streams_is_aborted() -> None:
    stack = server()
    stack.receive_datagram(packet(0, c.InitChunk(0xABCD, 100_000, 0, 5, 1)), PEER, 0.0)
    (reply,) = replies(stack)
    assert reply.verification_tag == 0xABCD
    assert reply.chunks == [c.AbortChunk((c.Cause(c.CauseCode.INVALID_MANDATORY_PARAMETER),))]


def test_init_with_nonzero_tag_or_bundled_is_dropped() -> None:
    stack = server()
    init = c.InitChunk(0xABCD, 100_000, 5, 5, 1)
    stack.receive_datagram(packet(5, init), PEER, 0.0)
    stack.receive_datagram(packet(0, init, c.CookieAckChunk()), PEER, 0.0)
    stack.receive_datagram(packet(0, c.InitChunk(0, 100_000, 5, 5, 1)), PEER, 0.0)
    assert replies(stack) == []


def test_out_of_the_blue_packets() -> None:
    stack = server()
    stack.receive_datagram(packet(0x1234, c.DataChunk(1, 0, 0, 0, b"x")), PEER, 0.0)
    stack.receive_datagram(packet(0x1234, c.ShutdownAckChunk()), PEER, 0.0)
    stack.receive_datagram(packet(0x1234, c.AbortChunk()), PEER, 0.0)
    stack.receive_datagram(packet(0x1234, c.ShutdownCompleteChunk()), PEER, 0.0)
    abort, complete = replies(stack)
    assert abort.verification_tag == 0x1234 and abort.chunks == [c.AbortChunk(reflected=True)]
    assert complete.chunks == [c.ShutdownCompleteChunk(reflected=True)]


def test_bad_checksum_and_garbage_are_dropped() -> None:
    stack = server()
    data = bytearray(packet(0, c.InitChunk(0xABCD, 100_000, 5, 5, 1)))
    data[-1] ^= 0xFF
    stack.receive_datagram(bytes(data), PEER, 0.0)
    stack.receive_datagram(b"\x00" * 3, PEER, 0.0)
    garbage = packet(0, c.UnknownChunk(0, 0, b"\x00"))  # a DATA chunk too short to parse
    stack.receive_datagram(garbage, PEER, 0.0)
    assert replies(stack) == []


# -------------------------------------------------------------------------------------
# Established associations against forged, blind and faulty packets


def established(config: Config | None = None) -> tuple[Network, Node, Node]:
    net = Network(lossy_link(0))
    client = net.add("127.0.0.1", 5000, config)
    srv = net.add("127.0.0.2", 6000, config)
    net.connect(client, srv)
    net.run(lambda: client.up() is not None and srv.up() is not None)
    return net, client, srv


def test_forged_packets_with_wrong_tags_change_nothing() -> None:
    net, client, srv = established()
    sid = srv.up()
    assoc = srv.stack.association(sid)
    wrong = assoc.my_tag ^ 0x5A5A
    for chunk in (c.DataChunk(assoc.receiver.cumulative_tsn + 1, 0, 0, 0, b"forged"),
                  c.AbortChunk(), c.ShutdownChunk(0), c.AbortChunk(reflected=True)):
        srv.stack.receive_datagram(packet(wrong, chunk, source=5000), client.address, net.now)
    net.run(lambda: True)
    assert srv.messages == [] and srv.states() == [AssocState.COMM_UP]


def test_data_on_a_stream_that_is_not_open_gets_an_error() -> None:
    net, client, srv = established(Config(streams=StreamCounts(4, 4)))
    sid = srv.up()
    assoc = srv.stack.association(sid)
    tsn = (assoc.receiver.cumulative_tsn + 1) & 0xFFFFFFFF
    srv.stack.receive_datagram(packet(assoc.my_tag, c.DataChunk(tsn, 9, 0, 0, b"x"),
                                      source=5000), client.address, net.now)
    out = replies(srv.stack)
    srv.stack.handle_timeout(net.now + 0.25)  # the SACK waits for the delayed-ack timer
    out += replies(srv.stack)
    errors = [ch for p in out for ch in p.chunks if isinstance(ch, c.ErrorChunk)]
    assert errors[0].causes[0].code == c.CauseCode.INVALID_STREAM_IDENTIFIER
    sacks = [ch for p in out for ch in p.chunks if isinstance(ch, c.SackChunk)]
    assert sacks and sacks[-1].cumulative_tsn == tsn  # the TSN is still acknowledged


def test_unknown_chunk_types_follow_their_upper_bits() -> None:
    net, client, srv = established()
    sid = srv.up()
    assoc = srv.stack.association(sid)
    srv.stack.receive_datagram(packet(assoc.my_tag, c.UnknownChunk(0x7F, 0, b"abc"),
                                      source=5000), client.address, net.now)
    (reply,) = replies(srv.stack)
    (error,) = reply.chunks
    assert isinstance(error, c.ErrorChunk)
    assert error.causes[0].code == c.CauseCode.UNRECOGNIZED_CHUNK_TYPE


def test_data_without_payload_aborts() -> None:
    net, client, srv = established()
    sid = srv.up()
    assoc = srv.stack.association(sid)
    tsn = (assoc.receiver.cumulative_tsn + 1) & 0xFFFFFFFF
    srv.stack.receive_datagram(packet(assoc.my_tag, c.DataChunk(tsn, 0, 0, 0, b""),
                                      source=5000), client.address, net.now)
    (reply,) = replies(srv.stack)
    assert reply.chunks[0] == c.AbortChunk((c.Cause(c.CauseCode.NO_USER_DATA,
                                                     tsn.to_bytes(4, "big")),))
    change = srv.stack.events()[-1]
    assert isinstance(change, AssociationChange) and change.state == AssocState.COMM_LOST


@settings(max_examples=150, deadline=None)
@given(chunks=st.lists(CHUNKS, min_size=1, max_size=4), right_tag=st.booleans(),
       first_tsn_offset=st.integers(-3, 3))
def test_any_chunks_in_an_established_association_raise_nothing(
        chunks: list[c.Chunk], right_tag: bool, first_tsn_offset: int) -> None:
    net, client, srv = established()
    sid = srv.up()
    assoc = srv.stack.association(sid)  # type: ignore[arg-type]
    assert assoc is not None
    base = assoc.receiver.cumulative_tsn + 1 + first_tsn_offset
    adjusted = [c.DataChunk((base + i) & 0xFFFFFFFF, ch.stream % 12, ch.ssn, ch.ppid,
                            ch.payload, ch.unordered, ch.beginning, ch.end, ch.immediate)
                if isinstance(ch, c.DataChunk) else ch for i, ch in enumerate(chunks)]
    tag = assoc.my_tag if right_tag else 0
    srv.stack.receive_datagram(packet(tag, *adjusted, source=5000), client.address, net.now)
    srv.stack.handle_timeout(net.now + 100)
    net.run(lambda: True)


@settings(max_examples=150, deadline=None)
@given(cut=st.integers(0, 14), chunks=st.lists(CHUNKS, min_size=1, max_size=3),
       to_client=st.booleans())
def test_any_chunks_in_any_state_raise_nothing(cut: int, chunks: list[c.Chunk],
                                               to_client: bool) -> None:
    """Freeze a conversation after ``cut`` datagrams (handshake, data, shutdown), then
    feed either side chunks carrying its own verification tag."""
    passed: list[int] = []

    def first_datagrams(data: bytes, source: object, destination: object) -> bool:
        passed.append(1)
        return len(passed) <= cut

    net = Network(lossy_link(0, keep=first_datagrams))
    client = net.add("127.0.0.1", 5000)
    srv = net.add("127.0.0.2", 6000)
    cid = net.connect(client, srv)
    client.stack.send(cid, b"x" * 3000, stream=1, ppid=0, unordered=False, now=net.now)
    if cut % 2:
        client.stack.shutdown(cid, net.now)
    net.run_for(2)
    target, other = (client, srv) if to_client else (srv, client)
    for assoc_id in target.stack.association_ids:
        assoc = target.stack.association(assoc_id)
        assert assoc is not None
        target.stack.receive_datagram(packet(assoc.my_tag, *chunks, source=other.address[1],
                                             destination=target.address[1]),
                                      other.address, net.now)
    net.link.keep = None
    net.run_for(600)


def test_icmp_port_unreachable_ends_a_setup_only_when_it_quotes_our_init() -> None:
    """RFC 6951 §5.5 and RFC 9260 Appendix C (ICMP6): the quoted INIT must carry our tag."""
    client = server()
    assoc_id = client.connect(PEER[0], 6000, PEER, 0.0)
    [(init, address)] = client.datagrams_to_send()
    assert address == PEER
    forged = bytearray(init)
    forged[16] ^= 0xFF  # someone else's Initiate Tag
    client.unreachable(bytes(forged), PEER, "refused")
    client.unreachable(init, ("127.0.0.8", 7000), "refused")  # another address
    client.unreachable(init[:10], PEER, "refused")  # too little quoted to check
    assert client.association(assoc_id) is not None and client.events() == []
    client.unreachable(init, PEER, "connection refused by 127.0.0.9:7000")
    assert client.association(assoc_id) is None
    [change] = client.events()
    assert isinstance(change, AssociationChange)
    assert change.state is AssocState.CANT_STR_ASSOC
    assert change.reason == "connection refused by 127.0.0.9:7000"
