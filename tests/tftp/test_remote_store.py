"""The server on a remote store (``Store.remote``, an S3 bucket in production): the
storage work of admitting a request runs in a worker thread, never on the event loop,
while the request keeps its place in the limits.  A local ``Root`` that says it is
remote stands in for the bucket here (tests/storage_ceph/test_tftp_store.py runs the
real one); a ``Root`` that does not keeps opening files on the loop."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sockferry.addresses import HostPort
from sockferry.entries import Entry
from sockferry.errors import PeerRefused
from sockferry.storage.atomic import AtomicFile
from sockferry.storage.root import Root
from sockferry.storage.store import StoreCache
from sockferry.tftp.client import ClientOptions, download, upload
from sockferry.tftp.packets import (
    Data,
    Error,
    ErrorCode,
    Opcode,
    decode_packet,
    encode_ack,
    encode_request,
)
from sockferry.tftp.server import TftpServer, TftpServerConfig, UploadPolicy
from tests.conftest import wait_until
from tests.tftp.udp_helpers import client_socket, running_server, server_thread

STORAGE_CALLS = ("stat", "open_read", "create", "statvfs")


class RecordingRoot(Root):
    """A Root noting the thread each storage call of the server ran on; ``gate``, when
    cleared, holds ``open_read`` once the file is open (``entered`` says one is held),
    to keep an open in flight."""

    def __init__(self, path: str, *, remote: bool) -> None:
        super().__init__(path)
        self.remote = remote
        self.calls: list[tuple[str, int, str]] = []  # (method, thread id, thread name)
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.opened: list[int] = []  # the fds open_read handed out
        self._lock = threading.Lock()

    def _note(self, method: str) -> None:
        thread = threading.current_thread()
        with self._lock:
            self.calls.append((method, threading.get_ident(), thread.name))

    def stat(self, path: str | bytes) -> Entry:
        self._note("stat")
        return super().stat(path)

    def open_read(self, path: str | bytes) -> tuple[int, os.stat_result]:
        self._note("open_read")
        fd, st = super().open_read(path)
        self.opened.append(fd)
        self.entered.set()  # as a fetch that has its spool file and is still reading
        if not self.gate.wait(30):
            os.close(fd)
            raise AssertionError("the test never opened the gate")
        return fd, st

    def create(self, path: str | bytes, dirs: StoreCache | None = None,
               kind: type[AtomicFile] | None = None, mode: int = 0o600) -> AtomicFile:
        self._note("create")
        return super().create(path, dirs, kind, mode)

    def statvfs(self) -> os.statvfs_result:
        self._note("statvfs")
        return super().statvfs()

    def count(self, method: str) -> int:
        with self._lock:
            return sum(1 for name, _, _ in self.calls if name == method)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    (root / "small").write_bytes(b"a few bytes\n")
    (root / "blocks").write_bytes(os.urandom(5 * 1468 + 17))
    (tmp_path / "secret").write_bytes(b"outside")
    return root


def rrq(name: bytes) -> bytes:
    return encode_request(Opcode.RRQ, name, "octet")


def _serve_and_fetch(tree: Path, store: RecordingRoot, tmp_path: Path) -> int:
    """A download, an upload and three refusals through ``store``; the loop's thread."""
    config = TftpServerConfig(store, allow_upload=UploadPolicy.CREATE)

    async def go() -> int:
        async with running_server(config) as (_, port):
            server = HostPort("127.0.0.1", port)
            options = ClientOptions(windowsize=4)
            await download(server, "blocks", str(tmp_path / "got"), options)
            await upload(str(tmp_path / "got"), server, "uploaded", options)
            for name, code in (("absent", ErrorCode.FILE_NOT_FOUND),
                               ("../secret", ErrorCode.ACCESS_VIOLATION)):
                with pytest.raises(PeerRefused, match=f"TFTP error {int(code)}"):
                    await download(server, name, str(tmp_path / "nothing"), options)
            with pytest.raises(PeerRefused, match="only creates new files"):
                await upload(str(tmp_path / "got"), server, "small", options)
        return threading.get_ident()

    loop_thread = asyncio.run(go())
    assert (tmp_path / "got").read_bytes() == (tree / "blocks").read_bytes()
    assert (tree / "uploaded").read_bytes() == (tree / "blocks").read_bytes()
    assert not (tmp_path / "nothing").exists()
    return loop_thread


