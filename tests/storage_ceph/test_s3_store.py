"""The S3 store (storage/s3.py) against a real Ceph RADOS Gateway: what the Store
contract does not say (tests/test_store_conformance.py runs that on both backends) —
parts going up while a body arrives, nothing left behind, keys held under the prefix,
paginated listings, stale uploads swept — and `sockferry serve --store` end to end."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sockferry.addresses import HostPort
from sockferry.api import connect, run_ferry_server
from sockferry.entries import Kind
from sockferry.errors import PathRefused, StorageError, UsageError
from sockferry.ferry import messages as m
from sockferry.ferry.server import FerryServer
from sockferry.ferry.server_config import FerryServerConfig
from sockferry.storage.atomic import PartialFile
from sockferry.storage.s3 import PART_BYTES, S3Location, S3Store
from tests.ceph import CephS3, Keys, parts_uploaded, uploads
from tests.cli.server_process import running
from tests.ferry.harness import TOKEN


@pytest.fixture
def store(ceph_s3: CephS3, bucket: str, tmp_path: Path) -> Iterator[S3Store]:
    s3 = S3Store(S3Location.parse(f"s3://{bucket}/data?endpoint={ceph_s3.endpoint_url}"),
                 spool=str(tmp_path), client=ceph_s3.client())
    yield s3
    s3.close()
    assert os.listdir(tmp_path) == [], "spool files left behind"


def test_parts_go_up_while_the_body_arrives_and_nothing_shows_before_the_commit(
        store: S3Store, ceph_s3: CephS3, bucket: str) -> None:
    client = ceph_s3.client()
    data = os.urandom(2 * PART_BYTES + 1000)
    file = store.create("big")
    file.write(data[:PART_BYTES + 10])
    # the upload begun and the first part on its way (worker threads) before the body
    # is complete
    file.parts[0].result(timeout=30)
    [upload] = uploads(ceph_s3, bucket)
    assert upload["Key"] == "data/big"
    listed = client.list_parts(Bucket=bucket, Key="data/big", UploadId=upload["UploadId"])
    assert [part["PartNumber"] for part in listed["Parts"]] == [1]
    assert not store.exists("big")
    file.write(data[PART_BYTES + 10:])
    file.commit(0o640, 1_500_000_000_000_000_001)
    assert uploads(ceph_s3, bucket) == []
    head = client.head_object(Bucket=bucket, Key="data/big")
    assert head["ContentLength"] == len(data)
    assert head["Metadata"] == {"mode": "640", "mtime-ns": "1500000000000000001"}
    assert client.get_object(Bucket=bucket, Key="data/big")["Body"].read() == data


def test_an_abort_mid_body_aborts_the_upload(store: S3Store, ceph_s3: CephS3,
                                             bucket: str) -> None:
    file = store.create("broken")
    file.write(os.urandom(PART_BYTES * 2))
    file.parts[0].result(timeout=30)  # the upload begun in a worker thread
    assert len(uploads(ceph_s3, bucket)) == 1
    file.abort()
    assert uploads(ceph_s3, bucket) == []
    assert not store.exists("broken")


def test_a_commit_that_fails_leaves_no_upload(store: S3Store, ceph_s3: CephS3,
                                              bucket: str) -> None:
    ceph_s3.client().put_object(Bucket=bucket, Key="data/taken", Body=b"first")
    file = store.create("taken")
    file.write(os.urandom(PART_BYTES + 1))
    with pytest.raises(StorageError) as raised:
        file.commit(0o644, clobber=False)
    assert raised.value.errno == errno.EEXIST
    assert uploads(ceph_s3, bucket) == []
    fd, _ = store.open_read("taken")
    try:
        assert os.pread(fd, 100, 0) == b"first"
    finally:
        os.close(fd)


def test_keys_stay_under_the_prefix(store: S3Store, ceph_s3: CephS3, bucket: str) -> None:
    client = ceph_s3.client()
    client.put_object(Bucket=bucket, Key="beside", Body=b"not the store's")
    client.put_object(Bucket=bucket, Key="database/x", Body=b"a longer prefix")
    file = store.create("inside")
    file.write(b"ok")
    file.commit(0o644)
    assert [e.path for e in store.list("")] == ["inside"]
    for path in ("../beside", "a/../../beside", "../database/x"):
        with pytest.raises(PathRefused):
            store.stat(path)
    assert store.usage() == 2
    keys = sorted(obj["Key"] for obj in client.list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == ["beside", "data/inside", "database/x"]


def test_listings_span_pages(store: S3Store, ceph_s3: CephS3, bucket: str) -> None:
    client = ceph_s3.client()
    store.page_size = 3  # 8 entries: three LIST requests each way
    store.make_dirs("d/sub", 0o750)
    for name in ("a", "b", "c", "e", "f"):
        client.put_object(Bucket=bucket, Key=f"data/d/{name}", Body=name.encode())
    client.put_object(Bucket=bucket, Key="data/d/implicit/g", Body=b"g")  # no marker
    assert [(e.path, e.kind) for e in store.list("d")] == [
        ("a", Kind.FILE), ("b", Kind.FILE), ("c", Kind.FILE), ("e", Kind.FILE),
        ("f", Kind.FILE), ("implicit", Kind.DIRECTORY), ("sub", Kind.DIRECTORY)]
    assert [e.path for e in store.list("d", recursive=True)] == [
        "a", "b", "c", "e", "f", "implicit", "implicit/g", "sub"]
    assert store.stat("d/sub").mode == 0o750  # kept in the marker's metadata
    assert store.stat("d/implicit").kind is Kind.DIRECTORY
    with pytest.raises(StorageError) as raised:
        list(store.list("d", recursive=True, limit=4))
    assert raised.value.errno == errno.E2BIG


def test_uploads_into_a_directory_list_it_once(store: S3Store, ceph_s3: CephS3,
                                              bucket: str) -> None:
    """A connection's uploads into one directory ask S3 once which of its names are
    directories (one LIST), not once per file (a HEAD each); a name that is a directory,
    marked or only keys below it, is refused either way."""
    client = ceph_s3.client()
    store.make_dirs("d/marked", 0o755)
    client.put_object(Bucket=bucket, Key="data/d/implicit/x", Body=b"x")  # no marker
    calls: list[str] = []
    real = store.client
    store.client = _Counting(real, calls)
    cache = store.new_cache()
    for i in range(20):
        file = store.create(f"d/f{i}", cache)
        file.abort()
    assert calls.count("list_objects_v2") == 1
    assert calls.count("head_object") <= 1  # the directory itself, once
    for name in ("marked", "implicit"):
        with pytest.raises(StorageError, match="is a directory"):
            store.create(f"d/{name}", cache)
    assert calls.count("list_objects_v2") == 1
    # More than a page of entries: no listing is kept, each name is asked for itself
    store.page_size = 2
    calls.clear()
    other = store.new_cache()
    for i in range(3):
        store.create(f"d/g{i}", other).abort()
    assert calls.count("head_object") >= 3
    with pytest.raises(StorageError, match="is a directory"):
        store.create("d/marked", other)
    store.client = real


def test_commits_of_uploads_never_run_on_the_event_loop(ceph_s3: CephS3, bucket: str,
                                                       tmp_path: Path) -> None:
    """Every PUT, part and completion of a server's uploads is made in a worker thread:
    a request on the connection's event loop would stall every client of it."""
    store, real, threads = _watched_store(ceph_s3, bucket, tmp_path, "loop")
    big = os.urandom(PART_BYTES + 1000)
    sources = tmp_path / "sources"
    sources.mkdir()
    for i in range(8):
        (sources / f"s{i}").write_bytes(b"small %d" % i)
    (sources / "big").write_bytes(big)

    async def upload(port: int) -> None:
        async with connect("127.0.0.1", port, token=TOKEN) as client:
            for i in range(8):
                await client.put(sources / f"s{i}", f"s{i}")
            await client.put(sources / "big", "big")

    writes = ("put_object", "upload_part", "complete_multipart_upload")
    on_loop = _requests_on_the_loop(store, threads, upload)
    requests = [(name, ident) for name, ident in threads if name in writes]
    assert len(requests) >= 8 + 2, requests  # eight PUTs, a part and a completion at least
    assert [name for name in on_loop if name in writes] == [], requests
    assert real.get_object(Bucket=bucket, Key="loop/big")["Body"].read() == big
    store.close()


