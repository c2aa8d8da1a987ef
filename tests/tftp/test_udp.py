"""Our client and our server over real UDP sockets: loopback, IPv6, and a lossy proxy."""

from __future__ import annotations

import asyncio
import os
import random
import socket
from pathlib import Path

import pytest

from sockferry.addresses import HostPort
from sockferry.tftp.client import ClientOptions, download, upload
from sockferry.tftp.packets import (
    ErrorCode,
    TransferRequest,
    decode_packet,
    encode_data,
    encode_error,
)
from sockferry.tftp.server import TftpServerConfig, UploadPolicy
from sockferry.tftp.transfer import Timing
from tests.lossy import Impairment, LossyUdpRelay
from tests.tftp.udp_helpers import running_server

SIZES = [0, 511, 512, 513, 100_000]


def content(size: int, seed: int = 1) -> bytes:
    rng = random.Random(seed)
    return bytes(rng.choice(b"line\r\n\0") for _ in range(size))


def config(root: Path, **kwargs: object) -> TftpServerConfig:
    return TftpServerConfig(str(root), allow_upload=UploadPolicy.CREATE, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["octet", "netascii"])
@pytest.mark.parametrize(("blksize", "windowsize"), [(512, 1), (1468, 1), (1468, 16)])
def test_get_and_put_over_loopback(tmp_path: Path, mode: str, blksize: int,
                                   windowsize: int) -> None:
    root = tmp_path / "root"
    root.mkdir()
    options = ClientOptions(blksize=blksize, windowsize=windowsize, mode=mode)

    async def go() -> None:
        async with running_server(config(root)) as (_, port):
            server = HostPort("127.0.0.1", port)
            for size in SIZES:
                data = content(size, size)
                (root / f"f{size}").write_bytes(data)
                local = tmp_path / f"got{size}"
                result = await download(server, f"f{size}", str(local), options)
                assert local.read_bytes() == data
                assert result.size == size and result.error is None
                assert result.options.blksize == blksize
                up = tmp_path / f"up{size}"
                up.write_bytes(data)
                await upload(str(up), server, f"put{size}", options)
                assert (root / f"put{size}").read_bytes() == data

    asyncio.run(go())
    assert not [p for p in os.listdir(root) if p.startswith(".sockferry-")]


def test_ipv6_and_dual_stack(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"six" * 1000)

    async def go() -> None:
        async with running_server(config(tmp_path), host="::1") as (_, port):
            await download(HostPort("::1", port), "a", str(tmp_path / "b"), ClientOptions())
        async with running_server(config(tmp_path), host="") as (_, port):
            for host in ("127.0.0.1", "::1"):
                await download(HostPort(host, port), "a", str(tmp_path / "c"),
                               ClientOptions(windowsize=8))
                assert (tmp_path / "c").read_bytes() == b"six" * 1000

    asyncio.run(go())


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("windowsize", [1, 16])
def test_through_a_lossy_proxy(tmp_path: Path, seed: int, windowsize: int) -> None:
    # Past the 256 KiB a lock-step lane reads or writes at a time, so losses also land
    # while it tops up or stores.
    data = content(400_000, seed)
    (tmp_path / "src").write_bytes(data)
    (tmp_path / "up").write_bytes(data[::-1])
    options = ClientOptions(blksize=1468, windowsize=windowsize, retries=20)
    timing = Timing(timeout_s=1.0, retries=20)

    async def go() -> None:
        async with running_server(config(tmp_path, timing=timing)) as (_, port):
            with LossyUdpRelay(("127.0.0.1", port),
                               Impairment(random.Random(seed), loss=0.05, duplicate=0.03,
                                          reorder=0.05, delay_s=0.0005)) as proxy:
                via = HostPort("127.0.0.1", proxy.port)
                result = await download(via, "src", str(tmp_path / "dst"), options)
                assert (tmp_path / "dst").read_bytes() == data
                await upload(str(tmp_path / "up"), via, "upped", options)
                assert (tmp_path / "upped").read_bytes() == data[::-1]
            assert proxy.dropped > 0, "the proxy should have lost something"
            assert result.error is None

    asyncio.run(go())


def test_many_transfers_at_once(tmp_path: Path) -> None:
    files = {f"f{i}": content(30_000 + i, i) for i in range(12)}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)

    async def go() -> None:
        async with running_server(config(tmp_path)) as (server, port):
            target = HostPort("127.0.0.1", port)
            await asyncio.gather(*(
                download(target, name, str(tmp_path / f"{name}.got"),
                         ClientOptions(windowsize=1 + i % 4))
                for i, name in enumerate(files)))
            assert server.active_transfers <= len(files)

    asyncio.run(go())
    for name, data in files.items():
        assert (tmp_path / f"{name}.got").read_bytes() == data


def test_client_retries_without_options_after_error_8(tmp_path: Path) -> None:
    """A server that refuses the options outright (ERROR 8) gets a plain request."""
    seen: list[TransferRequest] = []

    async def go() -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)

        async def fake_server() -> None:
            for _ in range(2):
                data, peer = await loop.sock_recvfrom(sock, 600)
                request = decode_packet(data)
                assert isinstance(request, TransferRequest)
                seen.append(request)
                answer = (encode_error(ErrorCode.OPTION_REFUSED, "no options here")
                          if request.options else encode_data(1, b"plain"))
                sock.sendto(answer, peer)

        with sock:
            server_task = asyncio.create_task(fake_server())
            result = await download(HostPort("127.0.0.1", sock.getsockname()[1]), "f",
                                    str(tmp_path / "f"), ClientOptions(blksize=1024))
            await server_task
        assert result.options.blksize == 512

    asyncio.run(go())
    assert [bool(r.options) for r in seen] == [True, False]
    assert (tmp_path / "f").read_bytes() == b"plain"