def test_a_remote_stores_files_are_opened_off_the_loop(tree: Path, tmp_path: Path) -> None:
    store = RecordingRoot(str(tree), remote=True)
    loop_thread = _serve_and_fetch(tree, store, tmp_path)
    assert {name for name, _, _ in store.calls} == set(STORAGE_CALLS), store.calls
    on_loop = [call for call in store.calls if call[1] == loop_thread]
    assert on_loop == [], f"storage calls made on the event loop: {on_loop}"
    assert all(thread.startswith("sockferry-tftp-open") for _, _, thread in store.calls)


def test_a_local_root_keeps_opening_on_the_loop(tree: Path, tmp_path: Path) -> None:
    """The fast path: no thread hop for a directory (the test above could not fail if
    every call went through a thread anyway)."""
    store = RecordingRoot(str(tree), remote=False)
    loop_thread = _serve_and_fetch(tree, store, tmp_path)
    assert store.calls
    assert all(ident == loop_thread for _, ident, _ in store.calls), store.calls


@pytest.fixture
def held(tree: Path) -> Iterator[RecordingRoot]:
    """A remote store whose open_read waits until the test lets it go on."""
    store = RecordingRoot(str(tree), remote=True)
    store.gate.clear()
    yield store
    store.gate.set()


def test_a_repeat_while_opening_starts_no_second_transfer(held: RecordingRoot,
                                                          caplog: pytest.LogCaptureFixture,
                                                          ) -> None:
    config = TftpServerConfig(held, max_unconfirmed_per_source=8)
    with caplog.at_level(logging.INFO, logger="sockferry.tftp"), \
            server_thread(config) as (server, port), client_socket() as sock:
        sock.sendto(rrq(b"small"), ("127.0.0.1", port))
        assert held.entered.wait(10), "the open never started"
        for _ in range(3):  # the client's timer fires while the object is fetched
            sock.sendto(rrq(b"small"), ("127.0.0.1", port))
        # The repeats are handled once a later request (refused on the loop: no such
        # mode) is answered: datagrams from one socket are read in order.
        sock.sendto(encode_request(Opcode.RRQ, b"small", "mail"), ("127.0.0.1", port))
        reply, _ = sock.recvfrom(1000)
        assert decode_packet(reply) == Error(ErrorCode.ILLEGAL_OPERATION,
                                             "transfer mode 'mail' is not supported")
        assert server.active_transfers == 1
        held.gate.set()
        reply, tid = sock.recvfrom(1000)
        assert decode_packet(reply) == Data(1, b"a few bytes\n")
        sock.sendto(encode_ack(1), tid)
        wait_until(lambda: server.active_transfers == 0, 10, "the transfer's end")
    assert held.count("open_read") == 1
    lines = [r.getMessage() for r in caplog.records if "'small' octet" in r.getMessage()]
    assert len(lines) == 1 and lines[0].endswith(", ok"), lines


@pytest.mark.parametrize(("limits", "refusal"), [
    ({"max_transfers": 1}, "server busy, try again later"),
    ({"max_per_peer": 1}, "too many transfers from your address, try again later"),
])
def test_a_request_being_opened_counts_against_the_limits(
        held: RecordingRoot, limits: dict[str, int], refusal: str) -> None:
    config = TftpServerConfig(held, max_unconfirmed_per_source=8, **limits)  # type: ignore[arg-type]
    with server_thread(config) as (_, port), client_socket() as first, \
            client_socket() as second:
        first.sendto(rrq(b"small"), ("127.0.0.1", port))
        assert held.entered.wait(10), "the open never started"
        second.sendto(rrq(b"blocks"), ("127.0.0.1", port))
        reply, _ = second.recvfrom(1000)
        assert decode_packet(reply) == Error(ErrorCode.NOT_DEFINED, refusal)
        held.gate.set()
        reply, tid = first.recvfrom(1000)
        assert decode_packet(reply) == Data(1, b"a few bytes\n")
        first.sendto(encode_ack(1), tid)
    assert held.count("open_read") == 1


