"""The quick check made by the server (feature QUICK_CHECK, docs/protocol.md §5.5): the
cores, a real server fed raw frames, and `send -r --update` through it and through a
server without it (which the client meets with LIST, as before)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sockferry.cli.runtime import ExitCode
from sockferry.errors import LocalProtocolError, MalformedPacket, RemoteProtocolError
from sockferry.ferry import codec
from sockferry.ferry import events as ev
from sockferry.ferry import messages as m
from sockferry.ferry.client_session import ClientSession
from sockferry.ferry.parser import FrameParser
from sockferry.ferry.quick_check import NAMES_PER_REQUEST, batches
from sockferry.ferry.server import FerryServer
from sockferry.ferry.server_config import FerryServerConfig
from sockferry.ferry.server_session import ServerSession
from tests.ferry.harness import TOKEN, RawClient, ServerThread, run_cli, write_token
from tests.ferry.test_session import connected, pump

FILE, DIRECTORY = m.QUICK_FILE, m.QUICK_DIRECTORY
SECOND = 1_000_000_000
WITHOUT = m.ALL_FEATURES & ~m.Feature.QUICK_CHECK


def test_quick_check_round_trip_in_the_cores() -> None:
    client, server = connected()
    assert client.can_quick_check
    names = ((FILE, 5, 7 * SECOND, "a"), (DIRECTORY, 0, 0, "d"), (FILE, 0, 0, "b"))
    request = client.quick_check("top", names)
    _, server_events = pump(client, server)
    assert server_events == [ev.QuickCheckRequested(request, "top", names)]
    server.same(request, b"\x05")
    client_events, _ = pump(client, server)
    assert client_events == [ev.QuickChecked(request, b"\x05")]
    assert client.open_requests == server.open_requests == 0


def test_quick_check_is_negotiated_and_a_v1_peer_never_sees_it() -> None:
    older_client = ClientSession(TOKEN, b"c" * 32, features=WITHOUT)
    newer_server = ServerSession(TOKEN, b"s" * 32)
    pump(older_client, newer_server)
    assert not older_client.can_quick_check
    assert not newer_server.features & m.Feature.QUICK_CHECK
    client, server = connected(features=WITHOUT)
    assert not client.can_quick_check
    with pytest.raises(LocalProtocolError, match="QUICK_CHECK"):
        client.quick_check("", ((FILE, 1, 0, "a"),))
    with pytest.raises(RemoteProtocolError, match="QUICK_CHECK without the QUICK_CHECK"):
        server.receive_data(codec.encode(m.QuickCheck(1, "", ((FILE, 1, 0, "a"),))))


def test_an_answer_for_another_count_is_a_violation() -> None:
    client, server = connected()
    request = client.quick_check("", ((FILE, 1, 0, "a"), (FILE, 2, 0, "b")))
    pump(client, server)
    with pytest.raises(RemoteProtocolError, match="SAME for 9 names"):
        client.receive_data(codec.encode(m.Same(request, 9, b"\x00\x00")))
    client, server = connected()
    mkdir = client.mkdir("d", 0o755)
    pump(client, server)
    with pytest.raises(LocalProtocolError, match="SAME answers QUICK_CHECK only"):
        server.same(mkdir, b"")


def test_frames_encode_as_specified() -> None:
    # docs/protocol.md §2.1 and §5.5: QUICK_CHECK of directory "d" as request 2, one file
    # "x" of 5 bytes modified 1,000,000,000,123 ns after the epoch; SAME with its bit set.
    frame = codec.encode(m.QuickCheck(2, "d", ((FILE, 5, 1_000_000_000_123, "x"),)))
    assert frame.hex() == ("300000000000000200000019" "000164" "0001"
                           "01" "0000000000000005" "000000e8d4a5107b" "000178")
    assert list(FrameParser().feed(frame)) == [
        m.QuickCheck(2, "d", ((FILE, 5, 1_000_000_000_123, "x"),))]
    assert codec.encode(m.Same(2, 1, b"\x01")).hex() == "28000000000000020000000300" "0101"
    with pytest.raises(LocalProtocolError, match="bitmap of 9 names is 2 bytes"):
        codec.encode(m.Same(2, 9, b"\x01"))


@pytest.mark.parametrize("body, problem", [
    ("000164" "0001" "03" + "00" * 16 + "000178", "kind 3"),  # neither file nor directory
    ("000164" "0001" "01" "ffffffffffffffff" + "00" * 8 + "000178", "size"),
    ("000164" "0001" "01" + "00" * 16 + "0001ff", "UTF-8"),
    ("000164" "0002" "01" + "00" * 16 + "000178", "truncated|short|past"),  # one name short
])
def test_malformed_quick_checks_are_violations(body: str, problem: str) -> None:
    with pytest.raises(MalformedPacket, match=problem):
        codec.decode_body(m.FrameType.QUICK_CHECK, 0, 1, bytes.fromhex(body))


def test_a_same_with_bits_past_its_count_is_a_violation() -> None:
    with pytest.raises(MalformedPacket, match="past its count"):
        codec.decode_body(m.FrameType.SAME, 0, 1, bytes.fromhex("0003" "09"))


def test_batches_fit_a_frame_and_keep_the_order() -> None:
    short = [(FILE, i, 0, f"f{i}") for i in range(2_500)]
    cut = list(batches("dest", short))
    assert [len(b) for b in cut] == [NAMES_PER_REQUEST, NAMES_PER_REQUEST, 500]
    assert [n for b in cut for n in b] == short
    long = [(FILE, i, 0, "é" * 120 + str(i)) for i in range(700)]  # 240+ bytes a name
    cut = list(batches("d" * 4000, long))
    assert len(cut) > 2 and [n for b in cut for n in b] == long
    for batch in cut:
        assert len(codec.encode(m.QuickCheck(1, "d" * 4000, batch))) - 12 \
            <= m.MAX_CONTROL_BODY
    assert list(batches("dest", [])) == []


@pytest.fixture
def root(tmp_path: Path) -> Path:
    top = tmp_path / "root"
    top.mkdir()
    return top


def _bits(answer: m.Message) -> list[bool]:
    assert isinstance(answer, m.Same), answer
    return [bool(answer.bitmap[i // 8] >> (i % 8) & 1) for i in range(answer.count)]


def test_the_server_answers_by_size_time_and_kind_never_following_a_name(
        root: Path, tmp_path: Path) -> None:
    top = root / "top"
    (top / "sub").mkdir(parents=True)
    (top / "f").write_bytes(b"12345")
    os.utime(top / "f", ns=(0, 7 * SECOND + 250))
    (top / "link").symlink_to("f")
    (top / "dirlink").symlink_to("sub")
    (top / ".sockferry-0123456789abcdef.part").write_bytes(b"12345")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"12345")
    (root / "out").symlink_to(outside)
    (root / "in").symlink_to("top")  # a link as the directory: followed inside the root
    names = ((FILE, 5, 7 * SECOND + 999, "f"),  # same size, same second: unchanged
             (FILE, 5, 8 * SECOND, "f"),  # another second
             (FILE, 4, 7 * SECOND, "f"),  # another size
             (DIRECTORY, 0, 0, "f"),  # a file, not a directory
             (DIRECTORY, 0, 0, "sub"),
             (FILE, 0, 0, "sub"),
             (FILE, 5, 7 * SECOND, "link"),  # a link at the name is not followed
             (DIRECTORY, 0, 0, "dirlink"),
             (FILE, 5, 0, ".sockferry-0123456789abcdef.part"),  # never reported
             (FILE, 5, 0, "missing"),
             (DIRECTORY, 0, 0, ".."), (DIRECTORY, 0, 0, "."), (FILE, 5, 7 * SECOND, "sub/../f"),
             (FILE, 5, 7 * SECOND, ""))
    with ServerThread(root) as server:
        raw = RawClient(server.port)
        raw.send(codec.encode(m.QuickCheck(1, "top", names)),
                 codec.encode(m.QuickCheck(2, "in", names[:1])),
                 codec.encode(m.QuickCheck(3, "nothing/here", names[:1])),
                 codec.encode(m.QuickCheck(4, "top/f", names[:1])),  # not a directory
                 codec.encode(m.QuickCheck(5, "out", ((FILE, 5, 0, "secret"),))),
                 codec.encode(m.QuickCheck(6, "../outside", ((FILE, 5, 0, "secret"),))),
                 codec.encode(m.QuickCheck(7, "top", ())))
        answers = {reply.request: reply for reply in raw.replies(7)}  # type: ignore[union-attr]
        raw.close()
    assert _bits(answers[1]) == [True, False, False, False, True, False, False, False,
                                 False, False, False, False, False, False]
    assert _bits(answers[2]) == [True]
    assert _bits(answers[3]) == _bits(answers[4]) == [False]
    for refused in (5, 6):
        assert getattr(answers[refused], "code", None) == m.ErrorCode.PERMISSION
    assert answers[7] == m.Same(7, 0, b"")


def test_a_server_offers_it_for_a_directory_and_as_configured(root: Path) -> None:
    assert FerryServer(str(root), FerryServerConfig(token=TOKEN)).features \
        & m.Feature.QUICK_CHECK
    assert not FerryServer(str(root), FerryServerConfig(token=TOKEN, features=WITHOUT)
                           ).features & m.Feature.QUICK_CHECK


def _tree(top: Path) -> dict[str, bytes | str]:
    return {str(p.relative_to(top)): os.readlink(p) if p.is_symlink() else p.read_bytes()
            for p in sorted(top.rglob("*")) if p.is_file() or p.is_symlink()}


def _sent(out: str) -> list[str]:
    """The files sent (or that would be): links are sent as links every time."""
    return sorted(line.split(" -> ")[1].split(" (")[0] for line in out.splitlines()
                  if line.startswith(("sent ", "would copy ")) and " -> proj/la " not in line)


@pytest.mark.parametrize("features", [m.ALL_FEATURES, WITHOUT], ids=["quick-check", "list"])
def test_send_update_through_either_check_copies_the_same(tmp_path: Path,
                                                          features: int) -> None:
    """The same tree, before and after changes on both sides, through a server that
    checks (one QUICK_CHECK per directory, a wide one cut in several) and one that
    only lists: the same files go, the same are left, the trees end up equal."""
    local, root = tmp_path / "proj", tmp_path / "root"
    (local / "wide").mkdir(parents=True)
    for i in range(NAMES_PER_REQUEST + 300):
        (local / "wide" / f"n{i:04d}").write_text(str(i))
    (local / "a").write_text("a")
    (local / "sub" / "deep").mkdir(parents=True)
    (local / "sub" / "deep" / "x").write_text("x")
    (local / "turned").mkdir()
    (local / "turned" / "y").write_text("y")
    (local / "la").symlink_to("a")
    root.mkdir()
    token = write_token(tmp_path / "token")
    with ServerThread(root, features=features) as server:
        def send(*options: str) -> tuple[str, str]:
            code, out, err = run_cli("send", "-r", "-u", "-l", "-v", *options, str(local),
                                     "127.0.0.1:", "-P", str(server.port),
                                     "--token-file", str(token))
            assert code == ExitCode.OK, err
            return out, err

        out, _ = send()
        assert len(_sent(out)) == NAMES_PER_REQUEST + 300 + 3
        assert _tree(root / "proj") == _tree(local)
        out, err = send()
        assert _sent(out) == [] and f"{NAMES_PER_REQUEST + 300 + 3} unchanged" in err
        (local / "wide" / "n0500").write_text("changed, longer")
        (local / "a").write_text("b")  # the same size, a new second
        os.utime(local / "a", (2_000_000_000, 2_000_000_000))
        (local / "new").mkdir()
        (local / "new" / "z").write_text("z")
        (root / "proj" / "sub" / "deep" / "x").unlink()  # gone on the server
        (root / "proj" / "turned" / "y").unlink()
        (root / "proj" / "turned").rmdir()
        (root / "proj" / "turned").write_text("a file where a directory was")
        (root / "proj" / "turned.keep").write_text("the server's own")
        out, _ = send("-n")
        would = ["proj/a", "proj/new/z", "proj/sub/deep/x", "proj/turned/y",
                 "proj/wide/n0500"]
        assert _sent(out) == would
        (root / "proj" / "turned").unlink()
        out, _ = send()
        assert _sent(out) == would
    expected = _tree(local)
    expected["turned.keep"] = b"the server's own"
    assert _tree(root / "proj") == expected
