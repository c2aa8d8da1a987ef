"""A real Ceph cluster with an S3 endpoint (RADOS Gateway) on loopback, for tests that
need S3: ``scripts/ceph-up`` boots it once per test session, ``scripts/ceph-down``
stops it and removes its directory.

Ceph missing (the Debian packages ceph-mon, ceph-osd, radosgw) skips, or fails where
SOCKFERRY_REQUIRE_PEERS=1, as ``require_program`` does; Ceph installed but not booting
always fails.  The tests never install packages (CEPH_UP_NO_INSTALL=1): CI installs
them from .ci/apt-packages.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from tests.conftest import require_program

REPO = Path(__file__).resolve().parent.parent
CEPH_UP = REPO / "scripts" / "ceph-up"
CEPH_DOWN = REPO / "scripts" / "ceph-down"
CEPH_PROGRAMS = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "ceph", "monmaptool",
                 "ceph-authtool")
# ceph-up bounds each of its waits for a daemon by CEPH_UP_TIMEOUT; this bounds the whole
# boot (it takes a few seconds here), under pytest-timeout's 300 s for the first test.
DAEMON_TIMEOUT_S = 60
BOOT_TIMEOUT_S = 240
DOWN_TIMEOUT_S = 60


@dataclass(frozen=True)
class CephS3:
    """Where the cluster's S3 endpoint is and the keys of its one user."""

    endpoint_url: str
    access_key_id: str
    secret_access_key: str
    directory: Path  # ceph-up's: ceph.conf, s3.env, pids, log/

    def client(self) -> Any:
        """A boto3 S3 client for this endpoint (path-style: the bucket is in the path,
        not in a host name that would need DNS)."""
        return boto3.client(
            "s3", endpoint_url=self.endpoint_url, aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key, region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, connect_timeout=10,
                          read_timeout=60, retries={"max_attempts": 2}))

    def pids(self) -> dict[str, int]:
        """The daemons ceph-up started, by name (mon.a, osd.0, rgw.a)."""
        lines = (self.directory / "pids").read_text().splitlines()
        return {name: int(pid) for name, pid in (line.split() for line in lines)}


def read_env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {key: value for key, value in pairs}


def ceph_up(directory: Path) -> CephS3:
    """Boot a cluster in ``directory`` (empty) with scripts/ceph-up; fail with its
    message, which names what did not come up and ends with that daemon's log."""
    env = {**os.environ, "CEPH_UP_NO_INSTALL": "1", "CEPH_UP_TIMEOUT": str(DAEMON_TIMEOUT_S)}
    with subprocess.Popen([str(CEPH_UP), str(directory)], env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as boot:
        try:
            out, err = boot.communicate(timeout=BOOT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            # TERM, not KILL: ceph-up then stops the daemons it had started.
            boot.send_signal(signal.SIGTERM)
            out, err = boot.communicate(timeout=DOWN_TIMEOUT_S)
            pytest.fail(f"scripts/ceph-up took over {BOOT_TIMEOUT_S} s; stopped it:\n{err}",
                        pytrace=False)
    if boot.returncode != 0:
        pytest.fail(f"scripts/ceph-up {directory} failed (exit {boot.returncode}):\n{err}",
                    pytrace=False)
    env_file = read_env_file(directory / "s3.env")
    assert env_file["S3_ENDPOINT_URL"] in out, out  # it says where the endpoint is
    return CephS3(endpoint_url=env_file["S3_ENDPOINT_URL"],
                  access_key_id=env_file["AWS_ACCESS_KEY_ID"],
                  secret_access_key=env_file["AWS_SECRET_ACCESS_KEY"],
                  directory=directory)


def ceph_down(directory: Path) -> None:
    done = subprocess.run([str(CEPH_DOWN), str(directory)], capture_output=True, text=True,
                          timeout=DOWN_TIMEOUT_S, check=False)
    assert done.returncode == 0, f"scripts/ceph-down {directory} failed:\n{done.stderr}"
    assert not directory.exists(), f"scripts/ceph-down left {directory}"


@pytest.fixture(scope="session")
def ceph_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CephS3]:
    """One Ceph cluster for the whole session: its S3 endpoint and keys."""
    for program in CEPH_PROGRAMS:
        require_program(program)
    cluster = ceph_up(tmp_path_factory.mktemp("ceph"))
    try:
        yield cluster
    finally:
        ceph_down(cluster.directory)


def uploads(cluster: CephS3, bucket: str) -> list[dict[str, Any]]:
    """The multipart uploads open in ``bucket``."""
    found: list[dict[str, Any]] = cluster.client().list_multipart_uploads(
        Bucket=bucket).get("Uploads", [])
    return found


def parts_uploaded(cluster: CephS3, bucket: str, prefix: str) -> int:
    """Parts of the multipart uploads open under ``prefix``."""
    client = cluster.client()
    return sum(len(client.list_parts(Bucket=bucket, Key=upload["Key"],
                                     UploadId=upload["UploadId"]).get("Parts", []))
               for upload in client.list_multipart_uploads(Bucket=bucket, Prefix=prefix)
               .get("Uploads", []))


@dataclass(frozen=True)
class Keys:
    """What `sockferry serve --store` and its clients are started with."""

    env: dict[str, str]  # the clients' environment
    token: Path
