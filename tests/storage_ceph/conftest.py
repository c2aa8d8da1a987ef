"""Fixtures of the tests against a real Ceph cluster (tests/ceph.py)."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest

from tests.ceph import CephS3, ceph_s3, uploads

__all__ = ["bucket", "ceph_s3"]

_buckets = itertools.count()


@pytest.fixture
def bucket(ceph_s3: CephS3) -> Iterator[str]:
    """A fresh bucket; no multipart upload may be left open in it at the end."""
    name = f"test-{os.getpid()}-{next(_buckets)}"
    ceph_s3.client().create_bucket(Bucket=name)
    yield name
    left = uploads(ceph_s3, name)
    assert left == [], f"multipart uploads left behind: {left}"
