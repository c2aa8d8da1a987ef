"""Which ``Store`` a server gets from what it was told: ``s3://BUCKET/PREFIX?...`` is
a bucket (storage/s3.py, which loads boto3), anything else a local directory."""

from __future__ import annotations

from sockferry.storage.root import Root
from sockferry.storage.store import Store

S3_SCHEME = "s3://"


def is_store_url(spec: str) -> bool:
    return spec.startswith(S3_SCHEME)


def open_store(spec: str) -> Store:
    """The store ``spec`` names; StorageError (or UsageError for a malformed URL) when
    it cannot be opened."""
    if is_store_url(spec):
        from sockferry.storage.s3 import S3Location, S3Store  # noqa: PLC0415 - boto3

        return S3Store(S3Location.parse(spec))
    return Root(spec)
