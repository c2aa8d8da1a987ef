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
    from sockferry.entries import Entry, Kind  # noqa: PLC0415
    from sockferry.ferry.sync import Deletion, extraneous  # noqa: PLC0415

    def entry(path: str, kind: Kind = Kind.FILE) -> Entry:
        return Entry(path, kind, 0o644, 0, 0)

    local = [entry("d", Kind.DIRECTORY), entry("d/keep.o"), entry("d/x"),
             entry("e", Kind.DIRECTORY), entry("e/y")]
    plan = extraneous(local, {}, Filters.parse([(False, "*.o")]))
    assert plan == [Deletion("d/x", False), Deletion("e", True)]


def test_send_delete_removes_only_what_the_local_tree_lacks(tmp_path: Path,
                                                            server: ServerThread) -> None:
    root = tmp_path / "root"
    local = tmp_path / "proj"
    _make(local, {"a.txt": "a", "src/c.txt": "c", "kind": "now a file"})
    _make(root / "proj", {"a.txt": "old", "stale.txt": "x", "gone/deep/f": "f",
                          "src/c.txt": "c", "src/old.o": "o", "notes.o": "theirs",
                          "kind/inside": "a directory here"})
    outside = root / "outside"
    _make(outside, {"precious": "p"})
    (root / "proj" / "link").symlink_to(outside, target_is_directory=True)
    (root / "beside.txt").write_text("not in the copied tree")
    # A partial file of an interrupted resumable upload goes with its directory.
    (root / "proj" / "gone" / ".sockferry-resume-0123456789abcdef.part").write_bytes(b"p")
    code, out, err = _cli(tmp_path, server.port, "send", "-r", "-n", "--delete",
                          "--exclude", "notes.o", str(local), "127.0.0.1:")
    assert code == ExitCode.OK, err
    doomed = sorted(line.split(" ", 2)[2] for line in out.splitlines()
                    if line.startswith("would delete "))
    assert doomed == ["proj/gone", "proj/kind", "proj/link", "proj/src/old.o",
                      "proj/stale.txt"]
    assert (root / "proj" / "stale.txt").exists()
    code, out, err = _cli(tmp_path, server.port, "send", "-r", "-v", "--delete",
                          "--exclude", "notes.o", str(local), "127.0.0.1:")
    assert code == ExitCode.OK, err
    assert _tree(root / "proj") == {"a.txt": b"a", "src/c.txt": b"c", "kind": b"now a file",
                                    "notes.o": b"theirs"}
    assert sorted(os.listdir(root / "proj")) == ["a.txt", "kind", "notes.o", "src"]
    assert (outside / "precious").read_text() == "p"  # the link was never followed
    assert (root / "beside.txt").exists()  # outside the copied tree
    assert "deleted proj/stale.txt" in out
    assert "deleted" in err  # the summary counts them


