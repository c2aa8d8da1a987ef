"""The library API (sockferry.api, exported by ``sockferry``) against real servers on
loopback, and the runnable examples in examples/."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

import sockferry
from sockferry.ferry.messages import ErrorCode
from tests.conftest import require_program

REPO = Path(__file__).resolve().parent.parent
TOKEN = secrets.token_urlsafe(32)  # as `sockferry token new` makes them


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


@pytest.mark.parametrize("example", sorted(p.name for p in (REPO / "examples").glob("*.py")))
def test_every_example_runs(example: str) -> None:
    done = subprocess.run([sys.executable, str(REPO / "examples" / example)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip(), "an example says what it did"
    assert "Traceback" not in done.stderr


def test_put_get_list_stat_mkdir(tmp_path: Path) -> None:
    served, local = tmp_path / "served", tmp_path / "local"
    served.mkdir()
    local.mkdir()
    (local / "a.bin").write_bytes(os.urandom(100_000))
    (local / "small.txt").write_bytes(b"hello\n")

    async def go() -> None:
        server = await sockferry.serve(served, "127.0.0.1", 0, token=TOKEN)
        async with server, sockferry.connect("127.0.0.1", server.port,
                                             token=TOKEN) as client:
            await client.mkdir("d/e")
            sent = await client.put(local / "a.bin", "d/e/a.bin", keep_mtime=True)
            assert sent == sockferry.Transfer(str(local / "a.bin"), "d/e/a.bin", 100_000)
            await client.put(str(local / "small.txt"), "small.txt")
            names = sorted(e.path for e in await client.list("", recursive=True))
            assert names == ["d", "d/e", "d/e/a.bin", "small.txt"]
            entry = await client.stat("d/e/a.bin")
            assert entry.kind is sockferry.Kind.FILE and entry.size == 100_000
            assert entry.mtime_ns // 10**9 == (local / "a.bin").stat().st_mtime_ns // 10**9
            moved: list[int] = []
            back = await client.get("d/e/a.bin", local / "back.bin", progress=moved.append)
            assert back.size == 100_000 and sum(moved) == 100_000
        assert not server.is_serving()

    run(go())
    assert (local / "back.bin").read_bytes() == (local / "a.bin").read_bytes()
    assert (served / "small.txt").read_bytes() == b"hello\n"


def test_concurrent_requests_on_one_client(tmp_path: Path) -> None:
    """Many coroutines share one client: large bodies are not interleaved (before the
    client serialized its senders, this broke the framing and the server hung up)."""
    served = tmp_path / "served"
    served.mkdir()
    sources = []
    for i in range(12):
        path = tmp_path / f"f{i}"
        path.write_bytes(os.urandom(1_500_000 + i))  # past the socket buffers: sends wait
        sources.append(path)

    async def go() -> list[sockferry.Transfer]:
        server = await sockferry.serve(served, "127.0.0.1", 0, token=TOKEN)
        async with server, sockferry.connect("127.0.0.1", server.port,
                                             token=TOKEN) as client:
            uploads = [client.put(p, p.name) for p in sources]
            looks = [client.list("") for _ in range(3)]
            results = await asyncio.gather(*uploads, *looks)
        return [r for r in results if isinstance(r, sockferry.Transfer)]

    done = run(go())
    assert isinstance(done, list) and len(done) == 12
    for path in sources:
        assert (served / path.name).read_bytes() == path.read_bytes()


def test_errors_are_the_exported_tree(tmp_path: Path) -> None:
    async def go() -> None:
        server = await sockferry.serve(tmp_path, "127.0.0.1", 0, token=TOKEN)
        async with server:
            with pytest.raises(sockferry.AuthenticationFailed):
                await sockferry.connect("127.0.0.1", server.port,
                                        token=secrets.token_urlsafe(32))
            client = await sockferry.connect("127.0.0.1", server.port, token=TOKEN)
            with pytest.raises(sockferry.PeerRefused) as refused:
                await client.get("missing.txt", tmp_path / "x")
            assert refused.value.code == ErrorCode.NOT_FOUND
            assert not (tmp_path / "x").exists()
            with pytest.raises(sockferry.StorageError):
                await client.put(tmp_path / "no-such-file", "y")
            await client.close()
            await client.close()  # a second close is harmless

    run(go())
    with pytest.raises(sockferry.UsageError, match="shorter than"):
        sockferry.connect("127.0.0.1", token="short")
    assert issubclass(sockferry.AuthenticationFailed, sockferry.SockferryError)


def test_server_lifecycle(tmp_path: Path) -> None:
    async def go() -> None:
        server = await sockferry.serve(tmp_path, "127.0.0.1", 0, token=TOKEN)
        assert server.is_serving() and server.addresses
        forever = asyncio.get_running_loop().create_task(server.serve_forever())
        await asyncio.sleep(0)
        async with sockferry.connect("127.0.0.1", server.port, token=TOKEN) as client:
            assert await client.list("") == []
        forever.cancel()
        with pytest.raises(asyncio.CancelledError):
            await forever
        assert not server.is_serving()
        await server.wait_closed()
        with pytest.raises(sockferry.NetworkError):
            await sockferry.connect("127.0.0.1", server.port, token=TOKEN, timeout=2)

    run(go())


def test_tls_with_a_pinned_fingerprint(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    served = tmp_path / "served"
    served.mkdir()
    (tmp_path / "x.txt").write_bytes(b"over TLS\n")

    async def go() -> None:
        server = await sockferry.serve(served, "127.0.0.1", 0, token_file=token_file,
                                       tls=True)
        assert server.fingerprint and server.fingerprint.startswith("SHA256:")
        async with server:
            async with sockferry.connect("127.0.0.1", server.port, token_file=token_file,
                                         fingerprint=server.fingerprint) as client:
                await client.put(tmp_path / "x.txt", "x.txt")
            with pytest.raises(sockferry.IdentityRefused):
                await sockferry.connect("127.0.0.1", server.port, token_file=token_file,
                                        fingerprint="SHA256:" + "A" * 43)

    run(go())
    assert (served / "x.txt").read_bytes() == b"over TLS\n"


def test_tls_options_that_contradict_are_usage_errors(tmp_path: Path) -> None:
    """The library and the command line share one trust module: a certificate without
    its key, or two ways of trusting a server at once, is a UsageError naming both."""
    async def go() -> None:
        with pytest.raises(sockferry.UsageError, match="certificate and its key"):
            await sockferry.serve(tmp_path, "127.0.0.1", 0, token=TOKEN,
                                  cert=str(tmp_path / "c.pem"))
        with pytest.raises(sockferry.UsageError, match="CA and a fingerprint"):
            await sockferry.connect("127.0.0.1", 9, token=TOKEN, ca=str(tmp_path / "ca"),
                                    fingerprint="SHA256:" + "A" * 43)

    run(go())


def test_import_sockferry_stays_light() -> None:
    """``import sockferry`` loads none of the library until a name is used, and every
    name in __all__ resolves."""
    code = ("import sys, json, sockferry; light = sorted(m for m in sys.modules "
            "if m.startswith('sockferry') or m == 'asyncio'); "
            "[getattr(sockferry, n) for n in sockferry.__all__]; "
            "print(json.dumps(light))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=60)
    assert json.loads(done.stdout) == ["sockferry", "sockferry.lazy"]
    assert sorted(sockferry.__all__) == sorted(["__version__", *sockferry._EXPORTS,
                                                *sockferry._SUBPACKAGES])


def test_tftp_get_put_and_serve_against_curl(tmp_path: Path) -> None:
    """sockferry.tftp: the library's server serves curl (a real TFTP client) and the
    library's client; uploads as the policy allows."""
    curl = require_program("curl")
    served, local = tmp_path / "served", tmp_path / "local"
    served.mkdir()
    local.mkdir()
    (served / "boot.img").write_bytes(os.urandom(200_000))
    (local / "up.bin").write_bytes(os.urandom(50_000))

    async def go() -> None:
        server = await sockferry.tftp.serve(served, "127.0.0.1", 0, allow_upload="create")
        async with server:
            url = f"tftp://127.0.0.1:{server.port}/boot.img"
            fetched = await asyncio.create_subprocess_exec(
                curl, "-sS", "--tftp-blksize", "1468", "-o", str(local / "curl.img"), url)
            assert await fetched.wait() == 0
            moved: list[int] = []
            got = await sockferry.tftp.get("127.0.0.1", "boot.img", local / "lib.img",
                                           port=server.port, windowsize=4,
                                           progress=moved.append)
            assert got.size == 200_000 and sum(moved) == 200_000
            sent = await sockferry.tftp.put(local / "up.bin", "127.0.0.1", "up.bin",
                                            port=server.port)
            assert sent.size == 50_000
            with pytest.raises(sockferry.PeerRefused):  # create: never overwrites
                await sockferry.tftp.put(local / "up.bin", "127.0.0.1", "up.bin",
                                         port=server.port)

    run(go())
    original = (served / "boot.img").read_bytes()
    assert (local / "curl.img").read_bytes() == original
    assert (local / "lib.img").read_bytes() == original
    assert (served / "up.bin").read_bytes() == (local / "up.bin").read_bytes()


