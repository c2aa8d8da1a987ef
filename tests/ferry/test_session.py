"""Client and server cores joined back to back, without sockets."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sockferry.entries import MAX_PATH_BYTES, Entry, Kind
from sockferry.errors import (
    AuthenticationFailed,
    LocalProtocolError,
    MalformedPacket,
    PeerRefused,
    RemoteProtocolError,
)
from sockferry.ferry import codec
from sockferry.ferry import events as ev
from sockferry.ferry import messages as m
from sockferry.ferry.client_session import MAX_REQUESTS_LIMIT, ClientSession
from sockferry.ferry.parser import FrameParser
from sockferry.ferry.server_session import ServerSession
from sockferry.ferry.session import ConnState

TOKEN = b"correct horse battery staple"
DIGEST = b"D" * 32


def drain(core: Any) -> list[Any]:
    events = []
    while (event := core.next_event()) is not None:
        if isinstance(event, ev.BodyReceived):
            event = ev.BodyReceived(event.request, bytes(event.data))
        events.append(event)
    return events


def pump(client: ClientSession, server: ServerSession, step: int | None = None,
         ) -> tuple[list[Any], list[Any]]:
    """Move bytes both ways until quiet; return (client events, server events)."""
    client_events: list[Any] = []
    server_events: list[Any] = []
    for _ in range(100):
        to_server, to_client = client.data_to_send(), server.data_to_send()
        if not to_server and not to_client:
            break
        for data, core, sink in ((to_server, server, server_events),
                                 (to_client, client, client_events)):
            if not data:
                continue
            if step is None:
                core.receive_data(data)
                sink.extend(drain(core))
            else:
                for i in range(0, len(data), step):
                    core.receive_data(data[i : i + step])
                    sink.extend(drain(core))
    return client_events, server_events


def connected(step: int | None = None, **server_options: Any,
              ) -> tuple[ClientSession, ServerSession]:
    client = ClientSession(TOKEN, b"c" * 32)
    server = ServerSession(TOKEN, b"s" * 32, **server_options)
    client_events, server_events = pump(client, server, step)
    assert isinstance(client_events[0], ev.ServerVerified)
    assert isinstance(server_events[0], ev.ClientAuthenticated)
    assert client.state is server.state is ConnState.READY
    assert client.digest_feature is m.Feature.DIGEST_BLAKE3
    return client, server


@pytest.mark.parametrize("step", [None, 1, 7])
def test_put_round_trip(step: int | None) -> None:
    client, server = connected(step)
    request = client.put("dir/f.bin", 10, 0o640, 123, keep_mtime=True)
    client.data(request, b"01234")
    client.data(request, b"56789")
    client.done(request, DIGEST)
    _, server_events = pump(client, server, step)
    assert server_events[0] == ev.PutRequested(request, "dir/f.bin", 10, 0o640, 123, True)
    assert b"".join(e.data for e in server_events if isinstance(e, ev.BodyReceived)) == \
        b"0123456789"
    assert server_events[-1] == ev.PutFinished(request, DIGEST, 10)
    server.commit(request, 10, DIGEST)
    client_events, _ = pump(client, server, step)
    assert client_events == [ev.PutCommitted(request, 10, DIGEST)]
    assert client.open_requests == server.open_requests == 0


def test_runs_of_small_files_keep_their_place_among_other_requests() -> None:
    """Small files in a row come as one event; any other request ends the run, so the
    server sees every request in the order it was sent."""
    client, server = connected()
    first = [client.put_inline(f"a{i}", b"x", 0o644, 0, False, DIGEST) for i in range(3)]
    mkdir = client.mkdir("d", 0o755)
    second = [client.put_inline(f"d/b{i}", b"y", 0o644, 0, False, DIGEST) for i in range(2)]
    _, server_events = pump(client, server)
    assert [type(e) for e in server_events] == [ev.SmallFilesReceived, ev.MkdirRequested,
                                                ev.SmallFilesReceived]
    assert [f.request for f in server_events[0].files] == first
    assert server_events[1].request == mkdir
    assert [f.request for f in server_events[2].files] == second
    # fed byte by byte, a run may be cut into several, never reordered
    client, server = connected()
    sent = [client.put_inline(f"c{i}", b"z", 0o644, 0, False, DIGEST) for i in range(4)]
    _, server_events = pump(client, server, step=1)
    assert [f.request for e in server_events for f in e.files] == sent


def test_small_file_in_one_frame() -> None:
    client, server = connected()
    assert client.features & m.Feature.INLINE
    request = client.put_inline("d/small", b"tiny", 0o640, 9, True, DIGEST)
    assert client.requests[request].phase is ev.Phase.AWAIT_REPLY
    _, server_events = pump(client, server)
    assert server_events == [ev.SmallFilesReceived([ev.SmallFileReceived(
        request, "d/small", 0o640, 9, True, b"tiny", DIGEST)])]
    server.commit(request, 4, DIGEST)
    client_events, _ = pump(client, server)
    assert client_events == [ev.PutCommitted(request, 4, DIGEST)]
    assert client.open_requests == server.open_requests == 0


def test_small_file_refused_like_a_put() -> None:
    client, server = connected()
    request = client.put_inline("x", b"tiny", 0o600, 0, False, DIGEST)
    pump(client, server)
    server.refuse(request, m.ErrorCode.PERMISSION, "no")
    client_events, _ = pump(client, server)
    assert client_events == [ev.RequestFailed(request, m.ErrorCode.PERMISSION, "no")]
    assert client.open_requests == server.open_requests == 0


def test_inline_is_negotiated_and_a_v1_peer_never_sees_it() -> None:
    # A server without INLINE (an older one) does not grant it: the client uses PUT.
    client, server = connected(features=m.ALL_FEATURES & ~m.Feature.INLINE)
    assert not client.features & m.Feature.INLINE
    with pytest.raises(LocalProtocolError, match="INLINE"):
        client.put_inline("f", b"x", 0, 0, False, DIGEST)
    # A client that never offered it cannot send the frame behind the server's back.
    with pytest.raises(RemoteProtocolError, match="without the INLINE feature"):
        server.receive_data(codec.encode(m.PutInline(1, "f", 0, 0, b"x", DIGEST)))
    assert server.state is ConnState.FAILED


@pytest.mark.parametrize("step", [None, 3])
@pytest.mark.parametrize("body", [b"", b"0123456789" * 7])
def test_streamed_put_ends_where_done_says(step: int | None, body: bytes) -> None:
    client, server = connected(step)
    assert client.can_stream
    request = client.put_streamed("pipe.out", 0o644, 5)
    for i in range(0, len(body), 30):
        client.data(request, body[i:i + 30])
    client.done(request, DIGEST)
    _, server_events = pump(client, server, step)
    assert server_events[0] == ev.PutRequested(request, "pipe.out", 0, 0o644, 5, False,
                                              streamed=True)
    assert b"".join(e.data for e in server_events if isinstance(e, ev.BodyReceived)) == body
    assert server_events[-1] == ev.PutFinished(request, DIGEST, len(body))
    server.commit(request, len(body), DIGEST)
    client_events, _ = pump(client, server, step)
    assert client_events == [ev.PutCommitted(request, len(body), DIGEST)]
    assert client.open_requests == server.open_requests == 0


def test_streamed_put_committed_at_another_size_is_a_violation() -> None:
    client, server = connected()
    request = client.put_streamed("f", 0o644, 0)
    client.data(request, b"abc")
    client.done(request, DIGEST)
    pump(client, server)
    server.commit(request, 2, DIGEST)
    with pytest.raises(RemoteProtocolError, match="committed 2 bytes of the 3"):
        client.receive_data(server.data_to_send())


def test_stream_is_negotiated_and_a_v1_peer_never_sees_it() -> None:
    client, server = connected(features=m.ALL_FEATURES & ~m.Feature.STREAM)
    assert not client.can_stream
    with pytest.raises(LocalProtocolError, match="STREAM"):
        client.put_streamed("f", 0o644, 0)
    with pytest.raises(RemoteProtocolError, match="without the STREAM feature"):
        server.receive_data(codec.encode(m.Put(1, "f", 0, 0, 0, m.PutFlag.STREAMED)))
    assert server.state is ConnState.FAILED


@pytest.mark.parametrize(("size", "flags", "problem"), [
    (1, m.PutFlag.STREAMED, "announcing 1 bytes"),
    (0, m.PutFlag.STREAMED | m.PutFlag.RESUMABLE, "also RESUMABLE"),
])
def test_streamed_put_rules(size: int, flags: m.PutFlag, problem: str) -> None:
    _client, server = connected()
    with pytest.raises(RemoteProtocolError, match=problem):
        server.receive_data(codec.encode(m.Put(1, "f", size, 0, 0, flags)))


def test_small_file_cannot_be_cancelled() -> None:
    client, server = connected()
    request = client.put_inline("f", b"x", 0, 0, False, DIGEST)
    pump(client, server)
    with pytest.raises(RemoteProtocolError, match="CANCEL after DONE"):
        server.receive_data(codec.encode(m.Cancel(request)))


def test_get_with_hole_round_trip() -> None:
    client, server = connected()
    request = client.get("big")
    _, server_events = pump(client, server)
    assert server_events == [ev.GetRequested(request, "big", 0)]
    server.file_header(request, 2**33 + 3, 0o600, 5)
    server.hole(request, 2**33)
    server.data(request, b"end")
    server.file_done(request, DIGEST)
    client_events, _ = pump(client, server)
    assert client_events == [ev.FileStarted(request, 2**33 + 3, 0o600, 5),
                             ev.HoleReceived(request, 2**33),
                             ev.BodyReceived(request, b"end"),
                             ev.FileFinished(request, DIGEST)]


def test_list_stat_mkdir() -> None:
    client, server = connected()
    entry = Entry("a", Kind.FILE, 0o644, 3, 9)
    listing, status, directory = client.list("", recursive=True), client.stat("a"), \
        client.mkdir("d", 0o755)
    _, server_events = pump(client, server)
    assert server_events == [ev.ListRequested(listing, "", True), ev.StatRequested(status, "a"),
                             ev.MkdirRequested(directory, "d", 0o755)]
    server.entries(listing, [entry], last=False)
    server.entries(listing, [], last=True)
    server.entries(status, [entry], last=True)
    server.ok(directory)
    client_events, _ = pump(client, server)
    assert client_events == [ev.EntriesReceived(listing, (entry,), False),
                             ev.EntriesReceived(listing, (), True),
                             ev.EntriesReceived(status, (entry,), True),
                             ev.MkdirDone(directory)]


def test_refused_put_swallows_its_data() -> None:
    client, server = connected()
    request = client.put("../x", 4, 0o644, 0, keep_mtime=False)
    pump(client, server)
    server.refuse(request, m.ErrorCode.PERMISSION, "no")
    client.data(request, b"abcd")  # already on its way when the refusal arrives
    client_events, server_events = pump(client, server)
    assert client_events == [ev.RequestFailed(request, m.ErrorCode.PERMISSION, "no")]
    assert server_events == []  # discarded, no BodyReceived
    client.done(request, DIGEST)
    pump(client, server)
    assert client.open_requests == server.open_requests == 0


def test_client_cancels_put() -> None:
    client, server = connected()
    request = client.put("f", 100, 0o644, 0, keep_mtime=False)
    client.data(request, b"x" * 10)
    client.cancel(request)
    client_events, server_events = pump(client, server)
    assert ev.RequestCancelled(request) in server_events
    assert client_events == [ev.RequestFailed(request, m.ErrorCode.CANCELLED,
                                             "cancelled by the client")]
    assert client.open_requests == server.open_requests == 0
    with pytest.raises(LocalProtocolError):
        client.data(request, b"more")


def test_client_cancels_get_mid_file() -> None:
    client, server = connected()
    request = client.get("f")
    pump(client, server)
    server.file_header(request, 100, 0o644, 0)
    server.data(request, b"x" * 10)
    client.cancel(request)
    _, server_events = pump(client, server)
    assert server_events == [ev.RequestCancelled(request)]
    server.refuse(request, m.ErrorCode.CANCELLED, "cancelled")
    client_events, _ = pump(client, server)
    assert client_events[-1] == ev.RequestFailed(request, m.ErrorCode.CANCELLED, "cancelled")
    assert client.open_requests == server.open_requests == 0


def test_wrong_token_client_side_detects_server() -> None:
    client = ClientSession(b"one token", b"c" * 32)
    server = ServerSession(b"other token", b"s" * 32)
    server.receive_data(client.data_to_send())
    with pytest.raises(AuthenticationFailed):
        client.receive_data(server.data_to_send())
    assert client.state is ConnState.FAILED
    assert client.data_to_send() == b"", "no proof is revealed to an unverified server"


def test_wrong_client_proof_refused_by_server() -> None:
    client = ClientSession(TOKEN, b"c" * 32)
    server = ServerSession(TOKEN, b"s" * 32)
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    forged = bytearray(client.data_to_send())
    forged[-1] ^= 1
    with pytest.raises(AuthenticationFailed):
        server.receive_data(bytes(forged))
    with pytest.raises(AuthenticationFailed):
        client.receive_data(server.data_to_send())  # the ERROR(AUTH_FAILED) reaches it


def test_replayed_proof_fails_with_fresh_nonce() -> None:
    client = ClientSession(TOKEN, b"c" * 32)
    server = ServerSession(TOKEN, b"s" * 32)
    hello = client.data_to_send()
    server.receive_data(hello)
    client.receive_data(server.data_to_send())
    recorded_auth = client.data_to_send()
    replay_server = ServerSession(TOKEN, b"t" * 32)
    replay_server.receive_data(hello)
    replay_server.data_to_send()
    with pytest.raises(AuthenticationFailed):
        replay_server.receive_data(recorded_auth)


def test_version_mismatch_is_refused_with_error() -> None:
    server = ServerSession(TOKEN, b"s" * 32)
    hello = codec.encode(m.Hello(2, 3, m.DIGEST_FEATURES, b"c" * 32))
    with pytest.raises(RemoteProtocolError):
        server.receive_data(hello)
    client = ClientSession(TOKEN, b"c" * 32)
    with pytest.raises(PeerRefused, match="version 1 only"):
        client.receive_data(server.data_to_send())


def test_sha256_fallback_when_client_lacks_blake3() -> None:
    client = ClientSession(TOKEN, b"c" * 32, features=m.Feature.DIGEST_SHA256)
    server = ServerSession(TOKEN, b"s" * 32)
    pump(client, server)
    assert client.digest_feature is server.digest_feature is m.Feature.DIGEST_SHA256
    assert not client.features & m.Feature.SPARSE
    request = client.put("f", 4, 0o644, 0, keep_mtime=False)
    with pytest.raises(LocalProtocolError):
        client.hole(request, 4)


def test_window_is_enforced_both_ways() -> None:
    client, server = connected(max_requests=2)
    client.stat("a")
    client.stat("b")
    assert not client.window_open
    with pytest.raises(LocalProtocolError):
        client.stat("c")
    pump(client, server)
    extra = codec.encode(m.Stat(99, "c"))
    with pytest.raises(RemoteProtocolError, match="more than 2 requests"):
        server.receive_data(extra)
    assert server.state is ConnState.FAILED


def test_data_past_announced_size_is_a_violation() -> None:
    client, server = connected()
    request = client.put("f", 3, 0o644, 0, keep_mtime=False)
    pump(client, server)
    with pytest.raises(RemoteProtocolError, match="more data"):
        server.receive_data(codec.data_header(request, 4) + b"abcd")


def test_done_before_all_data_is_a_violation() -> None:
    client, server = connected()
    request = client.put("f", 3, 0o644, 0, keep_mtime=False)
    pump(client, server)
    with pytest.raises(RemoteProtocolError, match="ended after 0 of 3"):
        server.receive_data(codec.encode(m.Done(request, DIGEST)))


def test_end_of_input_mid_frame_is_a_violation() -> None:
    _client, server = connected()
    server.receive_data(codec.encode(m.Stat(1, "x"))[:5])
    with pytest.raises(RemoteProtocolError, match="middle of a frame"):
        server.receive_data(b"")


def test_end_of_input_reports_open_requests() -> None:
    client, server = connected()
    request = client.put("f", 3, 0o644, 0, keep_mtime=False)
    pump(client, server)
    server.receive_data(b"")
    assert drain(server) == [ev.InputEnded((request,))]


def test_duplicate_request_id_is_a_violation() -> None:
    _client, server = connected()
    with pytest.raises(RemoteProtocolError, match="already in use"):
        server.receive_data(codec.encode(m.Get(5, "a")) + codec.encode(m.Get(5, "b")))


# Every (state, frame) pair the tables do not allow must fail the session cleanly.
SAMPLES: list[m.Message] = [
    m.Hello(1, 1, 3, b"n" * 32), m.HelloReply(1, 1, 8, b"n" * 32, "x", b"p" * 32),
    m.Auth(b"p" * 32), m.Put(1, "f", 1, 0, 0), m.Done(1, DIGEST), m.Cancel(1),
    m.Get(1, "f"), m.ListDir(1, ""), m.Stat(1, "f"), m.Mkdir(1, "d", 0), m.Ok(1),
    m.FileHeader(1, 1, 0, 0), m.Entries(1, (), True), m.Committed(1, 1, DIGEST),
    m.Error(1, 1, "x"), m.Hole(1, 1), m.PutInline(1, "f", 0, 0, b"x", DIGEST),
]


@settings(max_examples=300)
@given(st.sampled_from(["hello", "auth", "ready"]), st.sampled_from(SAMPLES),
       st.sampled_from(["server", "client"]))
def test_state_table_sweep(stage: str, message: m.Message, role: str) -> None:
    client = ClientSession(TOKEN, b"c" * 32)
    server = ServerSession(TOKEN, b"s" * 32)
    if stage != "hello":
        server.receive_data(client.data_to_send())
        client.receive_data(server.data_to_send())
    if stage == "ready":
        server.receive_data(client.data_to_send())
    core: Any = server if role == "server" else client
    allowed = (type(message) in {k for (state, k) in core.HANDLERS if state is core.state})
    try:
        core.receive_data(codec.encode(message))
    except (RemoteProtocolError, AuthenticationFailed, PeerRefused):
        assert core.state is ConnState.FAILED
        return
    # Accepted frames must have been allowed by the table for that state.
    assert allowed or isinstance(message, m.Cancel)


def _in_state(role: str, state: ConnState) -> ServerSession | ClientSession:
    """A fresh session of ``role`` brought to ``state`` by a real handshake."""
    client = ClientSession(TOKEN, b"c" * 32)
    server = ServerSession(TOKEN, b"s" * 32)
    core: ServerSession | ClientSession = server if role == "server" else client
    steps = (lambda: server.receive_data(client.data_to_send()),
             lambda: client.receive_data(server.data_to_send()),
             lambda: server.receive_data(client.data_to_send()),
             lambda: core.receive_data(b""))
    for step in steps:
        if core.state is state:
            break
        step()
    assert core.state is state
    return core


# Every state a session can be fed frames in, and every frame sample its table does not
# file under that state: each must fail the session with the BAD_REQUEST to send back.
UNEXPECTED = [
    (role, state, sample)
    for role, states in (("server", (ConnState.AWAIT_HELLO, ConnState.AWAIT_AUTH,
                                     ConnState.READY, ConnState.CLOSED)),
                         ("client", (ConnState.AWAIT_REPLY, ConnState.READY,
                                     ConnState.CLOSED)))
    for state in states
    for sample in SAMPLES
    if (state, type(sample)) not in (ServerSession if role == "server"
                                     else ClientSession).HANDLERS
    and not (role == "server" and isinstance(sample, m.Cancel))  # may cross a reply
]


@pytest.mark.parametrize(("role", "state", "sample"), UNEXPECTED,
                         ids=[f"{r}-{s.name}-{type(f).__name__}" for r, s, f in UNEXPECTED])
def test_an_unexpected_frame_is_a_remote_error_carrying_bad_request(
        role: str, state: ConnState, sample: m.Message) -> None:
    core = _in_state(role, state)
    with pytest.raises(RemoteProtocolError) as caught:
        core.receive_data(codec.encode(sample))
    assert caught.value.code == m.ErrorCode.BAD_REQUEST, caught.value
    assert not isinstance(caught.value, MalformedPacket)  # the frame itself parses
    assert core.state in (ConnState.FAILED, ConnState.CLOSED)


def test_every_fed_state_has_unexpected_frames_under_test() -> None:
    covered = {(role, state) for role, state, _ in UNEXPECTED}
    assert len(covered) == 7


def test_a_server_window_out_of_range_is_a_remote_error_with_a_code() -> None:
    client = ClientSession(TOKEN, b"c" * 32)
    server = ServerSession(TOKEN, b"s" * 32, max_requests=MAX_REQUESTS_LIMIT + 1)
    server.receive_data(client.data_to_send())
    with pytest.raises(RemoteProtocolError, match="window") as caught:
        client.receive_data(server.data_to_send())
    assert caught.value.code == m.ErrorCode.BAD_REQUEST
    assert not isinstance(caught.value, MalformedPacket)  # it parsed; its value is wrong
    assert client.state is ConnState.FAILED


def test_driver_misuse_of_the_codec_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError, match="path of"):
        codec.encode(m.Stat(1, "x" * (MAX_PATH_BYTES + 1)))
    with pytest.raises(LocalProtocolError, match="digest must be 32 bytes"):
        codec.encode(m.Done(1, b"short"))
    with pytest.raises(LocalProtocolError, match="cannot encode Put"):
        codec.encode(m.Put(1, "f", -1, 0o644, 0))  # a size no u64 holds
    with pytest.raises(LocalProtocolError, match="not encoded as a whole frame"):
        codec.encode(m.Data(1, 5))
    with pytest.raises(LocalProtocolError, match="DATA length"):
        codec.data_header(1, 0)
    parser = FrameParser()
    with pytest.raises(LocalProtocolError, match="cannot skip"):
        parser.skip_body(1)