def _requests_on_the_loop(store: S3Store, threads: list[tuple[str, int]],
                          work: Callable[[int], Awaitable[None]]) -> list[str]:
    """Serve ``store`` on a loopback port, run ``work(port)`` against it, and return the
    S3 requests (of those ``threads`` recorded) made on the server's event loop thread."""

    async def serve() -> int:
        server = FerryServer(store, FerryServerConfig(token=TOKEN))
        # a bucket lists a directory in one request, but looks up a name in one each
        assert not server.features & m.Feature.QUICK_CHECK
        running = await run_ferry_server(server, [HostPort("127.0.0.1", 0)])
        try:
            await work(running.port)
        finally:
            running.close()
            await running.wait_closed()
        return threading.get_ident()

    loop_thread = asyncio.run(serve())
    return [name for name, ident in threads if ident == loop_thread]


def _watched_store(ceph_s3: CephS3, bucket: str, tmp_path: Path,
                   prefix: str) -> tuple[S3Store, Any, list[tuple[str, int]]]:
    """A store on ``bucket/prefix`` whose every request is noted with the thread making
    it: (the store, the boto3 client beneath, the (request, thread id) list)."""
    os.mkdir(tmp_path / "spool")
    store = S3Store(S3Location.parse(f"s3://{bucket}/{prefix}?endpoint={ceph_s3.endpoint_url}"),
                    spool=str(tmp_path / "spool"), client=ceph_s3.client())
    threads: list[tuple[str, int]] = []
    real = store.client
    store.client = _Counting(real, [], threads)
    return store, real, threads


