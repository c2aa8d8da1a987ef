"""serve's per-connection and per-root limits (ferry/limits.py, docs/protocol.md §7):
each trips with its typed error to the client, costs only that request, and leaves one
log line."""

from __future__ import annotations

import time
from pathlib import Path

import blake3

from sockferry.ferry import codec
from sockferry.ferry import messages as m
from sockferry.storage.names import MAX_PATH_DEPTH, is_temporary_name
from tests.ferry.harness import RawClient, ServerThread


def _put(request: int, path: str, body: bytes) -> bytes:
    return b"".join([codec.encode(m.Put(request, path, len(body), 0o644, 0)),
                     codec.data_header(request, len(body)) if body else b"", body,
                     codec.encode(m.Done(request, blake3.blake3(body).digest()))])


def _verdicts(raw: RawClient, count: int) -> dict[int, m.Message]:
    replies = raw.replies(count)
    return {r.request: r for r in replies if isinstance(r, m.Committed | m.Error)}


def _code(reply: m.Message | None) -> int | None:
    return reply.code if isinstance(reply, m.Error) else None


def _refusals(server: ServerThread, text: str) -> list[str]:
    return [line for line in server.logs if "refused" in line and text in line]


def test_files_per_connection(tmp_path: Path) -> None:
    (tmp_path / "old").write_bytes(b"old")
    with ServerThread(tmp_path, max_files_per_connection=2) as server:
        raw = RawClient(server.port)
        raw.send(_put(1, "a", b"1"), _put(3, "b", b"2"), _put(5, "c", b"3"),
                 codec.encode(m.Get(7, "old")))
        got = _verdicts(raw, 4)
        raw.close()
        other = RawClient(server.port)  # a new connection starts afresh
        other.send(_put(1, "c", b"3"))
        assert isinstance(_verdicts(other, 1)[1], m.Committed)
        other.close()
        logs = _refusals(server, "--max-files-per-connection")
    assert isinstance(got[1], m.Committed) and isinstance(got[3], m.Committed)
    assert _code(got[5]) == _code(got[7]) == m.ErrorCode.TOO_LARGE
    assert len(logs) == 2  # the PUT and the GET: one line each
    assert (tmp_path / "c").read_bytes() == b"3"


def test_bytes_per_connection(tmp_path: Path) -> None:
    with ServerThread(tmp_path, max_bytes_per_connection=1000) as server:
        raw = RawClient(server.port)
        raw.send(_put(1, "a", b"x" * 600), _put(3, "b", b"y" * 600), _put(5, "c", b"z" * 400))
        got = _verdicts(raw, 3)
        raw.close()
        logs = _refusals(server, "--max-bytes-per-connection")
    assert isinstance(got[1], m.Committed) and isinstance(got[5], m.Committed)
    assert _code(got[3]) == m.ErrorCode.TOO_LARGE and len(logs) == 1
    assert not (tmp_path / "b").exists()
    assert not [p for p in tmp_path.iterdir() if is_temporary_name(p.name)]


def test_max_file_size(tmp_path: Path) -> None:
    with ServerThread(tmp_path, max_file_size=100) as server:
        raw = RawClient(server.port)
        raw.send(_put(1, "big", b"b" * 101), _put(3, "ok", b"o" * 100))
        got = _verdicts(raw, 2)
        raw.close()
    assert _code(got[1]) == m.ErrorCode.TOO_LARGE and isinstance(got[3], m.Committed)


def _wait_for_log(server: ServerThread, text: str) -> None:
    deadline = time.monotonic() + 10
    while not any(text in line for line in server.logs):
        assert time.monotonic() < deadline, server.logs
        time.sleep(0.01)


def test_quota_counts_what_is_there_what_comes_and_what_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "old").write_bytes(b"o" * 1000)
    with ServerThread(tmp_path, quota=2000) as server:
        _wait_for_log(server, "quota: 1000 B used")
        raw = RawClient(server.port)
        # 1000 there: 1200 more would go over; 900 fits; then 200 more would not,
        # but replacing the 1000 bytes of sub/old with 1050 does.
        raw.send(_put(1, "a", b"a" * 1200), _put(3, "b", b"b" * 900),
                 _put(5, "c", b"c" * 200), _put(7, "sub/old", b"n" * 1050))
        got = _verdicts(raw, 4)
        raw.close()
        logs = _refusals(server, "quota")
    assert _code(got[1]) == _code(got[5]) == m.ErrorCode.NO_SPACE, got
    assert isinstance(got[3], m.Committed) and isinstance(got[7], m.Committed), got
    assert isinstance(got[1], m.Error) and "--quota" in got[1].message
    assert len(logs) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "sub"]


def test_path_depth_and_listing_size(tmp_path: Path) -> None:
    for name in "abcde":
        (tmp_path / name).write_bytes(b"")
    deep = "/".join(["x"] * (MAX_PATH_DEPTH + 1))
    with ServerThread(tmp_path, max_list_entries=3) as server:
        raw = RawClient(server.port)
        raw.send(codec.encode(m.Mkdir(1, deep, 0o755)),
                 codec.encode(m.ListDir(3, "", m.ListFlag.RECURSIVE)), codec.encode(m.Stat(5, "a")))
        got = {r.request: r for r in raw.replies(3) if isinstance(r, m.Error | m.Entries)}
        raw.close()
    assert _code(got[1]) == m.ErrorCode.PERMISSION
    assert isinstance(got[1], m.Error) and f"deeper than {MAX_PATH_DEPTH}" in got[1].message
    assert _code(got[3]) == m.ErrorCode.TOO_LARGE
    assert isinstance(got[5], m.Entries)
    assert not (tmp_path / "x").exists()
