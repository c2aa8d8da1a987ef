"""Real disk-full and read-only file systems (small tmpfs mounts) under the server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest

from sockferry.cli.runtime import ExitCode
from sockferry.ferry import codec
from sockferry.ferry import messages as m
from sockferry.ferry.bodies import INLINE_HOLE, Sink
from sockferry.ferry.messages import Feature
from sockferry.storage.names import is_temporary_name
from sockferry.storage.root import Root
from tests.conftest import mounted_tmpfs
from tests.ferry.harness import RawClient, ServerThread, run_cli, write_token

# (tmpfs size, file size): a body that goes through the receive buffer, and one large
# enough to be copied into its file by a worker thread.
FULL_DISKS = {"buffered": ("size=2m", 4 * 1024 * 1024), "copied": ("size=12m", 40 * 1024 * 1024)}


@pytest.fixture(params=sorted(FULL_DISKS))
def full_disk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Path, int]]:
    options, size = FULL_DISKS[request.param]
    with mounted_tmpfs(tmp_path / "small", options) as path:
        yield path, size


@pytest.fixture
def read_only_disk(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "ro", "size=1m,ro") as path:
        yield path


def test_disk_full_is_reported_and_cleaned_up(full_disk: tuple[Path, int],
                                              tmp_path: Path) -> None:
    small_disk, size = full_disk
    token = write_token(tmp_path / "token")
    big, small = tmp_path / "big.bin", tmp_path / "small.bin"
    big.write_bytes(os.urandom(size))
    small.write_bytes(b"fits")
    with ServerThread(small_disk) as server:
        code, _, err = run_cli("send", "-P", str(server.port), "--token-file", str(token),
                               str(big), str(small), "127.0.0.1:")
    assert code == ExitCode.REFUSED
    assert "sockferry: error: disk full while writing 'big.bin'; the partial file was " \
        "removed" in err.splitlines()
    assert not (small_disk / "big.bin").exists()
    assert not [p for p in small_disk.iterdir() if is_temporary_name(p.name)]
    assert (small_disk / "small.bin").read_bytes() == b"fits", "the next file still lands"


def test_read_only_file_system(read_only_disk: Path, tmp_path: Path) -> None:
    token = write_token(tmp_path / "token")
    (tmp_path / "f").write_text("x")
    with ServerThread(read_only_disk) as server:
        code, _, err = run_cli("send", "-P", str(server.port), "--token-file", str(token),
                               str(tmp_path / "f"), "127.0.0.1:")
    assert code == ExitCode.REFUSED
    assert "'f' is on a read-only file system" in err


def test_local_disk_full_on_get(full_disk: tuple[Path, int], tmp_path: Path) -> None:
    small_disk, size = full_disk
    token = write_token(tmp_path / "token")
    root = tmp_path / "root"
    root.mkdir()
    (root / "big.bin").write_bytes(os.urandom(size))
    with ServerThread(root) as server:
        code, _, err = run_cli("get", "-P", str(server.port), "--token-file", str(token),
                               "127.0.0.1:big.bin", str(small_disk))
    assert code == ExitCode.STORAGE
    assert f"disk full while writing '{small_disk}/big.bin'; the partial file was " \
        "removed" in err
    assert list(small_disk.iterdir()) == []


def test_target_replaced_by_a_directory_mid_upload(tmp_path: Path) -> None:
    """The file being replaced becomes a directory while its upload is under way: the
    client is told (IS_DIRECTORY), the directory is left alone, no temporary remains."""
    (tmp_path / "target").write_bytes(b"old")
    body = os.urandom(100_000)
    with ServerThread(tmp_path) as server:
        raw = RawClient(server.port)
        raw.send(codec.encode(m.Put(1, "target", len(body), 0o644, 0)),
                 codec.data_header(1, 50_000), body[:50_000])
        raw.send(codec.encode(m.Stat(3, "target")))  # answered: the first half is in
        assert any(isinstance(r, m.Entries) for r in raw.replies(1))
        (tmp_path / "target").unlink()
        (tmp_path / "target").mkdir()
        (tmp_path / "target" / "inside").write_bytes(b"keep")
        raw.send(codec.data_header(1, 50_000), body[50_000:],
                 codec.encode(m.Done(1, blake3.blake3(body).digest())))
        replies = raw.replies(1)
        raw.close()
    assert isinstance(replies[0], m.Error) and replies[0].code == m.ErrorCode.IS_DIRECTORY
    assert (tmp_path / "target" / "inside").read_bytes() == b"keep"
    assert not [p for p in tmp_path.iterdir() if is_temporary_name(p.name)]


def test_an_aborted_upload_frees_its_space_at_once(tmp_path: Path) -> None:
    """The hashing thread that follows an upload past a long hole holds the file open: an
    abort must wait for it to let go, or the next upload meets a disk still full."""
    with mounted_tmpfs(tmp_path / "disk", "size=64m") as disk:
        free = os.statvfs(disk).f_bfree
        chunk = os.urandom(4 * 1024 * 1024)
        for _ in range(20):
            with Root(str(disk)) as root:
                file = root.create("big.bin")
                sink = Sink(file, Feature.DIGEST_BLAKE3)
                sink.receive(INLINE_HOLE + 1)  # hashed by a thread from here on
                assert sink.deferred
                for _ in range(8):
                    sink.receive(chunk)
                file.abort()
                assert os.statvfs(disk).f_bfree == free, "the aborted file's space is held"