class _Counting:
    """A boto3 client that notes the name of each request made through it."""

    def __init__(self, client: object, calls: list[str],
                 threads: list[tuple[str, int]] | None = None) -> None:
        self._client, self._calls, self._threads = client, calls, threads

    def __getattr__(self, name: str) -> object:
        method = getattr(self._client, name)
        if not callable(method):
            return method

        def counted(*args: object, **kwargs: object) -> object:
            self._calls.append(name)
            if self._threads is not None:
                self._threads.append((name, threading.get_ident()))
            return method(*args, **kwargs)
        return counted


def test_stale_uploads_are_swept(store: S3Store, ceph_s3: CephS3, bucket: str) -> None:
    client = ceph_s3.client()
    stale = client.create_multipart_upload(Bucket=bucket, Key="data/crashed")
    client.create_multipart_upload(Bucket=bucket, Key="elsewhere")  # not the store's
    assert store.sweep_temporaries(keep_s=3600, max_partial_bytes=1 << 30) == []
    assert len(uploads(ceph_s3, bucket)) == 2
    removed = store.sweep_temporaries(keep_s=3600, max_partial_bytes=1 << 30,
                                      now=time.time() + 7200)
    assert removed == [("crashed", 0)]
    [left] = uploads(ceph_s3, bucket)
    assert left["Key"] == "elsewhere" and left["UploadId"] != stale["UploadId"]
    client.abort_multipart_upload(Bucket=bucket, Key="elsewhere",
                                  UploadId=left["UploadId"])


def test_a_missing_bucket_is_one_sentence(ceph_s3: CephS3, tmp_path: Path) -> None:
    location = S3Location.parse(f"s3://no-such-bucket?endpoint={ceph_s3.endpoint_url}")
    with pytest.raises(StorageError) as raised:
        S3Store(location, spool=str(tmp_path), client=ceph_s3.client())
    assert str(raised.value) == (f"the bucket 'no-such-bucket' does not exist at "
                                 f"{ceph_s3.endpoint_url}; create it first")