def test_send_delete_on_a_read_only_server_is_refused_per_name(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _make(root / "proj", {"stale.txt": "x"})
    local = tmp_path / "proj"
    _make(local, {"a.txt": "a"})
    write_token(tmp_path / "token")
    with ServerThread(root, read_only=True) as running:
        code, _, err = _cli(tmp_path, running.port, "send", "-r", "--delete", str(local),
                            "127.0.0.1:")
    assert code == ExitCode.REFUSED
    assert "read-only" in err
    assert (root / "proj" / "stale.txt").exists()


@pytest.mark.parametrize("direction", ["send", "get"])
def test_checksum_skips_files_whose_digest_matches(tmp_path: Path, server: ServerThread,
                                                   direction: str) -> None:
    """Same size and a new time: -u would copy it again, -c sees the same content; same
    size and time but other bytes: -u would skip it, -c copies it."""
    root = tmp_path / "root" / "proj"
    local = tmp_path / "proj"
    big = os.urandom(600 * 1024)  # hashed in a thread on both sides
    _make(local, {"same.txt": "same", "touched.txt": "abcd", "forged.txt": "AAAA"})
    (local / "big.bin").write_bytes(big)
    _make(root, {"same.txt": "same", "touched.txt": "abcd", "forged.txt": "BBBB",
                 "short.txt": "x"})
    (root / "big.bin").write_bytes(big)
    (local / "short.txt").write_text("longer")
    os.utime(local / "touched.txt", (1_000_000_000, 1_000_000_000))
    stamp = os.stat(local / "forged.txt").st_mtime_ns
    os.utime(root / "forged.txt", ns=(stamp, stamp))
    sender, receiver = (local, root) if direction == "send" else (root, local)
    argv = ((direction, "-r", "-c", "-v", str(local), "127.0.0.1:") if direction == "send"
            else (direction, "-r", "-c", "-v", "127.0.0.1:proj", str(tmp_path)))
    code, out, err = _cli(tmp_path, server.port, *argv)
    assert code == ExitCode.OK, err
    copied = sorted(line.split(" -> ")[1].split(" (")[0].rsplit("/", 1)[-1]
                    for line in out.splitlines() if line.startswith(("sent ", "received ")))
    assert copied == ["forged.txt", "short.txt"]
    assert "3 unchanged" in err
    assert _tree(receiver) == _tree(sender)


def test_an_older_server_says_it_cannot_delete_or_checksum(tmp_path: Path) -> None:
    from sockferry.ferry import messages as m  # noqa: PLC0415

    root = tmp_path / "root"
    _make(root / "proj", {"a.txt": "a", "stale": "x"})
    local = tmp_path / "proj"
    _make(local, {"a.txt": "b"})
    write_token(tmp_path / "token")
    with ServerThread(root, features=m.ALL_FEATURES & ~m.Feature.SYNC) as running:
        for option, what in (("--delete", "cannot remove files"),
                             ("-c", "cannot compute digests")):
            code, _, err = _cli(tmp_path, running.port, "send", "-r", option, str(local),
                                "127.0.0.1:")
            assert code == ExitCode.USAGE, err
            assert what in err
        # Without the new options the old server is served as before.
        code, _, err = _cli(tmp_path, running.port, "send", "-r", str(local), "127.0.0.1:")
    assert code == ExitCode.OK, err
    assert _tree(root / "proj") == {"a.txt": b"b", "stale": b"x"}


@pytest.mark.parametrize("direction", ["send", "get"])
def test_links_copied_as_links_inside_the_tree_only(tmp_path: Path, server: ServerThread,
                                                   direction: str) -> None:
    source = tmp_path / "proj" if direction == "send" else tmp_path / "root" / "proj"
    _make(source, {"f": "file", "d/g": "g"})
    (source / "lf").symlink_to("f")
    (source / "d" / "up").symlink_to("../f")
    (source / "dir-link").symlink_to("d")
    (source / "dangling").symlink_to("nothing-here")
    (source / "out").symlink_to("../../outside")
    (source / "abs").symlink_to("/etc/passwd")
    argv = ((direction, "-r", "-l", str(source), "127.0.0.1:") if direction == "send"
            else (direction, "-r", "-l", "127.0.0.1:proj", str(tmp_path)))
    code, _, err = _cli(tmp_path, server.port, *argv)
    assert code == ExitCode.OK, err
    copy = tmp_path / "root" / "proj" if direction == "send" else tmp_path / "proj"
    links = {str(p.relative_to(copy)): os.readlink(p) for p in copy.rglob("*")
             if p.is_symlink()}
    assert links == {"lf": "f", "d/up": "../f", "dir-link": "d", "dangling": "nothing-here"}
    assert (copy / "f").read_text() == "file" and not (copy / "f").is_symlink()
    if direction == "send":  # the client's own check
        assert "'../../outside' leads outside the root is not copied" in err
        assert "absolute link target '/etc/passwd'" in err
    else:  # the server does not even say where they point
        assert "'proj/out' points outside the server's root; skipped" in err
        assert "'proj/abs' points outside the server's root; skipped" in err


def test_without_links_a_tree_follows_file_links_as_before(tmp_path: Path,
                                                           server: ServerThread) -> None:
    local = tmp_path / "proj"
    _make(local, {"f": "file"})
    (local / "lf").symlink_to("f")
    code, _, err = _cli(tmp_path, server.port, "send", "-r", str(local), "127.0.0.1:")
    assert code == ExitCode.OK, err
    copied = tmp_path / "root" / "proj" / "lf"
    assert not copied.is_symlink() and copied.read_text() == "file"


def test_an_older_server_says_it_cannot_make_links(tmp_path: Path) -> None:
    from sockferry.ferry import messages as m  # noqa: PLC0415

    root = tmp_path / "root"
    root.mkdir()
    local = tmp_path / "proj"
    _make(local, {"f": "f"})
    (local / "lf").symlink_to("f")
    write_token(tmp_path / "token")
    with ServerThread(root, features=m.ALL_FEATURES & ~m.Feature.LINKS) as running:
        code, _, err = _cli(tmp_path, running.port, "send", "-r", "-l", str(local),
                            "127.0.0.1:")
    assert code == ExitCode.USAGE
    assert "cannot make symbolic links (it predates -l)" in err
