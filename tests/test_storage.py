"""The sandbox and atomic writes against a real file system."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sockferry.entries import Kind
from sockferry.errors import PathRefused, StorageError
from sockferry.storage.atomic import AtomicFile
from sockferry.storage.atomic import _process_umask as process_umask
from sockferry.storage.dircache import LISTED_NAMES_MAX, DirCache
from sockferry.storage.durability import GroupCommit
from sockferry.storage.names import capped_mode, is_temporary_name, split_client_path
from sockferry.storage.root import Root


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    """root/ with a file, a subdirectory, links inside and out; outside/ beside it."""
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret").write_text("secret")
    (root / "file.txt").write_text("hello")
    (root / "sub" / "inner.txt").write_text("inner")
    (root / "link-in").symlink_to("sub/inner.txt")
    (root / "dirlink-in").symlink_to("sub")
    (root / "link-out").symlink_to("../outside/secret")
    (root / "dirlink-out").symlink_to("../outside")
    (root / "abs-link").symlink_to(str(outside / "secret"))
    (root / "sub" / "up").symlink_to("..")
    (root / "loop").symlink_to("loop")
    return root, outside


def snapshot(path: Path) -> dict[str, tuple[int, int, bytes]]:
    result = {}
    for p in sorted(path.rglob("*")):
        st_ = p.lstat()
        data = p.read_bytes() if p.is_file() and not p.is_symlink() else b""
        result[str(p)] = (st_.st_mode, st_.st_size, data)
    return result


HOSTILE = [
    "/etc/passwd", "../outside/secret", "sub/../../outside/secret", "link-out",
    "dirlink-out/secret", "abs-link", "sub/up/../outside/secret", "a\0b", "x" * 256,
    "/".join(["d"] * 2049), ".sockferry-0123.part", "sub/.sockferry-x.part",
]


@pytest.mark.parametrize("path", HOSTILE)
def test_hostile_paths_refused_everywhere(tree: tuple[Path, Path], path: str) -> None:
    root_dir, outside = tree
    before = snapshot(outside)
    with Root(str(root_dir)) as root:
        for operation in (root.stat, root.open_read,
                          lambda p: root.create(p).abort(),
                          lambda p: root.make_dirs(p, 0o755),
                          lambda p: list(root.list(p))):
            with pytest.raises(StorageError):
                operation(path)
    assert snapshot(outside) == before


def test_bytes_path_not_utf8_refused(tree: tuple[Path, Path]) -> None:
    with Root(str(tree[0])) as root, pytest.raises(PathRefused, match="UTF-8"):
        root.stat(b"\xff\xfe")


def test_links_inside_are_followed(tree: tuple[Path, Path]) -> None:
    with Root(str(tree[0])) as root:
        fd, st_ = root.open_read("link-in")
        os.close(fd)
        assert st_.st_size == len("inner")
        fd, _ = root.open_read("dirlink-in/inner.txt")
        os.close(fd)
        fd, _ = root.open_read("sub/up/file.txt")
        os.close(fd)
        assert root.stat("sub/../file.txt").kind is Kind.FILE


def test_symlink_loop_is_an_error(tree: tuple[Path, Path]) -> None:
    with Root(str(tree[0])) as root, pytest.raises(StorageError) as info:
        root.stat("loop")
    assert info.value.errno == errno.ELOOP


def test_open_read_refuses_directories_and_fifos(tree: tuple[Path, Path]) -> None:
    os.mkfifo(tree[0] / "fifo")
    with Root(str(tree[0])) as root:
        for path in ("sub", "fifo", ""):
            with pytest.raises(StorageError):
                root.open_read(path)


def test_atomic_write_commits_with_mode_and_mtime(tree: tuple[Path, Path]) -> None:
    root_dir = tree[0]
    with Root(str(root_dir)) as root:
        f = root.create("sub/new.bin")
        f.write(b"abc")
        assert not (root_dir / "sub" / "new.bin").exists(), "invisible until commit"
        f.commit(0o640, mtime_ns=1_000_000_000_123)
    target = root_dir / "sub" / "new.bin"
    assert target.read_bytes() == b"abc"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert target.stat().st_mtime_ns == 1_000_000_000_123
    assert not [p for p in (root_dir / "sub").iterdir() if is_temporary_name(p.name)]


def test_abort_leaves_nothing(tree: tuple[Path, Path]) -> None:
    root_dir = tree[0]
    with Root(str(root_dir)) as root:
        f = root.create("file.txt")
        f.write(b"replacement")
        f.abort()
    assert (root_dir / "file.txt").read_text() == "hello"
    assert not [p for p in root_dir.iterdir() if is_temporary_name(p.name)]


def test_no_clobber(tree: tuple[Path, Path]) -> None:
    root_dir = tree[0]
    with Root(str(root_dir)) as root:
        f = root.create("file.txt")
        f.write(b"new")
        with pytest.raises(StorageError, match="already exists"):
            f.commit(0o644, clobber=False)
    assert (root_dir / "file.txt").read_text() == "hello"
    assert not [p for p in root_dir.iterdir() if is_temporary_name(p.name)]


def test_write_through_link_inside_replaces_target(tree: tuple[Path, Path]) -> None:
    root_dir = tree[0]
    with Root(str(root_dir)) as root:
        f = root.create("link-in")
        f.write(b"via link")
        f.commit(0o644)
    assert (root_dir / "sub" / "inner.txt").read_bytes() == b"via link"
    assert (root_dir / "link-in").is_symlink()


def test_create_refuses_directory(tree: tuple[Path, Path]) -> None:
    with Root(str(tree[0])) as root, pytest.raises(StorageError, match="directory"):
        root.create("sub")


def test_missing_parent_is_not_created(tree: tuple[Path, Path]) -> None:
    with Root(str(tree[0])) as root, pytest.raises(StorageError, match="does not exist"):
        root.create("nope/file")
    assert not (tree[0] / "nope").exists()


def test_make_dirs_and_list(tree: tuple[Path, Path]) -> None:
    root_dir = tree[0]
    with Root(str(root_dir)) as root:
        root.make_dirs("a/b/c", 0o750)
        root.make_dirs("a/b", 0o750)  # existing is fine
        (root_dir / "a" / "b" / ".sockferry-ffff.part").write_text("hidden")
        names = [(e.path, e.kind) for e in root.list("a", recursive=True)]
        assert names == [("b", Kind.DIRECTORY), ("b/c", Kind.DIRECTORY)]
        top = {e.path: e.kind for e in root.list("")}
        assert top["link-out"] is Kind.SYMLINK and top["sub"] is Kind.DIRECTORY
        with pytest.raises(StorageError, match="not a directory"):
            root.make_dirs("file.txt", 0o755)


def test_client_atomic_file(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    f = AtomicFile.beside(str(target))
    f.write(b"x" * 10)
    f.commit(0o600)
    assert target.read_bytes() == b"x" * 10


def test_capped_mode_strips_special_bits() -> None:
    assert capped_mode(0o4777, 0o022) == 0o755
    assert capped_mode(0o2640, 0o000) == 0o640
    assert capped_mode(0o1777, 0o077) == 0o700


@settings(max_examples=300)
@given(st.text(alphabet=st.sampled_from("ab./\\\0.%"), max_size=40))
def test_split_never_yields_escaping_or_empty_parts(path: str) -> None:
    try:
        parts = split_client_path(path)
    except PathRefused:
        return
    assert all(p not in ("", ".") and "/" not in p and "\0" not in p for p in parts)


def test_listing_deep_and_wide_trees_holds_few_fds(tmp_path: Path) -> None:
    root_dir = tmp_path / "r"
    (root_dir / "deep").mkdir(parents=True)
    fd = os.open(root_dir / "deep", os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(1200):  # deeper than Python's recursion limit
        os.mkdir("d", dir_fd=fd)
        parent, fd = fd, os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(parent)
    os.close(fd)
    for i in range(1500):
        (root_dir / "wide" / f"w{i:04}").mkdir(parents=True)
    (root_dir / "wide" / "w0007" / "f").write_text("x")
    fds_before = len(os.listdir("/proc/self/fd"))
    peak = 0
    with Root(str(root_dir)) as root:
        entries = []
        for entry in root.list("", recursive=True):
            entries.append(entry.path)
            peak = max(peak, len(os.listdir("/proc/self/fd")))
    assert len(entries) == 2 + 1200 + 1500 + 1
    assert entries.index("wide/w0007") < entries.index("wide/w0007/f")
    assert peak - fds_before < 1300, "one fd per level, not one per directory"
    assert len(os.listdir("/proc/self/fd")) == fds_before
    _remove_chain(root_dir / "deep", 1200)


def _remove_chain(top: Path, depth: int) -> None:
    """Remove a d/d/d/... chain bottom-up; shutil.rmtree would recurse too deep."""
    fds = [os.open(top, os.O_RDONLY | os.O_DIRECTORY)]
    for _ in range(depth - 1):
        fds.append(os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fds[-1]))
    while fds:
        fd = fds.pop()
        os.rmdir("d", dir_fd=fd)
        os.close(fd)


def test_dir_cache_walks_once_per_directory(tree: tuple[Path, Path]) -> None:
    root_dir, _ = tree
    with Root(str(root_dir)) as root:
        dirs = DirCache(root)
        first = root.create("sub/a", dirs)
        second = root.create("sub/b", dirs)
        assert first.dir is second.dir  # one fd for the directory, shared
        first.commit(0o644)
        second.commit(0o644)
        assert (root_dir / "sub" / "a").exists() and (root_dir / "sub" / "b").exists()
        # Links in the parent are followed inside the root; `..` is never cached.
        root.create("dirlink-in/c", dirs).commit(0o600)
        assert (root_dir / "sub" / "c").exists()
        assert dirs.parent("sub/../file.txt") is None
        dirs.close()


def test_dir_cache_refuses_what_the_walk_refuses(tree: tuple[Path, Path]) -> None:
    root_dir, outside = tree
    before = snapshot(outside)
    with Root(str(root_dir)) as root:
        dirs = DirCache(root)
        for path in ("dirlink-out/x", "link-out", "abs-link", "/etc/x", "sub/.sockferry-a.part"):
            with pytest.raises(StorageError):
                root.create(path, dirs).abort()
        dirs.close()
    assert snapshot(outside) == before


def test_dir_cache_forgets_after_its_ttl(tree: tuple[Path, Path]) -> None:
    """A directory swapped for a link to the outside after it was cached: once the entry
    is too old the walk is made again, and refuses it."""
    root_dir, outside = tree
    with Root(str(root_dir)) as root:
        dirs = DirCache(root, ttl_s=0.0)
        (root_dir / "moving").mkdir()
        root.create("moving/one", dirs).commit(0o644)
        (root_dir / "moving" / "one").unlink()
        (root_dir / "moving").rmdir()
        (root_dir / "moving").symlink_to(str(outside))
        with pytest.raises(StorageError, match="outside"):
            root.create("moving/two", dirs).abort()
        dirs.close()
    assert not (outside / "two").exists()


def test_group_commit_reports_each_file(tmp_path: Path) -> None:
    (tmp_path / "taken").write_bytes(b"old")
    with Root(str(tmp_path)) as root:
        files = []
        for name in ("a", "taken", "b"):
            f = root.create(name)
            f.write(name.encode())
            files.append((f, 0o640, None))
        group = GroupCommit(files, clobber=False)
        group.run_steps()
        outcomes = group.finish()
    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], StorageError) and "already exists" in str(outcomes[1])
    assert (tmp_path / "a").read_bytes() == b"a" and (tmp_path / "b").read_bytes() == b"b"
    assert (tmp_path / "taken").read_bytes() == b"old"
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o640
    assert not [p for p in tmp_path.iterdir() if is_temporary_name(p.name)]


def test_dir_cache_listing_spares_the_stat_but_keeps_every_refusal(
        tree: tuple[Path, Path]) -> None:
    """Names listed as links or directories still go through the checks; a directory made
    behind the cache's back after the listing fails the commit, leaving nothing."""
    root_dir, outside = tree
    before = snapshot(outside)
    with Root(str(root_dir)) as root:
        dirs = DirCache(root)
        found = dirs.parent("file.txt")
        assert found is not None and found[2]  # a regular file: no stat needed
        for name in ("sub", "link-out", "abs-link", "dirlink-out", "loop"):
            found = dirs.parent(name)
            assert found is not None and not found[2], name
            with pytest.raises(StorageError):
                root.create(name, dirs).abort()
        fresh = root.create("fresh", dirs)  # absent in the listing
        fresh.write(b"x")
        (root_dir / "late").mkdir()
        late = root.create("late", dirs)  # the listing predates it
        late.write(b"y")
        fresh.commit(0o644)
        with pytest.raises(StorageError):
            late.commit(0o644)
        dirs.close()
    assert (root_dir / "fresh").read_bytes() == b"x" and (root_dir / "late").is_dir()
    assert not [p for p in root_dir.iterdir() if is_temporary_name(p.name)]
    assert snapshot(outside) == before


