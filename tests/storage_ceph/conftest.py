"""Fixtures of the tests against a real Ceph cluster (tests/ceph.py)."""

from __future__ import annotations

from tests.ceph import ceph_s3

__all__ = ["ceph_s3"]
