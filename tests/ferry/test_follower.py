"""The hashing thread that reads back a file as it is written (digests.Follower)."""

from __future__ import annotations

import os
import tempfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sockferry.ferry import digests
from sockferry.ferry.messages import Feature

# Runs of data (positive) and holes (negative), around the mapping chunk's size.
runs = st.lists(st.one_of(st.integers(1, 3 * 1024 * 1024), st.integers(-300_000, -1)),
                max_size=6)


@settings(max_examples=25, deadline=None)
@given(runs, st.sampled_from([Feature.DIGEST_BLAKE3, Feature.DIGEST_SHA256]),
       st.integers(0, 100_000))
def test_follower_hashes_what_was_written(layout: list[int], feature: Feature,
                                          kept: int) -> None:
    expected = digests.new_hasher(feature)
    with tempfile.TemporaryFile(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as f:
        fd = f.fileno()
        prefix = os.urandom(kept)
        os.write(fd, prefix)
        expected.update(prefix)
        follower = digests.Follower(fd, feature, start=kept)
        for amount in layout:
            if amount > 0:
                data = os.urandom(amount)
                os.write(fd, data)
                expected.update(data)
                follower.data(amount)
            else:
                os.lseek(fd, -amount, os.SEEK_CUR)
                os.ftruncate(fd, os.lseek(fd, 0, os.SEEK_CUR))
                digests.update_zeros(expected, -amount)
                follower.hole(-amount)
        assert follower.result() == expected.digest()


def test_follower_continues_a_hasher_given_the_prefix() -> None:
    with tempfile.TemporaryFile() as f:
        fd = f.fileno()
        os.write(fd, b"kept part|")
        prefix = digests.new_hasher(Feature.DIGEST_BLAKE3)
        prefix.update(b"kept part|")
        follower = digests.Follower(fd, Feature.DIGEST_BLAKE3, start=10, hasher=prefix)
        os.write(fd, b"tail")
        follower.data(4)
        assert follower.result() == digests.digest_of(b"kept part|tail",
                                                      Feature.DIGEST_BLAKE3)


def test_follower_reports_a_file_that_shrank() -> None:
    with tempfile.TemporaryFile() as f:
        fd = f.fileno()
        os.write(fd, b"abc")
        follower = digests.Follower(fd, Feature.DIGEST_SHA256)
        follower.data(10)  # more than is there
        with pytest.raises(OSError, match="shrank"):
            follower.result()


def test_a_cancelled_follower_gives_no_digest_and_closes_its_fd() -> None:
    before = len(os.listdir("/proc/self/fd"))
    with tempfile.TemporaryFile() as f:
        follower = digests.Follower(f.fileno(), Feature.DIGEST_SHA256)
        follower.cancel()
        with pytest.raises(OSError, match="cancelled"):
            follower.result()
    assert len(os.listdir("/proc/self/fd")) == before