def test_a_request_being_opened_is_unconfirmed(held: RecordingRoot,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """Its peer has not answered yet: it holds one of the source's unconfirmed slots."""
    config = TftpServerConfig(held, max_unconfirmed_per_source=1)
    with caplog.at_level(logging.INFO, logger="sockferry.tftp"), \
            server_thread(config) as (_, port), client_socket() as sock:
        sock.sendto(rrq(b"small"), ("127.0.0.1", port))
        assert held.entered.wait(10), "the open never started"
        sock.sendto(rrq(b"blocks"), ("127.0.0.1", port))
        wait_until(lambda: any("'blocks' dropped: 1 transfers from 127.0.0.1 are waiting"
                               in r.getMessage() for r in caplog.records), 10,
                   "the second request dropped")
        held.gate.set()
        reply, tid = sock.recvfrom(1000)
        assert decode_packet(reply) == Data(1, b"a few bytes\n")
        sock.sendto(encode_ack(1), tid)
    assert held.count("open_read") == 1


def test_refusals_from_a_worker_get_their_error_and_one_line(
        tree: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = RecordingRoot(str(tree), remote=True)
    config = TftpServerConfig(store, allow_upload=UploadPolicy.OVERWRITE)
    asked = [
        (rrq(b"absent"), Error(ErrorCode.FILE_NOT_FOUND, "'absent' does not exist")),
        (rrq(b"../secret"), None),  # ACCESS_VIOLATION, the sandbox's sentence
        (encode_request(Opcode.WRQ, b"new", "octet"),
         Error(ErrorCode.FILE_NOT_FOUND, "this server only overwrites existing files")),
    ]
    with caplog.at_level(logging.INFO, logger="sockferry.tftp"), \
            server_thread(config) as (server, port):
        for request, expected in asked:
            with client_socket() as sock:
                sock.sendto(request, ("127.0.0.1", port))
                reply = decode_packet(sock.recvfrom(1000)[0])
            if expected is None:
                assert isinstance(reply, Error) and reply.code == ErrorCode.ACCESS_VIOLATION
                assert "leads outside the server's root" in reply.message
            else:
                assert reply == expected
        wait_until(lambda: server.active_transfers == 0, 10, "every place given back")
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 3, refused
    assert store.count("open_read") == 2 and store.count("stat") == 1


def test_close_is_prompt_while_an_open_is_in_flight(held: RecordingRoot) -> None:
    """The thread cannot be stopped: the server closes without it, and what it opened
    is closed once it returns."""
    config = TftpServerConfig(held)

    async def go() -> TftpServer:
        server = TftpServer(config)
        await server.start([HostPort("127.0.0.1", 0)])
        port = server.addresses[0][1]
        with client_socket() as sock:
            sock.sendto(rrq(b"blocks"), ("127.0.0.1", port))
            assert await asyncio.to_thread(held.entered.wait, 10), "the open never started"
            assert server.active_transfers == 1
            await asyncio.wait_for(server.close(), 20)  # a bound against a hang only
        assert not held.gate.is_set(), "close waited for the open"
        return server

    server = asyncio.run(go())
    assert server.active_transfers == 0
    [fd] = held.opened
    assert _is_open(fd, "blocks")
    held.gate.set()
    wait_until(lambda: not _is_open(fd, "blocks"), 10, "the abandoned fd to be closed")


def _is_open(fd: int, name: str) -> bool:
    """Whether ``fd`` is still this process's descriptor of the file ``name``."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}").endswith(f"/{name}")
    except OSError as exc:
        assert exc.errno == errno.ENOENT
        return False