@pytest.mark.parametrize(("url", "message"), [
    ("s3:///prefix", "is not an S3 location"),
    ("http://bucket/x", "is not an S3 location"),
    ("s3://b/p?endpoint=ftp://x", "must start with http:// or https://"),
    ("s3://b/p?colour=blue", "unknown option 'colour'"),
])
def test_malformed_locations_are_refused(url: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        S3Location.parse(url)


def test_a_location_names_bucket_prefix_and_options() -> None:
    location = S3Location.parse("s3://bkt/a/b/?endpoint=http://127.0.0.1:9&region=eu&profile=p")
    assert (location.bucket, location.prefix, location.endpoint, location.region,
            location.profile) == ("bkt", "a/b/", "http://127.0.0.1:9", "eu", "p")
    assert S3Location.parse("s3://bkt").prefix == ""


# -- sockferry serve --store, end to end ------------------------------------------------


def sockferry(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sockferry", *argv], capture_output=True,
                          text=True, timeout=120, env=env, check=False)


@pytest.mark.parametrize("fsync", ["none", "batch", "each"])
def test_serve_store_send_get_ls(ceph_s3: CephS3, bucket: str, tmp_path: Path,
                                 fsync: str, keys: Keys) -> None:
    env, token = keys.env, keys.token
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    for index in range(20):
        (tree / "sub" / f"small{index}").write_bytes(os.urandom(100 + index))
    big = tree / "big.bin"
    big.write_bytes(os.urandom(PART_BYTES * 2 + 777))
    url = f"s3://{bucket}/srv?endpoint={ceph_s3.endpoint_url}"
    with running("serve", "--store", url, "--listen", "127.0.0.1:0", "--token-file",
                 str(token), "--fsync", fsync) as server:
        port = server.wait_for(r"serving s3://.*listening on 127\.0\.0\.1:(\d+)").group(1)
        common = ["-P", port, "--token-file", str(token)]
        sent = sockferry("send", "-q", *common, "-r", str(tree), "127.0.0.1:copy/", env=env)
        assert sent.returncode == 0, sent.stderr
        listed = sockferry("ls", *common, "127.0.0.1:copy/tree/", env=env)
        assert listed.returncode == 0, listed.stderr
        assert "big.bin" in listed.stdout and "sub/" in listed.stdout
        back = tmp_path / "back"
        got = sockferry("get", "-q", *common, "-r", "127.0.0.1:copy/tree", str(back),
                        env=env)
        assert got.returncode == 0, got.stderr
        assert (back / "big.bin").read_bytes() == big.read_bytes()
        for index in range(20):
            assert (back / "sub" / f"small{index}").read_bytes() == (
                tree / "sub" / f"small{index}").read_bytes()
    keys = {obj["Key"] for page in ceph_s3.client().get_paginator("list_objects_v2")
            .paginate(Bucket=bucket) for obj in page.get("Contents", [])}
    assert {"srv/copy/tree/big.bin", "srv/copy/tree/sub/small0"} <= keys
    head = ceph_s3.client().head_object(Bucket=bucket, Key="srv/copy/tree/big.bin")
    assert head["Metadata"]["mode"] == f"{big.stat().st_mode & 0o777:o}"
    assert uploads(ceph_s3, bucket) == []


def test_serve_with_a_missing_bucket_fails_in_one_sentence(ceph_s3: CephS3,
                                                           tmp_path: Path) -> None:
    env = {**os.environ, "AWS_ACCESS_KEY_ID": ceph_s3.access_key_id,
           "AWS_SECRET_ACCESS_KEY": ceph_s3.secret_access_key}
    token = tmp_path / "token"
    token.write_text(os.urandom(32).hex() + "\n")
    token.chmod(0o600)
    done = sockferry("serve", "--store", f"s3://absent?endpoint={ceph_s3.endpoint_url}",
                     "--listen", "127.0.0.1:0", "--token-file", str(token),
                     env=env)
    assert done.returncode == 6, done.stderr
    assert "the bucket 'absent' does not exist" in done.stderr
    assert "Traceback" not in done.stderr
    both = sockferry("serve", str(tmp_path), "--store", "s3://x", env=env)
    assert both.returncode == 2 and "give ROOT or --store, not both" in both.stderr


def test_a_send_cut_off_by_a_killed_server_resumes_on_another(
        ceph_s3: CephS3, bucket: str, tmp_path: Path, keys: Keys) -> None:
    """Two servers on one bucket: the first is SIGKILLed mid-upload; the whole parts it
    had sent up are what the second one resumes from, proven by digest."""
    env, token = keys.env, keys.token
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(PART_BYTES * 5 + 4321))
    url = f"s3://{bucket}/srv?endpoint={ceph_s3.endpoint_url}"
    serve = ("serve", "--store", url, "--listen", "127.0.0.1:0", "--token-file", str(token))
    with running(*serve) as first:
        port = first.wait_for(r"listening on 127\.0\.0\.1:(\d+)").group(1)
        cut = subprocess.Popen([sys.executable, "-m", "sockferry", "send", "-q", "-P", port,
                                "--token-file", str(token), "--resume", "--limit-rate",
                                "8M", str(big), "127.0.0.1:big.bin"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while parts_uploaded(ceph_s3, bucket, "srv/") < 2:
                assert cut.poll() is None, "the send ended before the server was killed"
                assert time.monotonic() < deadline, "two parts never went up"
                time.sleep(0.1)
            first.process.kill()  # SIGKILL: no abort, no cleanup
            first.process.wait(timeout=20)
            _out, err = cut.communicate(timeout=60)
        finally:
            cut.kill()
        assert cut.returncode != 0, "the send survived its server being killed"
        assert "Traceback" not in err
    with running(*serve) as second:
        port = second.wait_for(r"listening on 127\.0\.0\.1:(\d+)").group(1)
        again = sockferry("send", "-v", "-P", port, "--token-file", str(token), "--resume",
                          str(big), "127.0.0.1:big.bin", env=env)
        assert again.returncode == 0, again.stderr
        resumed = re.search(r"resumed at .* \((\d+) bytes\)", again.stdout + again.stderr)
        assert resumed is not None, again.stderr
        assert int(resumed.group(1)) >= 2 * PART_BYTES  # at least the whole parts kept
        assert int(resumed.group(1)) % PART_BYTES == 0
        back = tmp_path / "back.bin"
        got = sockferry("get", "-q", "-P", port, "--token-file", str(token),
                        "127.0.0.1:big.bin", str(back), env=env)
        assert got.returncode == 0, got.stderr
    assert back.read_bytes() == big.read_bytes()
    assert uploads(ceph_s3, bucket) == []
    keys = [obj["Key"] for obj in ceph_s3.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["srv/big.bin"], "the partial object outlived the commit"


def test_partial_objects_are_swept_by_age_and_by_room(store: S3Store) -> None:
    for name, size in (("old", 3000), ("mid", 2000), ("new", 1000)):
        partial = store.create(name, kind=PartialFile)
        partial.write(b"x" * size)
        partial.abort()  # kept as the partial object
        time.sleep(1.1)  # S3 keeps a second's precision
    held = store.create("new", kind=PartialFile)  # a transfer holds it: never swept
    try:
        assert store.sweep_temporaries(keep_s=3600, max_partial_bytes=10_000) == []
        removed = store.sweep_temporaries(keep_s=3600, max_partial_bytes=2500)
        assert [size for _, size in removed] == [3000]  # the oldest, until under 2,500
        assert removed[0][0].startswith(".sockferry-resume-")
        removed = store.sweep_temporaries(keep_s=3600, max_partial_bytes=1 << 30,
                                          now=time.time() + 7200)
        assert [size for _, size in removed] == [2000]  # too old; "new" is held
    finally:
        held.abort()
    found = store.open_partial("new")  # what "new" kept is still there
    assert found is not None
    os.close(found[0])
    assert store.open_partial("old") is None and store.open_partial("mid") is None


def test_a_connections_store_lookups_never_run_on_the_event_loop(
        ceph_s3: CephS3, bucket: str, tmp_path: Path) -> None:
    """MKDIR, STAT, the directory lookups of PUT_INLINE runs and PUTs, and a resumed
    PUT's look for its partial object are made in worker threads while that connection's
    reader waits (connection.py WAITING_HANDLERS): on the loop, one slow answer from the
    gateway would stall every client of the server."""
    from sockferry.ferry.client import FerryClient  # noqa: PLC0415
    from sockferry.ferry.copy_send import send_paths  # noqa: PLC0415

    store, real, threads = _watched_store(ceph_s3, bucket, tmp_path, "meta")
    tree = tmp_path / "tree"
    for sub in ("a", "b/c"):
        (tree / sub).mkdir(parents=True)
        for i in range(5):
            (tree / sub / f"f{i}").write_bytes(b"small %d" % i)
    (tmp_path / "mid").write_bytes(os.urandom(300_000))

    async def session(port: int) -> None:
        async with connect("127.0.0.1", port, token=TOKEN) as client:
            await client.mkdir("x/y")
            assert (await client.stat("x/y")).kind is Kind.DIRECTORY
        outcomes = []
        for sources, dest, resume in (([str(tree)], "t", False),
                                      ([str(tmp_path / "mid")], "x/y/mid", True)):
            ferry = await FerryClient.connect(HostPort("127.0.0.1", port), TOKEN)
            try:
                outcomes += await send_paths(ferry, sources, dest, recursive=True,
                                             keep_mtime=False, resume=resume)
            finally:
                ferry.close()
        assert [o.error for o in outcomes if o.error] == []

    on_loop = _requests_on_the_loop(store, threads, session)
    assert len(threads) > 20, threads
    assert on_loop == [], on_loop
    assert real.get_object(Bucket=bucket, Key="meta/t/b/c/f4")["Body"].read() == b"small 4"
    store.close()


def test_writes_past_a_part_make_no_request_in_the_writers_thread(
        ceph_s3: CephS3, bucket: str, tmp_path: Path) -> None:
    """The writer runs on a server's event loop: beginning the multipart upload and every
    part go to worker threads, and the writer never waits for parts in flight."""
    store, real, threads = _watched_store(ceph_s3, bucket, tmp_path, "w")
    body = os.urandom(3 * PART_BYTES + 77)
    file = store.create("big")  # a server does this in a worker thread too (WAITING_HANDLERS)
    threads.clear()
    for offset in range(0, len(body), 1 << 20):
        file.write(body[offset:offset + (1 << 20)])
    written_by = [name for name, ident in threads if ident == threading.get_ident()]
    file.commit(0o644)
    assert written_by == [], written_by
    names = [name for name, _ in threads]
    assert names.count("create_multipart_upload") == 1 and names.count("upload_part") == 4
    assert real.get_object(Bucket=bucket, Key="w/big")["Body"].read() == body
    store.close()


def test_an_upload_broken_off_is_kept_off_the_event_loop(ceph_s3: CephS3, bucket: str,
                                                        tmp_path: Path) -> None:
    """A client gone mid-upload: the server completes what arrived as the partial object
    (waiting for the parts in flight) in a worker thread, not on its event loop."""
    from sockferry.ferry.client import FerryClient  # noqa: PLC0415

    store, real, threads = _watched_store(ceph_s3, bucket, tmp_path, "cut")
    (tmp_path / "big").write_bytes(os.urandom(6 * PART_BYTES))

    async def cut_off(port: int) -> None:
        ferry = await FerryClient.connect(HostPort("127.0.0.1", port), TOKEN)
        ferry.limit_rate(16 << 20)
        sending = asyncio.ensure_future(ferry.puts.start_put_resumable(
            str(tmp_path / "big"), "big", keep_mtime=False, progress=None))
        deadline = time.monotonic() + 30
        while not any(name == "upload_part" for name, _ in threads):
            assert time.monotonic() < deadline, "no part ever went up"
            await asyncio.sleep(0.02)
        assert not sending.done(), "the body was sent before the cut"
        threads.clear()
        sending.cancel()
        ferry.close()  # gone mid-body
        with contextlib.suppress(BaseException):
            await sending
        while not any(name == "complete_multipart_upload" for name, _ in threads):
            assert time.monotonic() < deadline, "what arrived was never kept"
            await asyncio.sleep(0.02)

    on_loop = _requests_on_the_loop(store, threads, cut_off)
    assert on_loop == [], on_loop
    kept = [o["Key"] for o in real.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert any(".sockferry-resume-" in key for key in kept), kept
    store.close()
