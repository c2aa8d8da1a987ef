"""`sockferry tftp-serve --store` against a real Ceph RADOS Gateway: tftp-hpa's client,
curl and sockferry's own tftp-get/tftp-put as real processes; a multipart upload that
shows nothing under its key before it completes and leaves no upload behind when it is
broken off; and every S3 request of the server made off its event loop."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sockferry.addresses import HostPort
from sockferry.errors import PeerRefused
from sockferry.storage.s3 import PART_BYTES, S3Location, S3Store
from sockferry.tftp.client import ClientOptions, download, upload
from sockferry.tftp.packets import (
    Ack,
    ErrorCode,
    Opcode,
    OptionAck,
    decode_packet,
    encode_data,
    encode_error,
    encode_request,
)
from sockferry.tftp.server import TftpServerConfig, UploadPolicy
from tests.ceph import CephS3, Keys, parts_uploaded, uploads
from tests.cli.server_process import Server, running
from tests.conftest import require_program
from tests.tftp.udp_helpers import running_server

PREFIX = "srv/"
BLOCKS = os.urandom(7 * 512 + 99)  # several blocks at every block size the clients ask
BIG = PART_BYTES + 3 * 65464 + 5  # past one part: a multipart upload
BIG_BLKSIZE = 65464
# Whole blocks only (a short one would end the upload), past one part once the server's
# 256 KiB writes have gone to the spool file.
BROKEN = (PART_BYTES // BIG_BLKSIZE + 3) * BIG_BLKSIZE


def run(argv: list[str], env: dict[str, str] | None = None,
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env,
                          check=False)


def sockferry(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "sockferry", *argv], env=env)


def listed(ceph_s3: CephS3, bucket: str, key: str) -> bool:
    """Whether a listing shows the object ``key``."""
    found = ceph_s3.client().list_objects_v2(Bucket=bucket, Prefix=key)
    return any(obj["Key"] == key for obj in found.get("Contents", []))


@pytest.fixture
def served(ceph_s3: CephS3, bucket: str, keys: Keys) -> Iterator[tuple[Server, str]]:
    """`tftp-serve --store` on ``bucket``'s prefix srv/, uploads of new keys allowed;
    the server and its address."""
    client = ceph_s3.client()
    client.put_object(Bucket=bucket, Key=PREFIX + "blocks.bin", Body=BLOCKS)
    client.put_object(Bucket=bucket, Key=PREFIX + "dir/inner", Body=b"inner\n")
    client.put_object(Bucket=bucket, Key="outside", Body=b"not served")
    url = f"s3://{bucket}/{PREFIX.rstrip('/')}?endpoint={ceph_s3.endpoint_url}"
    with running("tftp-serve", "--store", url, "--listen", "127.0.0.1:0",
                 "--allow-upload", "create") as server:
        port = server.wait_for(r"serving s3://.* over TFTP on 127\.0\.0\.1:(\d+)$").group(1)
        yield server, f"127.0.0.1:{port}"


def test_tftp_hpa_and_curl_download_from_the_bucket(served: tuple[Server, str],
                                                    tmp_path: Path) -> None:
    tftp, curl = require_program("tftp"), require_program("curl")
    _, address = served
    host, port = address.split(":")
    out = tmp_path / "hpa.bin"
    done = run([tftp, host, port, "-m", "binary", "-c", "get", "blocks.bin", str(out)])
    assert out.read_bytes() == BLOCKS, (done.stdout, done.stderr)
    out = tmp_path / "curl.bin"
    done = run([curl, "-sS", "--tftp-blksize", "1468", "-o", str(out),
                f"tftp://{address}/dir/inner"])
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == b"inner\n"


def test_sockferry_uploads_then_downloads_a_multipart_object(
        served: tuple[Server, str], ceph_s3: CephS3, bucket: str, keys: Keys,
        tmp_path: Path) -> None:
    server, address = served
    for name, data, options in (
            ("small.bin", BLOCKS, ["--blksize", "512"]),
            ("big.bin", os.urandom(BIG), ["--blksize", "1468", "--windowsize", "16"])):
        local = tmp_path / name
        local.write_bytes(data)
        sent = sockferry("tftp-put", *options, str(local), address, f"dir/{name}",
                         env=keys.env)
        assert sent.returncode == 0, sent.stderr
        got = tmp_path / f"{name}.back"
        back = sockferry("tftp-get", *options, address, f"dir/{name}", str(got),
                         env=keys.env)
        assert back.returncode == 0, back.stderr
        assert got.read_bytes() == data, name
        stored = ceph_s3.client().get_object(Bucket=bucket, Key=f"{PREFIX}dir/{name}")
        assert stored["Body"].read() == data
    assert uploads(ceph_s3, bucket) == []
    server.wait_for(r"write 'dir/big\.bin' octet .*, ok$")


def test_refusals_missing_existing_and_outside(served: tuple[Server, str],
                                               ceph_s3: CephS3, bucket: str, keys: Keys,
                                               tmp_path: Path) -> None:
    curl = require_program("curl")
    _, address = served
    nothing = tmp_path / "nothing"
    missing = sockferry("tftp-get", address, "absent.bin", str(nothing), env=keys.env)
    assert missing.returncode == 5
    assert "'absent.bin' does not exist (TFTP error 1, file not found)" in missing.stderr
    # curl's exit code for TFTP error 1
    assert run([curl, "-sS", "-o", str(nothing), f"tftp://{address}/absent.bin"]
               ).returncode == 68
    local = tmp_path / "new"
    local.write_bytes(b"would replace it")
    taken = sockferry("tftp-put", str(local), address, "blocks.bin", env=keys.env)
    assert taken.returncode == 5
    assert "this server only creates new files (TFTP error 6" in taken.stderr
    stored = ceph_s3.client().get_object(Bucket=bucket, Key=PREFIX + "blocks.bin")
    assert stored["Body"].read() == BLOCKS
    for climb in ("../outside", "dir/../../outside"):
        out = sockferry("tftp-get", address, climb, str(nothing), env=keys.env)
        assert out.returncode == 5 and "leads outside the server's root" in out.stderr, \
            out.stderr
        up = sockferry("tftp-put", str(local), address, f"../{climb}", env=keys.env)
        assert up.returncode == 5 and "leads outside the server's root" in up.stderr
    assert not nothing.exists()
    assert ceph_s3.client().get_object(Bucket=bucket, Key="outside")["Body"].read() == \
        b"not served"


class LockStepWriter:
    """A bare TFTP client writing a file block by block, so that a test can stop it
    between two blocks, go on, or break the upload off."""

    def __init__(self, port: int, name: bytes) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(10)
        self.sock.sendto(encode_request(Opcode.WRQ, name, "octet",
                                        {"blksize": str(BIG_BLKSIZE)}),
                         ("127.0.0.1", port))
        reply, self.tid = self.sock.recvfrom(1000)
        assert decode_packet(reply) == OptionAck({"blksize": str(BIG_BLKSIZE)})
        self.block = 0

    def send(self, data: bytes) -> None:
        """Send ``data`` as the next blocks, each once acknowledged."""
        for offset in range(0, len(data), BIG_BLKSIZE):
            self.block += 1
            self.sock.sendto(encode_data(self.block & 0xFFFF,
                                         data[offset:offset + BIG_BLKSIZE]), self.tid)
            while True:  # a late duplicate ACK of the previous block is skipped
                answer = decode_packet(self.sock.recvfrom(1000)[0])
                assert isinstance(answer, Ack), answer
                if answer.block == self.block & 0xFFFF:
                    break

    def break_off(self) -> None:
        self.sock.sendto(encode_error(ErrorCode.NOT_DEFINED, "changed my mind"), self.tid)

    def close(self) -> None:
        self.sock.close()


def _wait_for_a_part(ceph_s3: CephS3, bucket: str) -> None:
    deadline = time.monotonic() + 30
    while parts_uploaded(ceph_s3, bucket, PREFIX) < 1:
        assert time.monotonic() < deadline, "no part went up while the body arrived"
        time.sleep(0.05)


def test_nothing_shows_under_the_key_before_the_upload_completes(
        served: tuple[Server, str], ceph_s3: CephS3, bucket: str) -> None:
    _, address = served
    data = os.urandom(BIG)
    writer = LockStepWriter(int(address.rsplit(":", 1)[1]), b"arriving.bin")
    try:
        whole_blocks = len(data) // BIG_BLKSIZE * BIG_BLKSIZE
        writer.send(data[:whole_blocks])  # past one part, the last block still due
        _wait_for_a_part(ceph_s3, bucket)
        assert not listed(ceph_s3, bucket, PREFIX + "arriving.bin")
        writer.send(data[whole_blocks:])  # the short last block: the upload completes
    finally:
        writer.close()
    stored = ceph_s3.client().get_object(Bucket=bucket, Key=PREFIX + "arriving.bin")
    assert stored["Body"].read() == data
    assert uploads(ceph_s3, bucket) == []


def test_an_upload_broken_off_leaves_no_upload_and_no_key(
        served: tuple[Server, str], ceph_s3: CephS3, bucket: str) -> None:
    server, address = served
    _break_off_an_upload(int(address.rsplit(":", 1)[1]), ceph_s3, bucket)
    server.wait_for(r"write 'broken\.bin' .*failed")
    deadline = time.monotonic() + 30
    while uploads(ceph_s3, bucket):  # aborted in a worker thread, just after the log line
        assert time.monotonic() < deadline, "the multipart upload was never aborted"
        time.sleep(0.05)
    assert not listed(ceph_s3, bucket, PREFIX + "broken.bin")


class _Recording:
    """A boto3 client noting the name and thread of each request made through it."""

    def __init__(self, client: object) -> None:
        self._client = client
        self.calls: list[tuple[str, int]] = []
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> object:
        method = getattr(self._client, name)
        if not callable(method):
            return method

        def recorded(*args: object, **kwargs: object) -> object:
            with self._lock:
                self.calls.append((name, threading.get_ident()))
            return method(*args, **kwargs)
        return recorded


def test_the_server_makes_no_s3_request_on_its_event_loop(
        ceph_s3: CephS3, bucket: str, tmp_path: Path) -> None:
    """Admitting (HEAD, LIST, GET of a whole object), committing (PUT) and aborting a
    multipart upload: a request on the loop would stall every other transfer."""
    client = ceph_s3.client()
    client.put_object(Bucket=bucket, Key=PREFIX + "blocks.bin", Body=BLOCKS)
    spool = tmp_path / "spool"
    spool.mkdir()
    store = S3Store(S3Location.parse(f"s3://{bucket}/srv?endpoint={ceph_s3.endpoint_url}"),
                    spool=str(spool), client=client)
    recording = _Recording(client)
    store.client = recording
    local = tmp_path / "local"
    local.write_bytes(BLOCKS)

    async def go() -> int:
        config = TftpServerConfig(store, allow_upload=UploadPolicy.CREATE)
        async with running_server(config) as (_, port):
            server = HostPort("127.0.0.1", port)
            options = ClientOptions(windowsize=4)
            await download(server, "blocks.bin", str(tmp_path / "got"), options)
            await upload(str(local), server, "small.bin", options)
            with pytest.raises(PeerRefused, match="TFTP error 1"):
                await download(server, "absent.bin", str(tmp_path / "none"), options)
            with pytest.raises(PeerRefused, match="TFTP error 6"):
                await upload(str(local), server, "blocks.bin", options)

            await asyncio.to_thread(_break_off_an_upload, port, ceph_s3, bucket)
        return threading.get_ident()  # the server closed: its discards are done

    loop_thread = asyncio.run(go())
    assert (tmp_path / "got").read_bytes() == BLOCKS
    assert client.get_object(Bucket=bucket, Key=PREFIX + "small.bin")["Body"].read() == BLOCKS
    names = {name for name, _ in recording.calls}
    assert {"head_object", "get_object", "put_object", "create_multipart_upload",
            "abort_multipart_upload"} <= names, names
    on_loop = [name for name, ident in recording.calls if ident == loop_thread]
    assert on_loop == [], f"S3 requests made on the event loop: {on_loop}"
    assert os.listdir(spool) == [], "spool files left behind"


def _break_off_an_upload(port: int, ceph_s3: CephS3, bucket: str) -> None:
    """Upload ``broken.bin`` until a part is in the bucket, then go silent mid-transfer."""
    writer = LockStepWriter(port, b"broken.bin")
    try:
        writer.send(os.urandom(BROKEN))
        _wait_for_a_part(ceph_s3, bucket)
        writer.break_off()
    finally:
        writer.close()
