"""Any backend of the Store protocol (storage/store.py) keeps its contracts.

Written against the protocol only: a backend fixture supplies the store and, where the
store keeps symbolic links, one out-of-band way to plant a link that leads outside (what
another process could do to the tree).  The backends: the local Root on a temporary
directory, and the S3 store in a fresh bucket of a real Ceph cluster (tests/ceph.py).
A store without links or partial files must refuse them as the protocol says.
"""

from __future__ import annotations

import errno
import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sockferry.entries import Kind
from sockferry.errors import PathRefused, StorageError
from sockferry.storage.atomic import PartialFile, ResumableFile
from sockferry.storage.root import Root
from sockferry.storage.s3 import S3Location, S3Store
from sockferry.storage.store import Store
from tests.ceph import CephS3, ceph_s3

__all__ = ["ceph_s3"]  # the session's Ceph cluster, booted on first use


@dataclass
class Backend:
    store: Store
    # make ``path`` a link to somewhere outside the store holding a file named "secret"
    plant_escaping_link: Callable[[str], None] | None


def _local(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    top = tmp_path / "store"
    outside = tmp_path / "outside"
    top.mkdir()
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")

    def plant(path: str) -> None:
        os.symlink(outside, top / path)

    root = Root(str(top))
    try:
        yield Backend(root, plant)
    finally:
        root.close()


_buckets = itertools.count()


def _s3(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    cluster: CephS3 = request.getfixturevalue("ceph_s3")
    bucket = f"conformance-{os.getpid()}-{next(_buckets)}"
    client = cluster.client()
    client.create_bucket(Bucket=bucket)
    # a prefix, so that the store's top is not the bucket's: nothing may leak above it
    client.put_object(Bucket=bucket, Key="beside-the-prefix", Body=b"not the store's")
    store = S3Store(S3Location.parse(f"s3://{bucket}/top?endpoint={cluster.endpoint_url}"),
                    spool=str(tmp_path), client=client)
    try:
        yield Backend(store, None)
    finally:
        store.close()
    uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert uploads == [], f"the store left multipart uploads behind: {uploads}"
    assert os.listdir(tmp_path) == [], "the store left spool files behind"


BACKENDS = {"local": _local, "s3": _s3}
LINKS = {"local": True, "s3": False}  # whether the backend keeps symbolic links
PARTIALS = {"local": True, "s3": True}  # whether it keeps resume's partial files


def _backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    backend = BACKENDS[request.param](request, tmp_path)
    found = next(backend)
    assert found.store.keeps_links is LINKS[request.param]
    assert found.store.keeps_partials is PARTIALS[request.param]
    yield found
    next(backend, None)


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    yield from _backend(request, tmp_path)


@pytest.fixture
def store(backend: Backend) -> Store:
    return backend.store


@pytest.fixture(params=sorted(name for name, links in LINKS.items() if links))
def linking_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    yield from _backend(request, tmp_path)


@pytest.fixture
def linking_store(linking_backend: Backend) -> Store:
    return linking_backend.store


@pytest.fixture(params=sorted(name for name, links in LINKS.items() if not links))
def linkless_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    for backend in _backend(request, tmp_path):
        yield backend.store


@pytest.fixture(params=sorted(name for name, kept in PARTIALS.items() if kept))
def partial_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    for backend in _backend(request, tmp_path):
        yield backend.store


def read_all(store: Store, path: str) -> bytes:
    fd, st = store.open_read(path)
    try:
        data = os.pread(fd, st.st_size + 1, 0)
    finally:
        os.close(fd)
    assert len(data) == st.st_size
    return data


def put(store: Store, path: str, data: bytes, mode: int = 0o644) -> None:
    file = store.create(path)
    file.write(data)
    file.commit(mode)


def names(store: Store, path: str = "", *, recursive: bool = False) -> list[str]:
    return [entry.path for entry in store.list(path, recursive=recursive)]


def test_every_backend_is_a_store(store: Store) -> None:
    assert isinstance(store, Store)


def test_a_created_file_is_invisible_until_committed(store: Store) -> None:
    file = store.create("report.txt")
    file.write(b"first half, ")
    file.write(b"second half")
    assert not store.exists("report.txt")
    assert names(store) == []
    file.commit(0o640)
    assert store.exists("report.txt")
    assert read_all(store, "report.txt") == b"first half, second half"


def test_an_aborted_file_leaves_nothing(store: Store) -> None:
    file = store.create("gone.bin")
    file.write(b"x" * 10_000)
    file.abort()
    assert not store.exists("gone.bin")
    assert names(store) == []
    with pytest.raises(StorageError) as raised:
        store.open_read("gone.bin")
    assert raised.value.errno == errno.ENOENT


def test_commit_replaces_an_existing_file_whole(store: Store) -> None:
    put(store, "data", b"the old content, longer than the new")
    before_fd, _ = store.open_read("data")
    try:
        file = store.create("data")
        file.write(b"new")
        assert read_all(store, "data") == b"the old content, longer than the new"
        file.commit(0o644)
        assert read_all(store, "data") == b"new"
        # a reader that opened the old file keeps all of it, never a mixture
        assert os.pread(before_fd, 100, 0) == b"the old content, longer than the new"
    finally:
        os.close(before_fd)
    assert store.stat("data").size == 3


def test_commit_without_clobber_refuses_an_existing_file(store: Store) -> None:
    put(store, "kept", b"original")
    file = store.create("kept")
    file.write(b"intruder")
    with pytest.raises(StorageError) as raised:
        file.commit(0o644, clobber=False)
    assert raised.value.errno == errno.EEXIST
    assert read_all(store, "kept") == b"original"
    assert names(store) == ["kept"]


def test_stat_list_and_exists_after_commit(store: Store) -> None:
    put(store, "b.txt", b"bee", 0o600)
    put(store, "a.txt", b"ay!", 0o644)
    entry = store.stat("a.txt")
    assert (entry.path, entry.kind, entry.size, entry.mode & 0o777) == (
        "a.txt", Kind.FILE, 3, 0o644)
    assert store.stat("b.txt").mode & 0o777 == 0o600
    assert names(store) == ["a.txt", "b.txt"]
    assert store.exists("a.txt")
    assert not store.exists("c.txt")
    assert [(e.path, e.kind) for e in store.list("a.txt")] == [("a.txt", Kind.FILE)]


def test_make_dirs_then_list(store: Store) -> None:
    store.make_dirs("top/middle/leaf", 0o755)
    store.make_dirs("top/middle", 0o755)  # existing: fine
    put(store, "top/middle/file", b"12345")
    assert store.stat("top/middle").kind is Kind.DIRECTORY
    assert names(store) == ["top"]
    assert names(store, "top/middle") == ["file", "leaf"]
    listed = [(e.path, e.kind) for e in store.list("top", recursive=True)]
    assert listed == [("middle", Kind.DIRECTORY), ("middle/file", Kind.FILE),
                      ("middle/leaf", Kind.DIRECTORY)]
    with pytest.raises(StorageError) as raised:
        store.make_dirs("top/middle/file", 0o755)
    assert raised.value.errno == errno.EEXIST


def test_create_needs_its_directory_and_refuses_one_in_the_way(store: Store) -> None:
    with pytest.raises(StorageError) as raised:
        store.create("missing/file")
    assert raised.value.errno == errno.ENOENT
    store.make_dirs("dir", 0o755)
    with pytest.raises(StorageError) as raised:
        store.create("dir")
    assert raised.value.errno == errno.EISDIR


def test_remove_a_file_and_an_empty_directory(store: Store) -> None:
    store.make_dirs("dir", 0o755)
    put(store, "dir/file", b"seven b")
    with pytest.raises(StorageError) as raised:
        store.remove("dir", directory=True)
    assert raised.value.errno == errno.ENOTEMPTY
    with pytest.raises(StorageError) as raised:
        store.remove("dir")
    assert raised.value.errno == errno.EISDIR
    with pytest.raises(StorageError) as raised:
        store.remove("dir/file", directory=True)
    assert raised.value.errno == errno.ENOTDIR
    assert store.remove("dir/file") == 7
    assert not store.exists("dir/file")
    assert store.remove("dir", directory=True) == 0
    assert not store.exists("dir")
    assert names(store) == []
    with pytest.raises(PathRefused):
        store.remove("", directory=True)


def test_symlink_and_readlink_inside(linking_store: Store) -> None:
    store = linking_store
    store.make_dirs("docs", 0o755)
    put(store, "docs/real.txt", b"real")
    store.symlink("docs/alias.txt", "real.txt")
    store.symlink("up", "docs/real.txt")
    assert store.readlink("docs/alias.txt") == "real.txt"
    assert read_all(store, "docs/alias.txt") == b"real"
    assert read_all(store, "up") == b"real"
    assert store.stat("docs/alias.txt").kind is Kind.FILE  # followed
    kinds = {e.path: e.kind for e in store.list("docs")}
    assert kinds == {"alias.txt": Kind.SYMLINK, "real.txt": Kind.FILE}
    store.symlink("docs/alias.txt", "../up")  # replaces the link, atomically
    assert store.readlink("docs/alias.txt") == "../up"
    with pytest.raises(StorageError) as raised:
        store.symlink("docs/alias.txt", "real.txt", clobber=False)
    assert raised.value.errno == errno.EEXIST
    with pytest.raises(StorageError) as raised:
        store.readlink("docs/real.txt")
    assert raised.value.errno == errno.EINVAL
    store.remove("docs/alias.txt")  # the link itself, not its target
    assert read_all(store, "docs/real.txt") == b"real"


@pytest.mark.parametrize("target", ["../../outside", "/etc", "docs/../../x", "../../.."])
def test_links_leading_outside_are_not_made(linking_store: Store, target: str) -> None:
    store = linking_store
    store.make_dirs("docs", 0o755)
    with pytest.raises(PathRefused):
        store.symlink("docs/out", target)
    assert not store.exists("docs/out")
    assert names(store, "docs") == []


@pytest.mark.parametrize("path", ["..", "../x", "a/../../x", "/etc/passwd", "/", "a\0b"])
def test_paths_escaping_the_store_are_refused(store: Store, path: str) -> None:
    store.make_dirs("a", 0o755)
    for attempt in (store.stat, store.open_read, store.exists, store.create,
                    store.readlink, store.open_partial):
        with pytest.raises(PathRefused):
            attempt(path)
    with pytest.raises(PathRefused):
        store.make_dirs(path + "/new", 0o755)
    with pytest.raises(PathRefused):
        store.remove(path)
    with pytest.raises(PathRefused):
        list(store.list(path))


def test_a_link_planted_to_the_outside_is_not_followed(linking_backend: Backend) -> None:
    store = linking_backend.store
    assert linking_backend.plant_escaping_link is not None
    linking_backend.plant_escaping_link("way-out")
    for attempt in (store.stat, store.open_read, store.readlink, store.create):
        with pytest.raises(PathRefused):
            attempt("way-out/secret")
    with pytest.raises(PathRefused):
        store.stat("way-out")
    with pytest.raises(PathRefused):
        store.readlink("way-out")  # where it points is not revealed
    with pytest.raises(PathRefused):
        list(store.list("way-out"))
    assert [(e.path, e.kind) for e in store.list("")] == [("way-out", Kind.SYMLINK)]


def test_partial_state_is_kept_and_reopened_for_resume(partial_store: Store) -> None:
    store = partial_store
    assert store.open_partial("big.iso") is None
    first = store.create("big.iso", kind=PartialFile)
    assert isinstance(first, ResumableFile)
    assert first.kept == 0
    first.write(b"A" * 3000)
    first.abort()  # the transfer broke off: what arrived is kept
    assert not store.exists("big.iso")
    assert names(store) == []  # the partial file is not listed
    found = store.open_partial("big.iso")
    assert found is not None
    fd, st = found
    try:
        assert st.st_size == 3000
        assert os.pread(fd, 4000, 0) == b"A" * 3000
    finally:
        os.close(fd)

    second = store.create("big.iso", kind=PartialFile)
    assert isinstance(second, ResumableFile)
    try:
        assert second.kept == 3000
        with pytest.raises(StorageError) as raised:  # being written: not to be read now
            store.open_partial("big.iso")
        assert raised.value.errno == errno.EAGAIN
        second.start_at(2000)  # the receiver trusts only the first 2000 bytes
        second.write(b"B" * 1000)
        assert not store.exists("big.iso")
        second.commit(0o644)
    except BaseException:
        second.abort()
        raise
    assert read_all(store, "big.iso") == b"A" * 2000 + b"B" * 1000
    assert store.open_partial("big.iso") is None


def test_an_empty_partial_file_is_not_kept(partial_store: Store) -> None:
    store = partial_store
    partial = store.create("nothing", kind=PartialFile)
    partial.abort()
    assert store.open_partial("nothing") is None


def test_a_store_without_links_refuses_them(linkless_store: Store) -> None:
    store = linkless_store
    put(store, "real.txt", b"real")
    with pytest.raises(StorageError) as raised:
        store.symlink("alias.txt", "real.txt")
    assert raised.value.errno == errno.EOPNOTSUPP
    assert not store.exists("alias.txt")
    with pytest.raises(StorageError) as raised:
        store.readlink("real.txt")
    assert raised.value.errno == errno.EINVAL
    with pytest.raises(StorageError) as raised:
        store.readlink("absent")
    assert raised.value.errno == errno.ENOENT
    assert names(store) == ["real.txt"]


def test_a_large_file_written_in_pieces_reads_back_whole(store: Store) -> None:
    """Bigger than one part of an S3 multipart upload (8 MiB), in uneven pieces."""
    data = os.urandom(8 * 1024 * 1024 * 2 + 12_345)
    file = store.create("large.bin")
    for start in range(0, len(data), 3_000_001):
        file.write(data[start:start + 3_000_001])
    assert not store.exists("large.bin")
    file.commit(0o600, 1_600_000_000_987_654_321)
    entry = store.stat("large.bin")
    assert (entry.size, entry.mode & 0o777, entry.mtime_ns) == (
        len(data), 0o600, 1_600_000_000_987_654_321)
    assert read_all(store, "large.bin") == data


def test_a_hole_reads_back_as_zeros(store: Store) -> None:
    file = store.create("sparse")
    file.write(b"head")
    file.skip(9 * 1024 * 1024)  # over a part of its own
    file.write(b"tail")
    file.skip(100)  # a trailing hole sets the size
    file.commit(0o644)
    assert read_all(store, "sparse") == b"head" + bytes(9 * 1024 * 1024) + b"tail" + \
        bytes(100)