def test_dir_cache_forgets_listings_that_mkdir_changed(tree: tuple[Path, Path]) -> None:
    root_dir, _ = tree
    with Root(str(root_dir)) as root:
        dirs = DirCache(root)
        found = dirs.parent("sub/new")
        assert found is not None and found[2]
        root.make_dirs("sub/new", 0o755)
        dirs.changed("sub/new")
        found = dirs.parent("sub/new")
        assert found is not None and not found[2]
        with pytest.raises(StorageError, match="directory"):
            root.create("sub/new", dirs).abort()
        dirs.close()


def test_dir_cache_lists_only_small_directories(tmp_path: Path) -> None:
    (tmp_path / "big").mkdir()
    for i in range(LISTED_NAMES_MAX + 1):
        (tmp_path / "big" / f"f{i}").write_bytes(b"")
    with Root(str(tmp_path)) as root:
        dirs = DirCache(root)
        found = dirs.parent("big/f0")
        assert found is not None and not found[2]  # too big to list: stat each name
        dirs.close()


def test_small_file_created_with_its_final_mode(tmp_path: Path) -> None:
    with Root(str(tmp_path)) as root:
        for mode in (0o644, 0o600, 0o640, 0o755):
            f = root.create(f"m{mode:o}", mode=mode)
            f.write(b"data")
            f.seal(mode, None, durable=False)
            f.seal(mode, None, durable=False)  # a second seal changes nothing
            f.commit(mode, durable=False)
            assert stat.S_IMODE((tmp_path / f"m{mode:o}").stat().st_mode) == mode


