"""SocketStream over real loopback TCP: the shared receive buffer, bodies copied into
files off the event loop and files sent from their mapping, both hashed on the way."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import pytest

from sockferry.errors import StorageError, TransferTimeout
from sockferry.ferry import digests
from sockferry.ferry.messages import Feature
from sockferry.streams import SocketStream


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    return client, server


@contextlib.asynccontextmanager
async def _stream_and_file(path: Path, flags: int, *, timeout: float = 10,
                           sending: bool = False) -> AsyncIterator[tuple[SocketStream, int]]:
    """A SocketStream on one end of a loopback TCP pair (the sending end with
    ``sending``) and a file opened with ``flags``; all closed afterwards."""
    sender, receiver = tcp_pair()
    stream = SocketStream(sender if sending else receiver, idle_timeout_s=timeout)
    fd = os.open(path, flags, 0o600)
    try:
        yield stream, fd
    finally:
        os.close(fd)
        stream.close()
        (receiver if sending else sender).close()


def test_a_body_is_copied_exactly_and_hashed_on_the_way(tmp_path: Path) -> None:
    payload = os.urandom(3 * 1024 * 1024 + 17)
    after = b"next frame"
    hasher = digests.new_hasher(Feature.DIGEST_BLAKE3)

    async def go() -> tuple[int, OSError | None, bytes]:
        sender, receiver = tcp_pair()
        stream = SocketStream(receiver, idle_timeout_s=10)
        fd = os.open(tmp_path / "body", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            writer = asyncio.get_running_loop().run_in_executor(
                None, sender.sendall, payload + after)
            taken, error = await stream.receive_into_file(fd, len(payload), hasher)
            await writer
            rest = bytes(await stream.receive())
        finally:
            os.close(fd)
            sender.close()
            stream.close()
        return taken, error, rest

    taken, error, rest = asyncio.run(go())
    assert (taken, error) == (len(payload), None)
    assert (tmp_path / "body").read_bytes() == payload
    assert rest == after  # not a byte past the body was taken off the socket
    assert hasher.digest() == digests.digest_of(payload, Feature.DIGEST_BLAKE3)


def test_a_copy_reports_a_file_that_cannot_take_the_bytes(tmp_path: Path) -> None:
    (tmp_path / "ro").write_bytes(b"")

    async def go() -> tuple[int, OSError | None]:
        sender, receiver = tcp_pair()
        stream = SocketStream(receiver, idle_timeout_s=10)
        fd = os.open(tmp_path / "ro", os.O_RDONLY)
        try:
            sender.sendall(b"x" * 1000)
            return await stream.receive_into_file(fd, 1000, None)
        finally:
            os.close(fd)
            sender.close()
            stream.close()

    taken, error = asyncio.run(go())
    assert taken > 0 and isinstance(error, OSError)


def test_a_copy_gives_up_on_a_silent_peer(tmp_path: Path) -> None:
    async def go() -> None:
        async with _stream_and_file(tmp_path / "f", os.O_RDWR | os.O_CREAT,
                                    timeout=0.3) as (stream, fd):
            await stream.receive_into_file(fd, 1000, None)

    with pytest.raises(TransferTimeout, match="made no progress"):
        asyncio.run(go())


def test_the_end_of_the_stream_ends_a_copy_early(tmp_path: Path) -> None:
    async def go() -> tuple[int, OSError | None]:
        sender, receiver = tcp_pair()
        stream = SocketStream(receiver, idle_timeout_s=10)
        fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            sender.sendall(b"y" * 500)
            sender.close()
            return await stream.receive_into_file(fd, 1000, None)
        finally:
            os.close(fd)
            stream.close()

    assert asyncio.run(go()) == (500, None)


def test_receive_views_one_buffer_shared_by_all_streams() -> None:
    async def go() -> tuple[bytes, bytes, bool]:
        (a_out, a_in), (b_out, b_in) = tcp_pair(), tcp_pair()
        a, b = SocketStream(a_in), SocketStream(b_in)
        try:
            a_out.sendall(b"from a")
            b_out.sendall(b"from b")
            first = await a.receive()
            got_a = bytes(first)  # consumed before the next receive, as drivers do
            second = await b.receive()
            shared = first.obj is second.obj
            return got_a, bytes(second), shared
        finally:
            for sock in (a_out, b_out):
                sock.close()
            a.close()
            b.close()

    got_a, got_b, shared = asyncio.run(go())
    assert (got_a, got_b) == (b"from a", b"from b")
    assert shared  # an idle connection holds no buffer of its own


def test_a_cancelled_copy_stops_its_thread_before_the_socket_closes(tmp_path: Path) -> None:
    """A server stopping mid-upload: the worker thread must let go of the socket's
    descriptor at once, or it would wait out the idle timeout and, once the number is
    reused, read another connection's bytes."""

    async def go() -> tuple[bool, int]:
        sender, receiver = tcp_pair()
        stream = SocketStream(receiver, idle_timeout_s=60)
        fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o600)
        task = asyncio.create_task(stream.receive_into_file(fd, 1 << 20, None))
        await asyncio.sleep(0.2)  # the thread is waiting for data now
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        stream.close()
        work = await _copying_ended(stream)
        os.close(fd)
        sender.close()
        return work.done(), receiver.fileno()

    stopped, fileno = asyncio.run(go())
    assert stopped, "the copying thread is still holding the socket"
    assert fileno == -1, "the socket was not closed after the thread let go of it"


