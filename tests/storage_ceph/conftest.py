"""Fixtures of the tests against a real Ceph cluster (tests/ceph.py)."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ceph import CephS3, Keys, ceph_s3, uploads

__all__ = ["bucket", "ceph_s3", "keys"]

_buckets = itertools.count()


@pytest.fixture
def bucket(ceph_s3: CephS3) -> Iterator[str]:
    """A fresh bucket; no multipart upload may be left open in it at the end."""
    name = f"test-{os.getpid()}-{next(_buckets)}"
    ceph_s3.client().create_bucket(Bucket=name)
    yield name
    left = uploads(ceph_s3, name)
    assert left == [], f"multipart uploads left behind: {left}"


@pytest.fixture
def keys(ceph_s3: CephS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Keys:
    """The cluster's S3 keys in this process's environment (servers started from here
    inherit them), a HOME of the test's own, and a token file."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ceph_s3.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", ceph_s3.secret_access_key)
    token = tmp_path / "token"
    token.write_text(os.urandom(32).hex() + "\n")
    token.chmod(0o600)
    return Keys({**os.environ, "HOME": str(tmp_path)}, token)
