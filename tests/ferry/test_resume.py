"""Resume (docs/protocol.md §5.1): the new frames, the state rules, hostile requests,
peers without RESUME, changed sources, and the sweep of partial files."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path
from typing import Any

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sockferry.cli.runtime import ExitCode
from sockferry.errors import LocalProtocolError, MalformedPacket, RemoteProtocolError
from sockferry.ferry import codec
from sockferry.ferry import events as ev
from sockferry.ferry import messages as m
from sockferry.ferry.client_session import ClientSession
from sockferry.ferry.parser import FrameParser
from sockferry.ferry.server_session import ServerSession
from sockferry.ferry.session import ConnState
from sockferry.storage.names import PARTIAL_PREFIX, partial_name
from sockferry.storage.root import Root
from tests.ferry.harness import TOKEN, ServerThread, run_cli
from tests.ferry.test_session import pump

NO_RESUME = m.ALL_FEATURES & ~m.Feature.RESUME
paths = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
sizes = st.integers(0, m.MAX_FILE_SIZE)
digests_ = st.binary(min_size=32, max_size=32)


def _round_trip(message: m.Message) -> m.Message:
    data = codec.encode(message)
    return next(iter(FrameParser().feed(data)))


@settings(max_examples=200)
@given(st.integers(1, 2**32 - 1), paths, sizes, sizes, st.integers(0, 2**32 - 1),
       st.integers(-(2**63), 2**63 - 1), st.booleans(), digests_)
def test_new_frames_round_trip(request: int, path: str, a: int, b: int, mode: int,
                               mtime: int, keep: bool, digest: bytes) -> None:
    offset, size = min(a, b), max(a, b)
    flags = m.PutFlag.KEEP_MTIME if keep else m.PutFlag.NONE
    for message in (m.Partial(request, path), m.Prefix(request, a, digest),
                    m.PutAt(request, path, offset, size, mode, mtime, flags),
                    m.FileHeader(request, a, mode, mtime, resumed=keep),
                    m.Put(request, path, a, mode, mtime, flags | m.PutFlag.RESUMABLE)):
        assert _round_trip(message) == message
    if size:
        assert _round_trip(m.Get(request, path, size, digest)) == m.Get(request, path, size,
                                                                        digest)


@settings(max_examples=300)
@given(st.sampled_from([m.FrameType.PARTIAL, m.FrameType.PUT_AT, m.FrameType.PREFIX,
                        m.FrameType.GET, m.FrameType.FILE]),
       st.integers(0, 255), st.binary(max_size=80))
def test_garbage_bodies_raise_only_malformed_packet(kind: m.FrameType, flags: int,
                                                    body: bytes) -> None:
    with contextlib.suppress(MalformedPacket):  # anything else escapes and fails
        codec.decode_body(kind, flags, 7, body)


def test_put_at_offset_beyond_size_is_malformed() -> None:
    body = codec.encode(m.PutAt(1, "f", 5, 5, 0o644, 0))[m.HEADER.size:]
    bad = (6).to_bytes(8, "big") + body[8:]
    with pytest.raises(MalformedPacket):
        codec.decode_body(m.FrameType.PUT_AT, 0, 1, bad)
    with pytest.raises(LocalProtocolError, match="beyond the size"):
        codec.encode(m.PutAt(1, "f", 6, 5, 0o644, 0))


def test_get_with_prefix_at_offset_zero_is_malformed() -> None:
    body = codec.encode(m.Get(1, "f", 3, b"d" * 32))[m.HEADER.size:]
    with pytest.raises(MalformedPacket):
        codec.decode_body(m.FrameType.GET, m.GetFlag.PREFIX, 1, bytes(8) + body[8:])


def _pair(client_features: int = m.ALL_FEATURES, server_features: int = m.ALL_FEATURES,
          ) -> tuple[ClientSession, ServerSession]:
    client = ClientSession(TOKEN, b"c" * 32, features=client_features)
    server = ServerSession(TOKEN, b"s" * 32, features=server_features)
    pump(client, server)
    assert client.state is server.state is ConnState.READY
    return client, server


def _raw(request_frame: bytes, server: ServerSession) -> list[Any]:
    server.receive_data(request_frame)
    events = []
    while (event := server.next_event()) is not None:
        events.append(event)
    return events


@pytest.mark.parametrize("client_features", [m.ALL_FEATURES, NO_RESUME])
@pytest.mark.parametrize("server_features", [m.ALL_FEATURES, NO_RESUME])
def test_resume_is_negotiated_only_when_both_offer_it(client_features: int,
                                                      server_features: int) -> None:
    client, server = _pair(client_features, server_features)
    both = bool(client_features & server_features & m.Feature.RESUME)
    assert bool(client.features & m.Feature.RESUME) is both
    assert bool(server.features & m.Feature.RESUME) is both


@pytest.mark.parametrize("frame", [
    codec.encode(m.PutAt(1, "f", 2, 5, 0o644, 0)),
    codec.encode(m.Partial(1, "f")),
    codec.encode(m.Get(1, "f", 2, b"d" * 32)),
])
def test_resume_frames_without_resume_are_violations(frame: bytes) -> None:
    _client, server = _pair(NO_RESUME, m.ALL_FEATURES)
    with pytest.raises(RemoteProtocolError):
        server.receive_data(frame)
    assert server.state is ConnState.FAILED


def test_client_core_refuses_resume_calls_without_resume() -> None:
    client, _server = _pair(m.ALL_FEATURES, NO_RESUME)
    with pytest.raises(LocalProtocolError):
        client.put_at("f", 1, 5, 0o644, 0, False)
    with pytest.raises(LocalProtocolError):
        client.partial("f")
    with pytest.raises(LocalProtocolError):
        client.get("f", 3, b"d" * 32)


def test_resumable_flag_is_ignored_without_resume() -> None:
    _client, server = _pair(NO_RESUME, m.ALL_FEATURES)
    events = _raw(codec.encode(m.Put(1, "f", 3, 0o644, 0, m.PutFlag.RESUMABLE)), server)
    assert events == [ev.PutRequested(1, "f", 3, 0o644, 0, False)]


def test_put_at_round_trip_counts_only_the_tail() -> None:
    client, server = _pair()
    request = client.put_at("f", 3, 5, 0o644, 0, False)
    with pytest.raises(LocalProtocolError):
        client.data(request, b"abc")  # only 2 bytes are owed
    client.data(request, b"de")
    client.done(request, b"D" * 32)
    _, events = pump(client, server)
    assert events[0] == ev.PutRequested(request, "f", 5, 0o644, 0, False, offset=3,
                                       resumable=True)
    assert [type(e) for e in events[1:]] == [ev.BodyReceived, ev.PutFinished]


def test_put_at_data_past_the_tail_is_a_violation() -> None:
    _client, server = _pair()
    server.receive_data(codec.encode(m.PutAt(1, "f", 3, 5, 0o644, 0)))
    with pytest.raises(RemoteProtocolError):
        server.receive_data(codec.data_header(1, 3) + b"xyz")


def test_partial_prefix_and_resumed_get() -> None:
    client, server = _pair()
    request = client.partial("f")
    _, events = pump(client, server)
    assert events == [ev.PartialRequested(request, "f")]
    server.prefix(request, 9, b"P" * 32)
    events, _ = pump(client, server)
    assert events == [ev.PrefixReceived(request, 9, b"P" * 32)]
    get = client.get("f", 3, b"d" * 32)
    _, events = pump(client, server)
    assert events == [ev.GetRequested(get, "f", 3, b"d" * 32)]
    server.resumed_file_header(get, 5, 0o644, 0)
    server.data(get, b"de")
    server.file_done(get, b"D" * 32)
    events, _ = pump(client, server)
    assert events[0] == ev.FileStarted(get, 5, 0o644, 0, offset=3)
    assert [type(e) for e in events[1:]] == [ev.BodyReceived, ev.FileFinished]


def test_resumed_file_for_a_plain_get_is_a_violation() -> None:
    client, server = _pair()
    get = client.get("f")
    pump(client, server)
    with pytest.raises(RemoteProtocolError):
        client.receive_data(codec.encode(m.FileHeader(get, 5, 0o644, 0, resumed=True)))


def test_server_core_refuses_a_resumed_file_beyond_the_offset() -> None:
    client, server = _pair()
    get = client.get("f", 9, b"d" * 32)
    pump(client, server)
    with pytest.raises(LocalProtocolError):
        server.resumed_file_header(get, 5, 0o644, 0)  # the file is shorter than 9


# ---- real sockets ------------------------------------------------------------------------


class Raw:
    """A client on loopback offering ``features``; sends crafted frames."""

    def __init__(self, port: int, features: int = m.ALL_FEATURES) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.session = ClientSession(TOKEN, os.urandom(32), features=features)
        self.sock.sendall(self.session.data_to_send())
        while self.session.state is ConnState.AWAIT_REPLY:
            data = self.sock.recv(65536)
            assert data
            self.session.receive_data(data)
        self.sock.sendall(self.session.data_to_send())
        self.parser = FrameParser()

    def ask(self, *frames: bytes, count: int = 1) -> list[m.Message]:
        self.sock.sendall(b"".join(frames))
        got: list[m.Message] = []
        deadline = time.monotonic() + 10
        while len(got) < count and time.monotonic() < deadline:
            data = self.sock.recv(65536)
            if not data:
                break
            got += [x for x in self.parser.feed(data) if not isinstance(x, m.BodyPiece)]
        return got


def _interrupted_upload(port: int, path: str, data: bytes, size: int) -> None:
    """A resumable PUT that sends ``data`` of ``size`` bytes, then vanishes."""
    raw = Raw(port)
    raw.sock.sendall(codec.encode(m.Put(1, path, size, 0o644, 0, m.PutFlag.RESUMABLE))
                     + codec.data_header(1, len(data)) + data)
    raw.sock.close()


def _wait_for(predicate: Any) -> None:
    deadline = time.monotonic() + 10
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def _partials(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if p.name.startswith(PARTIAL_PREFIX)]


def test_send_resume_sends_only_the_tail_and_hides_the_partial(env: dict[str, Path]) -> None:
    data = blake3.blake3(b"x").digest(length=3 * 1024 * 1024 + 5)
    (env["src"] / "f").write_bytes(data)
    with ServerThread(env["root"]) as server:
        _interrupted_upload(server.port, "f", data[:1_000_000], len(data))
        _wait_for(lambda: _partials(env["root"]))
        code, out, _ = run_cli("ls", "-P", str(server.port), "--token-file",
                               str(env["token"]), "127.0.0.1:")
        assert code == 0 and out == ""  # never listed, never under the final name
        code, out, err = run_cli("send", "--resume", "-v", "-P", str(server.port),
                                 "--token-file", str(env["token"]), str(env["src"] / "f"),
                                 "127.0.0.1:f")
    assert code == 0, err
    assert "(1000000 bytes)" in out
    assert (env["root"] / "f").read_bytes() == data
    assert not _partials(env["root"])
    assert any("resumed at byte 1000000" in line for line in server.logs)


def test_changed_source_is_never_mixed(env: dict[str, Path]) -> None:
    old = blake3.blake3(b"old").digest(length=2 * 1024 * 1024)
    new = blake3.blake3(b"new").digest(length=len(old))  # same size, other bytes
    (env["src"] / "f").write_bytes(new)
    with ServerThread(env["root"]) as server:
        _interrupted_upload(server.port, "f", old[:500_000], len(old))
        _wait_for(lambda: _partials(env["root"]))
        code, out, err = run_cli("send", "--resume", "-v", "-P", str(server.port),
                                 "--token-file", str(env["token"]), str(env["src"] / "f"),
                                 "127.0.0.1:f")
    assert code == 0, err
    assert "resumed at" not in out
    assert "differ from this file; sending all of it" in err
    assert (env["root"] / "f").read_bytes() == new


def test_get_resume_proves_the_prefix(env: dict[str, Path]) -> None:
    data = blake3.blake3(b"g").digest(length=2 * 1024 * 1024)
    (env["root"] / "f").write_bytes(data)
    partial = env["back"] / partial_name("f")
    with ServerThread(env["root"]) as server:
        base = ("get", "--resume", "-v", "-P", str(server.port), "--token-file",
                str(env["token"]), "127.0.0.1:f", str(env["back"] / "f"))
        partial.write_bytes(data[:700_000])
        code, out, err = run_cli(*base)
        assert code == 0, err
        assert "(700000 bytes)" in out
        assert (env["back"] / "f").read_bytes() == data
        (env["back"] / "f").unlink()
        partial.write_bytes(b"\0" + data[1:700_000])  # one byte differs
        code, out, err = run_cli(*base)
        assert code == 0, err
        assert "resumed at" not in out and "receiving all of it" in err
        assert (env["back"] / "f").read_bytes() == data
    assert not _partials(env["back"])


def test_resume_against_a_server_without_it(env: dict[str, Path]) -> None:
    data = os.urandom(300_000)
    (env["src"] / "f").write_bytes(data)
    with ServerThread(env["root"], features=NO_RESUME) as server:
        for argv in (("send", str(env["src"] / "f"), "127.0.0.1:f"),
                     ("get", "127.0.0.1:f", str(env["back"] / "f"))):
            code, _, err = run_cli(argv[0], "--resume", "-P", str(server.port),
                                   "--token-file", str(env["token"]), *argv[1:])
            assert code == 0, err
            assert "resume is not available on this server" in err
    assert (env["back"] / "f").read_bytes() == data


def test_old_client_against_the_new_server(env: dict[str, Path]) -> None:
    with ServerThread(env["root"]) as server:
        raw = Raw(server.port, NO_RESUME)
        assert not raw.session.features & m.Feature.RESUME
        digest = blake3.blake3(b"hello").digest()
        replies = raw.ask(codec.encode(m.Put(1, "f", 5, 0o644, 0)), codec.data_header(1, 5),
                          b"hello", codec.encode(m.Done(1, digest)))
        assert isinstance(replies[0], m.Committed)
        replies = raw.ask(codec.encode(m.Get(2, "f", 2)))  # an offset without RESUME
        raw.sock.close()
        assert isinstance(replies[0], m.Error) and replies[0].code == m.ErrorCode.BAD_REQUEST
    assert (env["root"] / "f").read_bytes() == b"hello"


@pytest.mark.parametrize(("frames", "code"), [
    # an offset beyond what is kept (nothing is kept towards "g")
    ([codec.encode(m.PutAt(1, "g", 10, 20, 0o644, 0))], m.ErrorCode.BAD_REQUEST),
    # the partial of "f" is not reachable under another target name
    ([codec.encode(m.PutAt(1, "other", 1000, 2000, 0o644, 0))], m.ErrorCode.BAD_REQUEST),
    # a huge offset (and size: over the default --max-file-size)
    ([codec.encode(m.PutAt(1, "f", m.MAX_FILE_SIZE, m.MAX_FILE_SIZE, 0o644, 0))],
     m.ErrorCode.TOO_LARGE),
    # a huge offset within the size limit
    ([codec.encode(m.PutAt(1, "f", 2**40, 2**40, 0o644, 0))], m.ErrorCode.BAD_REQUEST),
    # the partial asked for lies outside the root
    ([codec.encode(m.Partial(1, "../f"))], m.ErrorCode.PERMISSION),
    ([codec.encode(m.Partial(1, "/etc/passwd"))], m.ErrorCode.PERMISSION),
    # a partial's own name cannot be named
    ([codec.encode(m.Partial(1, partial_name("f")))], m.ErrorCode.PERMISSION),
    # GET beyond the end of the file: whole file instead (a FILE without RESUMED)
    ([codec.encode(m.Get(1, "small", 99, b"d" * 32))], None),
])
def test_hostile_resume_requests(env: dict[str, Path], frames: list[bytes],
                                 code: int | None) -> None:
    (env["root"] / "small").write_bytes(b"12345")
    with ServerThread(env["root"]) as server:
        _interrupted_upload(server.port, "f", b"k" * 1000, 2000)
        _wait_for(lambda: _partials(env["root"]))
        raw = Raw(server.port)
        replies = raw.ask(*frames, count=1 if code is not None else 3)
        if code is None:
            assert isinstance(replies[0], m.FileHeader) and not replies[0].resumed
        else:
            assert isinstance(replies[0], m.Error) and replies[0].code == code, replies
        # The connection and the server keep serving.
        stat = raw.ask(codec.encode(m.Stat(5, "small")))
        raw.sock.close()
        assert any(isinstance(x, m.Entries) for x in stat)
    assert len(_partials(env["root"])) == 1  # the partial of "f" was left alone


def test_partial_of_a_busy_target_is_refused(env: dict[str, Path]) -> None:
    with ServerThread(env["root"]) as server:
        writer = Raw(server.port)
        writer.sock.sendall(codec.encode(m.Put(1, "f", 100, 0o644, 0, m.PutFlag.RESUMABLE))
                            + codec.data_header(1, 10) + b"0123456789")
        _wait_for(lambda: _partials(env["root"]))
        asker = Raw(server.port)
        replies = asker.ask(codec.encode(m.Partial(1, "f")))
        asker.sock.close()
        writer.sock.close()
    assert isinstance(replies[0], m.Error) and replies[0].code == m.ErrorCode.BUSY


def test_sweep_removes_expired_then_oldest_over_budget(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    old, mid, new = (tmp_path / partial_name("a"), tmp_path / "d" / partial_name("b"),
                     tmp_path / partial_name("c"))
    keep = tmp_path / "visible"
    for path, age in ((old, 7200), (mid, 600), (new, 60), (keep, 7200)):
        path.write_bytes(b"x" * 1000)
        os.utime(path, (time.time() - age, time.time() - age))
    root = Root(str(tmp_path))
    try:
        removed = root.sweep_temporaries(keep_s=3600, max_partial_bytes=1500)
    finally:
        root.close()
    assert sorted(p for p, _ in removed) == sorted([partial_name("a"),
                                                    "d/" + partial_name("b")])
    assert new.exists() and keep.exists()


def test_serve_options_reach_the_config() -> None:
    code, out, _ = run_cli("serve", "--help")
    assert code == ExitCode.OK
    assert "--partial-keep" in out and "--partial-max-bytes" in out
    for command in ("send", "get"):
        assert "--resume" in run_cli(command, "--help")[1]
