"""rsync's habits on send/get: --update, --exclude/--include, -n — each with a tree before
and after, against a real server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sockferry.cli.runtime import ExitCode
from sockferry.errors import UsageError
from sockferry.ferry.sync import Filters
from tests.ferry.harness import ServerThread, run_cli, write_token


def _tree(top: Path) -> dict[str, bytes]:
    return {str(p.relative_to(top)): p.read_bytes() for p in sorted(top.rglob("*"))
            if p.is_file()}


def _make(top: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (top / name).parent.mkdir(parents=True, exist_ok=True)
        (top / name).write_text(text)


TREE = {"a.txt": "a", "b.o": "object", "src/c.txt": "c", "src/d.o": "o2",
        "cache/e.txt": "e", "keep/cache/f.txt": "f"}


@pytest.fixture
def server(tmp_path: Path):  # type: ignore[no-untyped-def]
    root = tmp_path / "root"
    root.mkdir()
    write_token(tmp_path / "token")
    with ServerThread(root) as running:
        yield running


def _cli(tmp_path: Path, port: int, *argv: str) -> tuple[int, str, str]:
    return run_cli(*argv, "-P", str(port), "--token-file", str(tmp_path / "token"))


def test_update_sends_only_what_changed(tmp_path: Path, server: ServerThread) -> None:
    local = tmp_path / "proj"
    _make(local, TREE)
    root = tmp_path / "root"
    code, _, err = _cli(tmp_path, server.port, "send", "-r", "-u", str(local), "127.0.0.1:")
    assert code == ExitCode.OK, err
    assert _tree(root / "proj") == _tree(local)
    # Change one file (same size, new time), grow another; the rest is unchanged.
    (local / "a.txt").write_text("A")
    os.utime(local / "a.txt", (1_000_000_000, 1_000_000_000))
    (local / "src" / "c.txt").write_text("c longer")
    (root / "proj" / "cache" / "e.txt").write_text("server side edit")  # size differs
    code, out, err = _cli(tmp_path, server.port, "send", "-r", "-u", "-v", str(local),
                          "127.0.0.1:")
    assert code == ExitCode.OK, err
    assert _tree(root / "proj") == _tree(local)
    sent = sorted(line.split(" -> ")[1].split(" (")[0] for line in out.splitlines()
                  if line.startswith("sent "))
    assert sent == ["proj/a.txt", "proj/cache/e.txt", "proj/src/c.txt"]
    assert "3 unchanged" in err


def test_get_update_fetches_only_what_changed(tmp_path: Path, server: ServerThread) -> None:
    root = tmp_path / "root"
    _make(root / "proj", TREE)
    dest = tmp_path / "copy"
    dest.mkdir()
    code, _, err = _cli(tmp_path, server.port, "get", "-r", "-u", "127.0.0.1:proj", str(dest))
    assert code == ExitCode.OK, err
    (root / "proj" / "b.o").write_text("changed object")
    code, out, err = _cli(tmp_path, server.port, "get", "-r", "-u", "-v", "127.0.0.1:proj",
                          str(dest))
    assert code == ExitCode.OK, err
    assert [line.split(" ")[1] for line in out.splitlines()] == ["proj/b.o"]
    assert _tree(dest / "proj") == _tree(root / "proj")


def test_exclude_and_include_follow_rsync_order(tmp_path: Path, server: ServerThread) -> None:
    local = tmp_path / "proj"
    _make(local, TREE)
    code, _, err = _cli(tmp_path, server.port, "send", "-r", "--include", "src/d.o",
                        "--exclude", "*.o", "--exclude", "/cache/", str(local),
                        "127.0.0.1:")
    assert code == ExitCode.OK, err
    assert sorted(_tree(tmp_path / "root" / "proj")) == [
        "a.txt", "keep/cache/f.txt", "src/c.txt", "src/d.o"]
    dest = tmp_path / "back"
    dest.mkdir()
    code, _, err = _cli(tmp_path, server.port, "get", "-r", "--exclude", "cache/",
                        "127.0.0.1:proj", str(dest))
    assert code == ExitCode.OK, err
    assert sorted(_tree(dest / "proj")) == ["a.txt", "src/c.txt", "src/d.o"]


def test_dry_run_says_and_touches_nothing(tmp_path: Path, server: ServerThread) -> None:
    local = tmp_path / "proj"
    _make(local, TREE)
    code, out, err = _cli(tmp_path, server.port, "send", "-r", "-n", "--exclude", "*.o",
                          str(local), "127.0.0.1:")
    assert code == ExitCode.OK, err
    assert list((tmp_path / "root").iterdir()) == []
    assert sorted(line.split(" -> ")[1].split(" (")[0] for line in out.splitlines()) == [
        "proj/a.txt", "proj/cache/e.txt", "proj/keep/cache/f.txt", "proj/src/c.txt"]
    _make(tmp_path / "root" / "proj", TREE)
    dest = tmp_path / "empty"
    dest.mkdir()
    code, out, err = _cli(tmp_path, server.port, "get", "-r", "-n", "127.0.0.1:proj",
                          str(dest))
    assert code == ExitCode.OK, err
    assert list(dest.iterdir()) == []
    assert len(out.splitlines()) == len(TREE)
    assert all(line.startswith("would copy ") for line in out.splitlines())


def test_dry_run_and_resume_do_not_mix(tmp_path: Path, server: ServerThread) -> None:
    (tmp_path / "a").write_text("a")
    code, _, err = _cli(tmp_path, server.port, "send", "-n", "--resume",
                        str(tmp_path / "a"), "127.0.0.1:")
    assert code == ExitCode.USAGE
    assert "--resume does not go with" in err


def test_a_broken_pattern_is_one_sentence() -> None:
    with pytest.raises(UsageError, match=r"'\[abc' has '\[' without '\]'"):
        Filters.parse([(False, "[abc")])


NAMES = st.lists(st.sampled_from(["a", "b.o", "c", "x.txt"]), min_size=1, max_size=4)


@given(NAMES)
def test_a_star_never_crosses_a_slash(parts: list[str]) -> None:
    path = "/".join(parts)
    filters = Filters.parse([(False, "/*")])
    assert filters.excluded(path, False) == (len(parts) == 1)
    deep = Filters.parse([(False, "/**")])
    assert deep.excluded(path, False)


def test_get_delete_removes_only_what_the_server_lacks(tmp_path: Path,
                                                       server: ServerThread) -> None:
    root = tmp_path / "root"
    _make(root / "proj", {"a.txt": "a", "src/c.txt": "c"})
    dest = tmp_path / "copy"
    _make(dest / "proj", {"a.txt": "old", "stale.txt": "x", "gone/deep/f": "f",
                          "src/c.txt": "c", "src/old.o": "o", "notes.o": "mine"})
    outside = tmp_path / "outside"
    _make(outside, {"precious": "p"})
    (dest / "proj" / "link").symlink_to(outside, target_is_directory=True)
    (dest / "beside.txt").write_text("not in the copied tree")
    # -n first: says what would go, removes nothing.
    code, out, err = _cli(tmp_path, server.port, "get", "-r", "-n", "--delete",
                          "--exclude", "notes.o", "127.0.0.1:proj", str(dest))
    assert code == ExitCode.OK, err
    doomed = sorted(line.split(" ", 2)[2] for line in out.splitlines()
                    if line.startswith("would delete "))
    assert doomed == sorted(str(dest / "proj" / p) for p in
                            ("gone", "link", "src/old.o", "stale.txt"))
    assert (dest / "proj" / "stale.txt").exists()
    code, _, err = _cli(tmp_path, server.port, "get", "-r", "--delete", "--exclude",
                        "notes.o", "127.0.0.1:proj", str(dest))
    assert code == ExitCode.OK, err
    assert _tree(dest / "proj") == {"a.txt": b"a", "src/c.txt": b"c", "notes.o": b"mine"}
    assert not (dest / "proj" / "link").is_symlink()
    assert (outside / "precious").read_text() == "p"  # the link was never followed
    assert (dest / "beside.txt").exists()  # outside the copied tree


def test_extraneous_keeps_directories_above_protected_names() -> None:
    from sockferry.ferry.sync import Deletion, extraneous  # noqa: PLC0415
    from sockferry.storage import Entry, Kind  # noqa: PLC0415

    def entry(path: str, kind: Kind = Kind.FILE) -> Entry:
        return Entry(path, kind, 0o644, 0, 0)

    local = [entry("d", Kind.DIRECTORY), entry("d/keep.o"), entry("d/x"),
             entry("e", Kind.DIRECTORY), entry("e/y")]
    plan = extraneous(local, {}, Filters.parse([(False, "*.o")]))
    assert plan == [Deletion("d/x", False), Deletion("e", True)]
