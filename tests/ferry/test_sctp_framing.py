"""Ferry frames on SCTP streams: cut, spread over streams, put back in a legal order."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sockferry.errors import RemoteProtocolError
from sockferry.ferry import messages as m
from sockferry.ferry.sctp_framing import (
    END_PPID,
    FRAME_PPID,
    MAX_DATA_PIECE,
    FrameReceiver,
    FrameSender,
    Piece,
    stream_of,
)

STREAMS = 5


def frame(kind: m.FrameType, request: int, body: bytes = b"") -> bytes:
    return m.HEADER.pack(kind, 0, 0, request, len(body)) + body


def frames_of(data: bytes) -> list[tuple[int, int, bytes]]:
    """(type, request, body) of every frame in a byte stream."""
    out = []
    while data:
        kind, _flags, _reserved, request, length = m.HEADER.unpack_from(data)
        out.append((kind, request, data[12:12 + length]))
        data = data[12 + length:]
    return out


def joined(frames: list[tuple[int, int, bytes]]) -> list[tuple[int, int, bytes]]:
    """Consecutive DATA frames of one request as one (a body may be cut anywhere)."""
    out: list[tuple[int, int, bytes]] = []
    for kind, request, body in frames:
        if out and kind == out[-1][0] == m.FrameType.DATA and request == out[-1][1]:
            out[-1] = (kind, request, out[-1][2] + body)
        else:
            out.append((kind, request, body))
    return out


def client_conversation(files: int, rng: random.Random,
                        max_body: int = 3 * MAX_DATA_PIECE) -> bytes:
    """What a client core sends: HELLO, AUTH, a MKDIR, then PUTs with bodies, DONE."""
    out = [frame(m.FrameType.HELLO, 0, b"h" * 40), frame(m.FrameType.AUTH, 0, b"p" * 32),
           frame(m.FrameType.MKDIR, 1, b"d" * 6)]
    for request in range(2, 2 + files):
        body = rng.randbytes(rng.randrange(1, max_body))
        out += [frame(m.FrameType.PUT, request, b"x" * 22),
                frame(m.FrameType.DATA, request, body),
                frame(m.FrameType.DONE, request, b"z" * 32)]
    return b"".join(out)


def test_control_frames_and_data_pieces_go_to_their_streams() -> None:
    sender = FrameSender(client=True, streams=STREAMS)
    body = bytes(range(256)) * 1000  # 256,000 bytes: four pieces
    pieces = sender.feed(frame(m.FrameType.PUT, 7, b"p") + frame(m.FrameType.DATA, 7, body)
                         + frame(m.FrameType.DONE, 7, b"d" * 32))
    assert pieces[0] == Piece(0, FRAME_PPID, frame(m.FrameType.PUT, 7, b"p"))  # opening
    data = pieces[1:-1]
    assert [len(p.data) - 12 for p in data] == [65536, 65536, 65536, 59392]
    assert {p.stream for p in data} == {stream_of(7, STREAMS)} == {3}
    assert b"".join(p.data[12:] for p in data) == body
    assert pieces[-1].stream == 3
    server = FrameSender(client=False, streams=STREAMS)
    answer = server.feed(frame(m.FrameType.COMMITTED, 7, b"c" * 40))
    assert answer == [Piece(3, FRAME_PPID, frame(m.FrameType.COMMITTED, 7, b"c" * 40))]
    assert server.feed(frame(m.FrameType.ERROR, 0, b"e" * 4))[0].stream == 0


def test_bytes_fed_one_at_a_time_give_the_same_frames() -> None:
    data = client_conversation(3, random.Random(1), max_body=3000)
    whole = FrameSender(client=True, streams=STREAMS).feed(data)
    sender = FrameSender(client=True, streams=STREAMS)
    dribbled = [piece for i in range(len(data)) for piece in sender.feed(data[i:i + 1])]
    assert all(len(frames_of(p.data)) == 1 for p in dribbled)  # one frame per message
    assert joined(frames_of(b"".join(p.data for p in dribbled))) == frames_of(data)
    assert joined(frames_of(b"".join(p.data for p in whole))) == frames_of(data)


@settings(max_examples=60)
@given(seed=st.integers(0, 2**32 - 1), files=st.integers(1, 8))
def test_any_interleaving_of_streams_gives_a_legal_order(seed: int, files: int) -> None:
    """Streams are delivered in order each, interleaved at random (as under loss)."""
    rng = random.Random(seed)
    sent = client_conversation(files, rng, max_body=2 * MAX_DATA_PIECE)
    pieces = FrameSender(client=True, streams=STREAMS).feed(sent) + FrameSender(
        client=True, streams=STREAMS).end()
    queues: dict[int, list[Piece]] = {}
    for piece in pieces:
        queues.setdefault(piece.stream, []).append(piece)
    receiver = FrameReceiver(server=True, streams=STREAMS)
    out = bytearray()
    while queues:
        stream = rng.choice(sorted(queues))
        piece = queues[stream].pop(0)
        if not queues[stream]:
            del queues[stream]
        receiver.receive(piece.stream, piece.ppid, piece.data)
        out += b"".join(receiver.take())
    assert receiver.ended
    got = frames_of(bytes(out))
    # HELLO, AUTH, then the requests in the order they were opened...
    openings = [(k, r) for k, r, _ in got if k not in (m.FrameType.DATA, m.FrameType.DONE)]
    assert openings == [(k, r) for k, r, _ in frames_of(sent)
                        if k not in (m.FrameType.DATA, m.FrameType.DONE)]
    # ...each request's frames after its opening, its bytes in order.
    for request in range(2, 2 + files):
        mine = [(k, b) for k, r, b in got if r == request]
        assert mine[0][0] == m.FrameType.PUT and mine[-1][0] == m.FrameType.DONE
        original = b"".join(b for k, r, b in frames_of(sent)
                            if r == request and k == m.FrameType.DATA)
        assert b"".join(b for k, b in mine if k == m.FrameType.DATA) == original


def test_a_late_request_does_not_wait_for_an_earlier_ones_data() -> None:
    """Request 3's body is handed on while request 2's is still missing: no stall."""
    sender = FrameSender(client=True, streams=STREAMS)
    pieces = sender.feed(frame(m.FrameType.PUT, 2) + frame(m.FrameType.DATA, 2, b"a" * 10)
                         + frame(m.FrameType.PUT, 3) + frame(m.FrameType.DATA, 3, b"b" * 10))
    receiver = FrameReceiver(server=True, streams=STREAMS)
    for piece in pieces:
        if piece.stream != stream_of(2, STREAMS):  # request 2's DATA is lost for now
            receiver.receive(*piece)
    assert [(k, r) for k, r, _ in frames_of(b"".join(receiver.take()))] == [
        (m.FrameType.PUT, 2), (m.FrameType.PUT, 3), (m.FrameType.DATA, 3)]


def test_data_before_its_opening_frame_is_held() -> None:
    receiver = FrameReceiver(server=True, streams=STREAMS)
    receiver.receive(stream_of(4, STREAMS), FRAME_PPID, frame(m.FrameType.DATA, 4, b"d"))
    assert receiver.take() == []
    receiver.receive(0, FRAME_PPID, frame(m.FrameType.PUT, 4, b"p"))
    assert [k for k, _r, _b in frames_of(b"".join(receiver.take()))] == [m.FrameType.PUT,
                                                               m.FrameType.DATA]


def test_the_client_side_holds_nothing() -> None:
    receiver = FrameReceiver(server=False, streams=STREAMS)
    receiver.receive(2, FRAME_PPID, frame(m.FrameType.FILE, 9, b"f" * 20))
    assert frames_of(b"".join(receiver.take())) == [(m.FrameType.FILE, 9, b"f" * 20)]


def test_end_needs_every_stream() -> None:
    receiver = FrameReceiver(server=True, streams=3)
    receiver.receive(0, END_PPID, b"\0")
    receiver.receive(2, END_PPID, b"\0")
    assert not receiver.ended
    receiver.receive(1, END_PPID, b"\0")
    assert receiver.ended


@pytest.mark.parametrize(("stream", "ppid", "data", "message"), [
    (1, 99, frame(m.FrameType.OK, 1), "PPID 0x63 is not a ferry frame"),
    (0, FRAME_PPID, b"short", "shorter than a ferry frame header"),
    (0, FRAME_PPID, frame(m.FrameType.OK, 1) * 2, "exactly one ferry frame"),
    (7, FRAME_PPID, frame(m.FrameType.OK, 1), "does not exist"),
])
def test_what_is_refused(stream: int, ppid: int, data: bytes, message: str) -> None:
    with pytest.raises(RemoteProtocolError, match=message):
        FrameReceiver(server=True, streams=STREAMS).receive(stream, ppid, data)


def test_frames_after_end_and_unopened_requests_are_refused() -> None:
    receiver = FrameReceiver(server=True, streams=2)
    receiver.receive(1, END_PPID, b"\0")
    with pytest.raises(RemoteProtocolError, match="after that stream's end"):
        receiver.receive(1, FRAME_PPID, frame(m.FrameType.DONE, 1, b"d" * 32))
    receiver = FrameReceiver(server=True, streams=2)
    receiver.receive(1, FRAME_PPID, frame(m.FrameType.DONE, 5, b"d" * 32))
    receiver.receive(1, END_PPID, b"\0")
    with pytest.raises(RemoteProtocolError, match="never opened"):
        receiver.receive(0, END_PPID, b"\0")


def test_holding_is_bounded() -> None:
    receiver = FrameReceiver(server=True, streams=2)
    piece = frame(m.FrameType.DATA, 9, b"x" * 65536)
    with pytest.raises(RemoteProtocolError, match="never opened"):
        for _ in range(300):
            receiver.receive(1, FRAME_PPID, piece)