def test_small_file_mode_set_where_the_umask_would_strip_it(tmp_path: Path) -> None:
    """The process umask (read once) strips bits from what open() creates: the mode is
    then set explicitly, so the result never depends on the umask."""
    mask = process_umask()
    with Root(str(tmp_path)) as root:
        mode = 0o777 & ~0o022 | mask  # bits the umask removes, if it removes any
        f = root.create("wide", mode=mode)
        f.write(b"data")
        f.commit(mode, durable=False)
    assert stat.S_IMODE((tmp_path / "wide").stat().st_mode) == mode


def test_group_commit_in_steps_and_abandoned(tmp_path: Path) -> None:
    with Root(str(tmp_path)) as root:
        files = []
        for name in ("a", "b"):
            f = root.create(name)
            f.write(name.encode())
            files.append((f, 0o644, None))
        group = GroupCommit(files)
        group.seal()
        group.flush_data()
        group.abandon()  # cut short before the renames: nothing appears, nothing is left
        assert sorted(p.name for p in tmp_path.iterdir()) == []
        kept = root.create("c")
        kept.write(b"c")
        group = GroupCommit([(kept, 0o600, None)])
        group.run_steps()
        assert group.finish() == [None]
    assert (tmp_path / "c").read_bytes() == b"c"
    assert stat.S_IMODE((tmp_path / "c").stat().st_mode) == 0o600


def test_memory_file_systems_need_no_flush(tmp_path: Path) -> None:
    """Files on tmpfs commit without a flush (there is no disk); elsewhere the group
    waits for one.  Checked against what stat(1) says of each file system."""
    for where in (Path("/dev/shm"), tmp_path):
        kind = subprocess.run(["stat", "-f", "-c", "%T", str(where)], capture_output=True,
                              text=True, check=True).stdout.strip()
        with tempfile.TemporaryDirectory(dir=where) as directory, Root(directory) as root:
            f = root.create("x")
            f.write(b"x")
            group = GroupCommit([(f, 0o644, None)])
            assert group.waits_for_disk() is (kind not in ("tmpfs", "ramfs")), kind
            group.run_steps()
            assert group.finish() == [None]
            assert (Path(directory) / "x").read_bytes() == b"x"