@pytest.mark.parametrize("offset", [0, 5, 70_000])
def test_send_file_sends_the_range_and_hashes_it(tmp_path: Path, offset: int) -> None:
    content = os.urandom(600 * 1024 + 3)  # several pieces, the last one short
    (tmp_path / "f").write_bytes(content)
    count = len(content) - offset - 1
    hasher = digests.new_hasher(Feature.DIGEST_BLAKE3)

    async def go() -> bytes:
        sender, receiver = tcp_pair()
        stream = SocketStream(sender, idle_timeout_s=10)
        fd = os.open(tmp_path / "f", os.O_RDONLY)
        reading = asyncio.get_running_loop().run_in_executor(None, _read_all, receiver)
        try:
            await stream.send_file(fd, offset, count, hasher)
        finally:
            os.close(fd)
            stream.close()
        return await reading

    got = asyncio.run(go())
    assert got == content[offset : offset + count]
    assert hasher.digest() == digests.digest_of(got, Feature.DIGEST_BLAKE3)


def test_send_file_of_a_file_that_shrank_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"short")

    async def go() -> None:
        async with _stream_and_file(tmp_path / "f", os.O_RDONLY, sending=True) as (stream, fd):
            await stream.send_file(fd, 0, 1 << 20, digests.new_hasher(Feature.DIGEST_BLAKE3))

    with pytest.raises(StorageError, match="shrank"):
        asyncio.run(go())


async def _copying_ended(stream: SocketStream) -> asyncio.Future[object]:
    """The stream's last body copy, once its thread has ended (waited for 2 s at most:
    the caller asserts that it did)."""
    work = stream._copying
    assert work is not None
    for _ in range(200):
        if work.done():
            break
        await asyncio.sleep(0.01)
    return cast("asyncio.Future[object]", work)


def _read_all(sock: socket.socket) -> bytes:
    parts = []
    with sock:
        while chunk := sock.recv(1 << 20):
            parts.append(chunk)
    return b"".join(parts)


def test_a_cancelled_copy_never_writes_into_a_reused_descriptor(tmp_path: Path) -> None:
    """A server aborts a cancelled upload's file at once, and the next file opened may
    get its descriptor's number: the copying thread, still between two chunks of a body
    that keeps arriving, must not write into that one."""

    async def go() -> bytes:
        sender, receiver = tcp_pair()
        stream = SocketStream(receiver, idle_timeout_s=10)
        flowing = True

        def keep_sending() -> None:
            chunk = b"x" * (1 << 20)
            with contextlib.suppress(OSError):
                while flowing:
                    sender.sendall(chunk)

        feeding = asyncio.get_running_loop().run_in_executor(None, keep_sending)
        fd = os.open(tmp_path / "cancelled", os.O_RDWR | os.O_CREAT, 0o600)
        task = asyncio.create_task(stream.receive_into_file(fd, 1 << 40, None))
        await asyncio.sleep(0.2)  # bytes are flowing into the file now
        assert os.fstat(fd).st_size > 0
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        os.close(fd)  # the abort, at once
        other = os.open(tmp_path / "other", os.O_RDWR | os.O_CREAT, 0o600)
        work = await _copying_ended(stream)
        assert work.done(), "the copying thread did not stop"
        flowing = False
        stream.close()
        sender.close()
        await feeding
        content = os.pread(other, 1 << 20, 0)
        os.close(other)
        return content

    assert asyncio.run(go()) == b""