def test_sctp_serve_echoes_what_send_sends() -> None:
    """sockferry.sctp: send() opens an association, sends, shuts it down gracefully and
    returns the replies; serve(echo=True) hands each message over and echoes it."""
    async def go() -> tuple[list[bytes], list[bytes]]:
        seen: list[bytes] = []
        server = await sockferry.sctp.serve("127.0.0.1", 0, transport="udp", echo=True,
                                            on_message=lambda m: seen.append(m.data))
        async with server:
            replies = await sockferry.sctp.send("127.0.0.1", [b"one", b"two"],
                                                port=server.port, stream=1,
                                                transport="udp", linger=0.5, timeout=10)
        assert not server.is_serving()
        return seen, [r.data for r in replies]

    assert run(go()) == ([b"one", b"two"], [b"one", b"two"])


def test_the_library_loads_no_cli_dependency() -> None:
    """rich and uvloop serve the command line only (docs/reference/api.md says why they
    stay dependencies); cryptography, prometheus_client and blake3 load when used."""
    code = ("import sys, sockferry; sockferry.connect, sockferry.serve, sockferry.tftp.get, "
            "sockferry.sctp.send; print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('rich', 'uvloop', 'cryptography', 'prometheus_client', 'blake3')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=60)
    assert done.stdout.strip() == "[]"
