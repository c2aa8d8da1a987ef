"""A store whose calls wait on the network (``remote``): one connection waiting on a slow
answer stalls only itself.  The store is a real directory (``Root``) whose MKDIR is held
back until the test lets it go, as a stalled S3 gateway would hold it."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path
from typing import Any

from sockferry.addresses import HostPort
from sockferry.api import connect, run_ferry_server
from sockferry.ferry import codec
from sockferry.ferry import messages as m
from sockferry.ferry.server import FerryServer
from sockferry.ferry.server_config import FerryServerConfig
from sockferry.storage.atomic import AtomicFile
from sockferry.storage.root import Root
from tests.ferry.harness import TOKEN, RawClient


class HeldRoot(Root):
    """A directory served as a remote store: MKDIR of ``held/...`` waits for ``go``."""

    remote = True

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.go = threading.Event()
        self.waiting = threading.Event()
        self.threads: set[int] = set()

    def make_dirs(self, path: str | bytes, mode: int) -> None:
        self.threads.add(threading.get_ident())
        if str(path).startswith("held"):
            self.waiting.set()
            assert self.go.wait(30), "the test never let the MKDIR go"
        super().make_dirs(path, mode)

    def stat(self, path: str | bytes):  # type: ignore[no-untyped-def]
        self.threads.add(threading.get_ident())
        return super().stat(path)


def test_a_stalled_store_call_holds_only_its_own_connection(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    source = tmp_path / "f"
    source.write_bytes(b"payload" * 1000)
    store = HeldRoot(str(root))

    async def scenario() -> tuple[float, int]:
        server = FerryServer(store, FerryServerConfig(token=TOKEN))
        running = await run_ferry_server(server, [HostPort("127.0.0.1", 0)])
        try:
            async with connect("127.0.0.1", running.port, token=TOKEN) as slow, \
                    connect("127.0.0.1", running.port, token=TOKEN) as other:
                # MKDIR and a PUT into it pipelined on the held connection
                held = asyncio.ensure_future(slow.mkdir("held/dir"))
                into = asyncio.ensure_future(slow.put(source, "held/dir/f"))
                assert await asyncio.to_thread(store.waiting.wait, 10)
                started = time.monotonic()
                await other.mkdir("free")
                await other.put(source, "free/f")
                assert (await other.stat("free/f")).size == source.stat().st_size
                served = time.monotonic() - started
                assert not held.done() and not into.done()
                store.go.set()
                await held
                transfer = await into  # ordered after its MKDIR: the directory was there
                return served, transfer.size
        finally:
            store.go.set()
            running.close()
            await running.wait_closed()

    served, size = asyncio.run(scenario())
    assert size == source.stat().st_size
    assert (root / "held" / "dir" / "f").read_bytes() == source.read_bytes()
    assert served < 5, served  # not held for the 30 s the stalled call could last
    assert threading.get_ident() not in store.threads  # every call in a worker thread
    assert (root / "free").is_dir()


class AbortWatchingRoot(Root):
    """A directory served as a remote store, noting the thread of each upload's abort."""

    remote = True

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.aborted_in: list[int] = []

    def create(self, *args: Any, **kwargs: Any) -> AtomicFile:
        file = super().create(*args, **kwargs)
        abort = file.abort

        def watched() -> None:
            if not file._done:  # a second abort does nothing: not counted
                self.aborted_in.append(threading.get_ident())
            abort()
        file.abort = watched  # type: ignore[method-assign]
        return file


def test_uploads_left_by_a_client_that_ends_are_aborted_off_the_loop(tmp_path: Path) -> None:
    """The client's input ends between two frames with a PUT half sent: the store's
    abort (requests, on S3) is made in a worker thread, the refusal still sent."""
    root = tmp_path / "root"
    root.mkdir()
    store = AbortWatchingRoot(str(root))

    def half_a_put(port: int) -> list[m.Message]:
        raw = RawClient(port)
        raw.send(codec.encode(m.Put(1, "half", 10, 0o644, 0)), codec.data_header(1, 5),
                 b"short")
        raw.sock.shutdown(socket.SHUT_WR)  # at a frame boundary: the input ends
        got = raw.replies(1)
        raw.close()
        return got

    async def scenario() -> tuple[list[m.Message], int]:
        server = FerryServer(store, FerryServerConfig(token=TOKEN))
        running = await run_ferry_server(server, [HostPort("127.0.0.1", 0)])
        try:
            got = await asyncio.to_thread(half_a_put, running.port)
        finally:
            running.close()
            await running.wait_closed()
        return got, threading.get_ident()

    got, loop_thread = asyncio.run(scenario())
    assert any(isinstance(r, m.Error) and r.code == m.ErrorCode.BAD_REQUEST for r in got), got
    assert store.aborted_in and loop_thread not in store.aborted_in, store.aborted_in
    assert not (root / "half").exists()
