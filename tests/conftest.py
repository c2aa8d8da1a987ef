"""Shared test helpers: real peers, subprocess CLI runs, temporary roots."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

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


def wait_until(condition: Callable[[], object], timeout_s: float, what: str,
               interval_s: float = 0.01) -> None:
    """Poll ``condition`` until it holds; a precondition that never came fails the test
    (saying ``what`` was awaited) instead of letting it pass without testing anything."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"waited {timeout_s:g} s for {what}; it never happened")
        time.sleep(interval_s)


@contextlib.contextmanager
def mounted_tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A small tmpfs at ``path`` (a real disk-full or read-only file system); mounting
    needs root: skip without it, or fail in CI."""
    path.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        if os.environ.get("SOCKFERRY_REQUIRE_PEERS") == "1":
            pytest.fail(f"cannot mount a tmpfs: {result.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


# Subprocesses (the CLI under test, servers) must import this checkout's sources, not
# whatever sockferry happens to be installed: several worktrees may share one machine.
SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (SRC, os.environ.get("PYTHONPATH", "")) if p)


# Tests marked kernel_sctp need a kernel with SCTP.  They run where SOCKFERRY_KERNEL_SCTP=1
# (the guest that scripts/vm-test boots); elsewhere they are deselected — neither passed
# nor skipped — so a host without SCTP never counts them.
KERNEL_SCTP = os.environ.get("SOCKFERRY_KERNEL_SCTP") == "1"


def pytest_configure(config: pytest.Config) -> None:
    # A shell starts a job in the background with SIGINT ignored, and exec passes
    # "ignored" on to every child: the tests that stop a child with SIGINT (exit code
    # 130) need the suite to hand its children the default, however it was started.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_report_header(config: pytest.Config) -> str:
    if KERNEL_SCTP:
        return "kernel_sctp tests: selected (SOCKFERRY_KERNEL_SCTP=1)"
    return "kernel_sctp tests: deselected here; ./scripts/vm-test runs them in a VM"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if KERNEL_SCTP:
        return
    deselected = [item for item in items if item.get_closest_marker("kernel_sctp")]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not item.get_closest_marker("kernel_sctp")]


UDP_PORT_SYSCTL = "/proc/sys/net/sctp/udp_port"


@pytest.fixture(scope="session")
def kernel_encap_port() -> Iterator[int]:
    """Switch the kernel's SCTP over UDP (RFC 6951) on, on a UDP port free right now.

    Only where the kernel has SCTP (the VM): the sysctl is machine-wide.  Kernel SCTP
    sockets take the port when they are created, so they must come after this fixture.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("0.0.0.0", 0))
        port = int(probe.getsockname()[1])
    with open(UDP_PORT_SYSCTL) as sysctl:
        before = sysctl.read().strip()
    with open(UDP_PORT_SYSCTL, "w") as sysctl:
        sysctl.write(str(port))
    yield port
    with open(UDP_PORT_SYSCTL, "w") as sysctl:
        sysctl.write(before)
