"""DELETE and CHECKSUM (feature SYNC, docs/protocol.md §5.3): the cores, and a real
server fed raw frames."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sockferry.errors import LocalProtocolError, RemoteProtocolError
from sockferry.ferry import codec, digests
from sockferry.ferry import events as ev
from sockferry.ferry import messages as m
from sockferry.ferry.parser import FrameParser
from tests.ferry.harness import RawClient, ServerThread
from tests.ferry.test_session import DIGEST, connected, pump


def test_delete_and_checksum_round_trip() -> None:
    client, server = connected()
    assert client.can_sync
    deleting = client.delete("d/f")
    rmdir = client.delete("d", directory=True)
    summing = client.checksum("g")
    _, server_events = pump(client, server)
    assert server_events == [ev.DeleteRequested(deleting, "d/f", False),
                             ev.DeleteRequested(rmdir, "d", True),
                             ev.ChecksumRequested(summing, "g")]
    server.ok(deleting)
    server.refuse(rmdir, m.ErrorCode.NOT_EMPTY, "'d' is not empty")
    server.sum(summing, 7, DIGEST)
    client_events, _ = pump(client, server)
    assert client_events == [ev.Deleted(deleting),
                             ev.RequestFailed(rmdir, m.ErrorCode.NOT_EMPTY, "'d' is not empty"),
                             ev.Summed(summing, 7, DIGEST)]
    assert client.open_requests == server.open_requests == 0


def test_sync_is_negotiated_and_a_v1_peer_never_sees_it() -> None:
    client, server = connected(features=m.ALL_FEATURES & ~m.Feature.SYNC)
    assert not client.can_sync
    with pytest.raises(LocalProtocolError, match="SYNC"):
        client.delete("f")
    with pytest.raises(LocalProtocolError, match="SYNC"):
        client.checksum("f")
    with pytest.raises(RemoteProtocolError, match="DELETE without the SYNC feature"):
        server.receive_data(codec.encode(m.Delete(1, "f")))


def test_answers_of_the_wrong_kind_are_refused() -> None:
    client, server = connected()
    request = client.checksum("f")
    pump(client, server)
    with pytest.raises(LocalProtocolError, match="OK answers MKDIR, DELETE and SYMLINK only"):
        server.ok(request)
    mkdir = client.mkdir("d", 0o755)
    pump(client, server)
    with pytest.raises(LocalProtocolError, match="SUM answers CHECKSUM only"):
        server.sum(mkdir, 0, DIGEST)


def test_frames_encode_as_specified() -> None:
    # docs/protocol.md §2.1 and §5.3: DELETE of a/b with DIRECTORY as request 3.
    assert codec.encode(m.Delete(3, "a/b", True)).hex() == "1b01000000000003000000050003612f62"
    assert codec.encode(m.Checksum(4, "x")).hex() == "1c0000000000000400000003000178"
    frame = codec.encode(m.Sum(5, 10, DIGEST))
    assert frame[:12].hex() == "260000000000000500000028"
    assert list(FrameParser().feed(frame)) == [m.Sum(5, 10, DIGEST)]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    top = tmp_path / "root"
    top.mkdir()
    return top


def _answers(raw: RawClient, count: int) -> dict[int, m.Message]:
    return {reply.request: reply for reply in raw.replies(count)}  # type: ignore[union-attr]


def test_a_delete_waits_for_the_put_of_its_path_sent_before_it(root: Path) -> None:
    """PUT x then DELETE x, pipelined: x is gone at the end, whatever the commit's pace."""
    body = os.urandom(9 * 1024 * 1024)  # hashed by a thread: committed later
    digest = digests.digest_of(body, m.Feature.DIGEST_BLAKE3)
    with ServerThread(root) as server:
        raw = RawClient(server.port)
        raw.send(codec.encode(m.Put(1, "x", len(body), 0o644, 0)), codec.data_header(1, len(body)),
                 body, codec.encode(m.Done(1, digest)), codec.encode(m.Delete(2, "x")))
        answers = _answers(raw, 2)
        raw.close()
    assert isinstance(answers[1], m.Committed)
    assert isinstance(answers[2], m.Ok)
    assert not (root / "x").exists()


