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


# Subprocesses (the CLI under test, servers) must import this checkout's sources, not
# whatever sockferry happens to be installed: several worktrees may share one machine.
SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (SRC, os.environ.get("PYTHONPATH", "")) if p)
