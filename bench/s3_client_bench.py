#!/usr/bin/env python3
"""Which S3 client library for the S3 store: boto3 (the store's today) against obstore
(Rust, object_store), on a one-node Ceph cluster on loopback (scripts/ceph-up).

Per library, alternating, rounds: 500 PUTs of 4 KiB one after another (the latency
and the client CPU of one small upload) and with 8 threads (what the store's commits
do); one 256 MiB object in 8 MiB parts of a multipart upload, 4 parts in flight (what
an S3File does). Medians and min-max; CPU is the client process's user+system.

    .venv/bin/python bench/s3_client_bench.py [--rounds 5]   (needs pip install obstore)
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SMALL = 500
PART = 8 << 20
BIG = 256 << 20


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Boto3:
    name = "boto3"

    def __init__(self, endpoint: str, key: str, secret: str) -> None:
        import boto3  # noqa: PLC0415 - each library loaded only when measured
        from botocore.config import Config  # noqa: PLC0415

        self.s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                               aws_access_key_id=key, aws_secret_access_key=secret,
                               config=Config(s3={"addressing_style": "path"},
                                             max_pool_connections=16))

    def put(self, key: str, data: bytes) -> None:
        self.s3.put_object(Bucket="bench", Key=key, Body=data)

    def multipart(self, key: str, data: memoryview) -> None:
        upload = self.s3.create_multipart_upload(Bucket="bench", Key=key)["UploadId"]

        def part(number: int) -> dict[str, Any]:
            body = bytes(data[(number - 1) * PART:number * PART])
            done = self.s3.upload_part(Bucket="bench", Key=key, UploadId=upload,
                                       PartNumber=number, Body=body)
            return {"PartNumber": number, "ETag": done["ETag"]}
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            parts = list(pool.map(part, range(1, len(data) // PART + 1)))
        self.s3.complete_multipart_upload(Bucket="bench", Key=key, UploadId=upload,
                                          MultipartUpload={"Parts": parts})


class Obstore:
    name = "obstore"

    def __init__(self, endpoint: str, key: str, secret: str) -> None:
        import obstore  # noqa: PLC0415
        from obstore.store import S3Store  # noqa: PLC0415

        self.obstore = obstore
        self.store = S3Store("bench", endpoint=endpoint, access_key_id=key,
                             secret_access_key=secret, region="us-east-1",
                             virtual_hosted_style_request=False,
                             client_options={"allow_http": True})

    def put(self, key: str, data: bytes) -> None:
        self.obstore.put(self.store, key, data)

    def multipart(self, key: str, data: memoryview) -> None:
        self.obstore.put(self.store, key, bytes(data), chunk_size=PART, max_concurrency=4)


def measure(client: Any, data_small: bytes, data_big: memoryview) -> dict[str, float]:
    out: dict[str, float] = {}
    c0, t0 = cpu(), time.perf_counter()
    for index in range(SMALL):
        client.put(f"seq/{index}", data_small)
    out["sequential PUT ms"] = (time.perf_counter() - t0) / SMALL * 1e3
    out["CPU ms per PUT"] = (cpu() - c0) / SMALL * 1e3
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: client.put(f"par/{i}", data_small), range(SMALL)))
    out["PUTs/s, 8 threads"] = SMALL / (time.perf_counter() - t0)
    c0, t0 = cpu(), time.perf_counter()
    client.multipart("big", data_big)
    elapsed = time.perf_counter() - t0
    out["multipart MB/s"] = BIG / elapsed / 1e6
    out["CPU s per GiB"] = (cpu() - c0) * (1 << 30) / BIG
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        ceph = Path(scratch) / "ceph"
        subprocess.run([str(ROOT / "scripts" / "ceph-up"), str(ceph)], check=True,
                       capture_output=True, timeout=300,
                       env={**os.environ, "CEPH_UP_MEMSTORE_BYTES": str(4 << 30)})
        try:
            env = dict(line.split("=", 1) for line in (ceph / "s3.env").read_text()
                       .splitlines() if "=" in line)
            endpoint = env["S3_ENDPOINT_URL"]
            key, secret = env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
            makers: list[Callable[[], Any]] = [lambda: Boto3(endpoint, key, secret),
                                               lambda: Obstore(endpoint, key, secret)]
            clients = [make() for make in makers]
            clients[0].s3.create_bucket(Bucket="bench")
            small = os.urandom(4096)
            big = memoryview(os.urandom(BIG))
            results: dict[str, dict[str, list[float]]] = {}
            for round_number in range(args.rounds):
                for client in clients[round_number % 2:] + clients[:round_number % 2]:
                    for figure, value in measure(client, small, big).items():
                        results.setdefault(client.name, {}).setdefault(figure, []).append(
                            value)
                    print(f"round {round_number + 1}: {client.name} done", file=sys.stderr)
        finally:
            subprocess.run([str(ROOT / "scripts" / "ceph-down"), str(ceph)], timeout=120,
                           check=False)
    figures = list(next(iter(results.values())))
    print(f"S3 client libraries against Ceph 16.2 RADOS Gateway on loopback, "
          f"{args.rounds} alternated rounds, medians (min-max)\n")
    print("| figure | " + " | ".join(results) + " |")
    print("|---|" + "---|" * len(results))
    for figure in figures:
        cells = [f"{statistics.median(v[figure]):,.1f} ({min(v[figure]):,.1f}–"
                 f"{max(v[figure]):,.1f})" for v in results.values()]
        print(f"| {figure} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