def test_delete_never_follows_a_link_nor_leaves_the_root(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("p")
    (root / "link").symlink_to(outside, target_is_directory=True)
    (root / "d").mkdir()
    (root / "d" / "f").write_text("f")
    (root / "busy").mkdir()
    (root / "busy" / ".sockferry-0123456789abcdef.part").write_text("upload in progress")
    with ServerThread(root) as server:
        raw = RawClient(server.port)
        raw.send(codec.encode(m.Delete(1, "link/precious")),  # through a link out of the root
                 codec.encode(m.Delete(2, "")),
                 codec.encode(m.Delete(3, "../outside/precious")),
                 codec.encode(m.Delete(4, "d", True)),
                 codec.encode(m.Delete(5, "d/f", True)),
                 codec.encode(m.Delete(6, "d")),
                 codec.encode(m.Delete(7, "busy", True)),
                 codec.encode(m.Delete(8, "link")),
                 codec.encode(m.Delete(9, "missing")))
        answers = _answers(raw, 9)
        raw.close()
    codes = {request: getattr(answer, "code", "ok") for request, answer in answers.items()}
    assert codes == {1: m.ErrorCode.PERMISSION, 2: m.ErrorCode.PERMISSION,
                     3: m.ErrorCode.PERMISSION, 4: m.ErrorCode.NOT_EMPTY,
                     5: m.ErrorCode.NOT_DIRECTORY, 6: m.ErrorCode.IS_DIRECTORY,
                     7: m.ErrorCode.NOT_EMPTY, 8: "ok", 9: m.ErrorCode.NOT_FOUND}
    assert (outside / "precious").read_text() == "p"
    assert not (root / "link").is_symlink() and (root / "d" / "f").exists()


def test_checksum_answers_size_and_digest_within_the_limits(root: Path) -> None:
    small, large = b"hello", os.urandom(3 * 1024 * 1024)
    (root / "small").write_bytes(small)
    (root / "large").write_bytes(large)
    (root / "dir").mkdir()
    with ServerThread(root, max_files_per_connection=2) as server:
        raw = RawClient(server.port)
        raw.send(*(codec.encode(m.Checksum(i, name)) for i, name in
                   enumerate(["small", "large", "dir", "small"], start=1)))
        answers = _answers(raw, 4)
        raw.close()
    assert answers[1] == m.Sum(1, len(small), digests.digest_of(small, m.Feature.DIGEST_BLAKE3))
    assert answers[2] == m.Sum(2, len(large), digests.digest_of(large, m.Feature.DIGEST_BLAKE3))
    assert getattr(answers[3], "code", None) == m.ErrorCode.IS_DIRECTORY
    assert getattr(answers[4], "code", None) == m.ErrorCode.TOO_LARGE  # the third file


def test_symlink_targets_stay_inside_the_root(root: Path, tmp_path: Path) -> None:
    (root / "deep").mkdir()
    (root / "deep" / "up").symlink_to("..")  # a link in the root that leads upwards
    (root / "d").mkdir()
    (root / "f").write_text("f")
    (root / "escape").symlink_to(tmp_path)  # made by someone else, pointing out
    with ServerThread(root) as server:
        raw = RawClient(server.port)
        raw.send(codec.encode(m.Symlink(1, "ok", "f")),
                 codec.encode(m.Symlink(2, "d/ok", "../f")),
                 codec.encode(m.Symlink(3, "out", "../x")),
                 codec.encode(m.Symlink(4, "abs", "/etc/passwd")),
                 codec.encode(m.Symlink(5, "d/sneaky", "f/../../x")),
                 # Textually one level down, really the root: "../x" would climb out.
                 codec.encode(m.Symlink(6, "deep/up/l", "../x")),
                 codec.encode(m.Symlink(7, "d", "f")),  # a directory is not replaced
                 codec.encode(m.Readlink(8, "d/ok")),
                 codec.encode(m.Readlink(9, "escape")),
                 codec.encode(m.Readlink(10, "f")))
        answers = _answers(raw, 10)
        raw.close()
    codes = {request: getattr(answer, "code", "ok") for request, answer in answers.items()}
    assert codes == {1: "ok", 2: "ok", 3: m.ErrorCode.PERMISSION, 4: m.ErrorCode.PERMISSION,
                     5: m.ErrorCode.PERMISSION, 6: m.ErrorCode.PERMISSION,
                     7: m.ErrorCode.IS_DIRECTORY, 8: "ok", 9: m.ErrorCode.PERMISSION,
                     10: m.ErrorCode.BAD_REQUEST}
    assert answers[8] == m.Link(8, "../f")
    assert os.readlink(root / "ok") == "f" and os.readlink(root / "d" / "ok") == "../f"
    assert not any(p.name.startswith(".sockferry-") for p in root.rglob("*"))
    assert not (root / "out").is_symlink() and not (root / "l").exists()


def test_links_are_negotiated_and_refused_on_a_read_only_server(root: Path) -> None:
    client, server = connected(features=m.ALL_FEATURES & ~m.Feature.LINKS)
    with pytest.raises(LocalProtocolError, match="LINKS"):
        client.symlink("l", "f")
    with pytest.raises(RemoteProtocolError, match="SYMLINK without the LINKS feature"):
        server.receive_data(codec.encode(m.Symlink(1, "l", "f")))
    with ServerThread(root, read_only=True) as running:
        raw = RawClient(running.port)
        raw.send(codec.encode(m.Symlink(1, "l", "f")))
        [answer] = raw.replies(1)
        raw.close()
    assert getattr(answer, "code", None) == m.ErrorCode.READ_ONLY
    assert not (root / "l").is_symlink()
