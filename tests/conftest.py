"""Shared test helpers: real peers, subprocess CLI runs, temporary roots."""

from __future__ import annotations

import os
import shutil

import pytest


def require_program(name: str) -> str:
    """The path of a real peer program; missing means skip, or fail in CI.

    CI sets SOCKFERRY_REQUIRE_PEERS=1 so that a peer missing there fails the run
    instead of silently skipping the interoperability tests.
    """
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}")
                                  else None)
    if path is None:
        if os.environ.get("SOCKFERRY_REQUIRE_PEERS") == "1":
            pytest.fail(f"{name} is required (SOCKFERRY_REQUIRE_PEERS=1) but not installed")
        pytest.skip(f"{name} is not installed")
    return path
