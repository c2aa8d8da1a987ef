"""Interoperability over loopback with independent implementations: curl's and
tftp-hpa's clients against our server, and our client against tftpd-hpa."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sockferry.addresses import HostPort
from sockferry.errors import PeerRefused
from sockferry.tftp.client import ClientOptions, download, upload
from sockferry.tftp.server import TftpServerConfig, UploadPolicy
from tests.conftest import require_program
from tests.tftp.udp_helpers import server_thread

TEXT = b"first line\nsecond\r\nbare\rcarriage\n" * 300 + b"ends with CR\r"
# One past the block-number rollover at curl's and tftp-hpa's default block size.
ROLLOVER_SIZE = 65536 * 512 + 100


def make_files(root: Path) -> dict[str, bytes]:
    files = {"empty": b"", "one_block": os.urandom(512), "odd": os.urandom(513),
             "megabyte": os.urandom(1_000_000), "text.txt": TEXT}
    for name, data in files.items():
        (root / name).write_bytes(data)
    return files


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, int, dict[str, bytes]]]:
    root = tmp_path / "root"
    root.mkdir()
    files = make_files(root)
    with server_thread(TftpServerConfig(str(root), allow_upload=UploadPolicy.CREATE)) as (_, port):
        yield root, port, files


def run(argv: list[str], timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s,
                          check=False)


# ---------------------------------------------------------------------------------------
# curl against our server


@pytest.mark.parametrize("blksize", [None, 1468, 8])
def test_curl_get(served: tuple[Path, int, dict[str, bytes]], tmp_path: Path,
                  blksize: int | None) -> None:
    curl = require_program("curl")
    _, port, files = served
    extra = [] if blksize is None else ["--tftp-blksize", str(blksize)]
    for name, data in files.items():
        if blksize == 8 and len(data) > 10_000:
            continue  # 125,000 round trips prove nothing more
        out = tmp_path / f"{name}.curl"
        result = run([curl, "-sS", *extra, "-o", str(out), f"tftp://127.0.0.1:{port}/{name}"])
        assert result.returncode == 0, result.stderr
        assert out.read_bytes() == data, name


@pytest.mark.parametrize("blksize", [None, 1468])
def test_curl_put(served: tuple[Path, int, dict[str, bytes]], tmp_path: Path,
                  blksize: int | None) -> None:
    curl = require_program("curl")
    root, port, files = served
    extra = [] if blksize is None else ["--tftp-blksize", str(blksize)]
    for name, data in files.items():
        local = tmp_path / name
        local.write_bytes(data)
        result = run([curl, "-sS", *extra, "-T", str(local),
                      f"tftp://127.0.0.1:{port}/up-{name}"])
        assert result.returncode == 0, result.stderr
        assert (root / f"up-{name}").read_bytes() == data, name


def test_curl_past_the_block_rollover(served: tuple[Path, int, dict[str, bytes]],
                                      tmp_path: Path) -> None:
    curl = require_program("curl")
    root, port, _ = served
    data = os.urandom(ROLLOVER_SIZE)
    (root / "huge").write_bytes(data)
    out = tmp_path / "huge.curl"
    result = run([curl, "-sS", "-o", str(out), f"tftp://127.0.0.1:{port}/huge"])
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == data


def test_curl_sees_our_errors(served: tuple[Path, int, dict[str, bytes]]) -> None:
    curl = require_program("curl")
    _, port, _ = served
    # curl turns TFTP error codes into its exit codes: 68 is "file not found", 69 is
    # "permission problem" (its message text is unrelated in 7.88).
    result = run([curl, "-sS", "-o", os.devnull, f"tftp://127.0.0.1:{port}/no-such-file"])
    assert result.returncode == 68
    result = run([curl, "-sS", "-o", os.devnull, f"tftp://127.0.0.1:{port}/../secret"])
    assert result.returncode in (68, 69)


# ---------------------------------------------------------------------------------------
# tftp-hpa's client (plain RFC 1350: no options) against our server


def hpa_client(port: int, mode: str, command: str) -> subprocess.CompletedProcess[str]:
    tftp = require_program("tftp")
    return run([tftp, "127.0.0.1", str(port), "-m", mode, "-c", *command.split()])


def test_tftp_hpa_get_and_put_binary(served: tuple[Path, int, dict[str, bytes]],
                                     tmp_path: Path) -> None:
    root, port, files = served
    for name, data in files.items():
        out = tmp_path / f"{name}.hpa"
        result = hpa_client(port, "binary", f"get {name} {out}")
        assert out.read_bytes() == data, (name, result.stdout, result.stderr)
        result = hpa_client(port, "binary", f"put {out} back-{name}")
        assert (root / f"back-{name}").read_bytes() == data, (name, result.stderr)


def test_tftp_hpa_netascii_both_ways(served: tuple[Path, int, dict[str, bytes]],
                                     tmp_path: Path) -> None:
    root, port, _ = served
    out = tmp_path / "text.hpa"
    hpa_client(port, "ascii", f"get text.txt {out}")
    assert out.read_bytes() == TEXT  # converted to netascii by us, back by tftp-hpa
    hpa_client(port, "ascii", f"put {out} text-back.txt")
    assert (root / "text-back.txt").read_bytes() == TEXT


def test_tftp_hpa_past_the_block_rollover(served: tuple[Path, int, dict[str, bytes]],
                                          tmp_path: Path) -> None:
    root, port, _ = served
    data = os.urandom(ROLLOVER_SIZE)
    (root / "huge").write_bytes(data)
    out = tmp_path / "huge.hpa"
    hpa_client(port, "binary", f"get huge {out}")
    assert out.read_bytes() == data


def test_tftp_hpa_sees_our_errors(served: tuple[Path, int, dict[str, bytes]],
                                  tmp_path: Path) -> None:
    _, port, _ = served
    result = hpa_client(port, "binary", f"get ../etc/passwd {tmp_path / 'x'}")
    assert "Error code" in result.stdout + result.stderr
    result = hpa_client(port, "binary", f"get dir-that-is-not-there/x {tmp_path / 'y'}")
    assert "Error code 1" in result.stdout + result.stderr


# ---------------------------------------------------------------------------------------
# our client against tftpd-hpa


@pytest.fixture
def tftpd_hpa(tmp_path: Path) -> Iterator[tuple[Path, int, dict[str, bytes]]]:
    """in.tftpd on a port the kernel picked: it inherits a bound socket as standard
    input (its inetd mode), so there is no window in which another process could take
    the port.  -c allows creating files, -u root keeps it as the user we run as."""
    in_tftpd = require_program("in.tftpd")
    root = tmp_path / "hpa-root"
    root.mkdir()
    files = make_files(root)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    user = ["-u", "root"] if os.geteuid() == 0 else []
    process = subprocess.Popen([in_tftpd, "-s", str(root), "-c", *user, "-t", "60"],
                               stdin=sock.fileno())
    sock.close()
    try:
        yield root, port, files
    finally:
        process.terminate()
        process.wait(10)


@pytest.mark.parametrize(("blksize", "windowsize"), [(512, 1), (1468, 1), (1468, 16)])
def test_our_client_against_tftpd_hpa(tftpd_hpa: tuple[Path, int, dict[str, bytes]],
                                      tmp_path: Path, blksize: int, windowsize: int) -> None:
    root, port, files = tftpd_hpa
    server = HostPort("127.0.0.1", port)
    options = ClientOptions(blksize=blksize, windowsize=windowsize)

    async def go() -> None:
        for name, data in files.items():
            local = tmp_path / f"{name}.ours"
            result = await download(server, name, str(local), options)
            assert local.read_bytes() == data, name
            # tftpd-hpa knows no windowsize: it leaves it out of its OACK, and we fall back
            assert result.options.blksize == blksize and result.options.windowsize == 1
            await upload(str(local), server, f"ours-{name}", options)
            assert (root / f"ours-{name}").read_bytes() == data, name

    asyncio.run(go())


def test_our_client_netascii_against_tftpd_hpa(
        tftpd_hpa: tuple[Path, int, dict[str, bytes]], tmp_path: Path) -> None:
    root, port, _ = tftpd_hpa
    server = HostPort("127.0.0.1", port)
    options = ClientOptions(mode="netascii")

    async def go() -> None:
        await download(server, "text.txt", str(tmp_path / "t"), options)
        await upload(str(tmp_path / "t"), server, "text-up.txt", options)

    asyncio.run(go())
    assert (tmp_path / "t").read_bytes() == TEXT
    assert (root / "text-up.txt").read_bytes() == TEXT


def test_our_client_past_the_rollover_against_tftpd_hpa(
        tftpd_hpa: tuple[Path, int, dict[str, bytes]], tmp_path: Path) -> None:
    root, port, _ = tftpd_hpa
    data = os.urandom(ROLLOVER_SIZE)
    (root / "huge").write_bytes(data)
    asyncio.run(download(HostPort("127.0.0.1", port), "huge", str(tmp_path / "huge"),
                         ClientOptions(blksize=512)))
    assert (tmp_path / "huge").read_bytes() == data


def test_our_client_reports_tftpd_hpa_errors(
        tftpd_hpa: tuple[Path, int, dict[str, bytes]], tmp_path: Path) -> None:
    _, port, _ = tftpd_hpa
    local = tmp_path / "never"
    with pytest.raises(PeerRefused, match="refused 'no-such-file'") as info:
        asyncio.run(download(HostPort("127.0.0.1", port), "no-such-file", str(local),
                             ClientOptions()))
    assert info.value.code == 1
    assert not local.exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".sockferry-")]
