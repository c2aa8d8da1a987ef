"""Network namespaces made for one test or benchmark run, and always removed.

``two_paths`` builds a server namespace and a client namespace joined by two veth pairs
on two subnets (10.200.1.0/24 and 10.200.2.0/24 exist only inside them), each path
rate-limited with tbf so that a second path matters.  Nothing touches the host's own
interfaces: veths are created directly inside the namespaces.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

MPTCP_PROTOCOL = 262  # IPPROTO_MPTCP
NS_COMMAND_TIMEOUT_S = 20.0
# What a path's tbf may hold: enough for TSO bursts, short enough that the rate is the rate.
TBF_BURST = "256kb"
TBF_LATENCY = "100ms"


class Unavailable(Exception):
    """This machine cannot build the namespaces (no root, no ip, no MPTCP)."""


def mptcp_missing_reason() -> str | None:
    """Why this kernel cannot open an MPTCP socket, or None when it can."""
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM, MPTCP_PROTOCOL).close()
    except OSError as exc:
        return f"this kernel has no Multipath TCP ({exc.strerror})"
    return None


def netns_missing_reason() -> str | None:
    """Why network namespaces cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "tc"):
        if not any(os.access(os.path.join(d, tool), os.X_OK)
                   for d in ("/usr/sbin", "/sbin", "/usr/bin", "/bin")):
            return f"{tool} (iproute2) is not installed"
    return None


def run(argv: Sequence[str], *, timeout_s: float = NS_COMMAND_TIMEOUT_S) -> str:
    """Run a command; its stdout, or an exception carrying its stderr."""
    result = subprocess.run(list(argv), capture_output=True, text=True, check=False,
                            timeout=timeout_s)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): "
                           f"{result.stderr.strip()}")
    return result.stdout


@dataclass(frozen=True, slots=True)
class Namespace:
    name: str

    def command(self, *argv: str) -> list[str]:
        """``argv`` run inside this namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, *argv: str) -> str:
        return run(self.command(*argv))

    def ip(self, *argv: str) -> str:
        return run(["ip", "-n", self.name, *argv])

    def rx_bytes(self, device: str) -> int:
        """Bytes received on ``device`` so far."""
        [link] = json.loads(self.ip("-j", "-s", "link", "show", device))
        return int(link["stats64"]["rx"]["bytes"])

    def mptcp_counters(self) -> dict[str, int]:
        """The MPTcpExt counters of this namespace (``nstat``'s MPTcp lines)."""
        lines = self.run("cat", "/proc/net/netstat").splitlines()
        counters: dict[str, int] = {}
        for names, values in zip(lines[::2], lines[1::2], strict=True):
            prefix, _, keys = names.partition(":")
            if prefix == "MPTcpExt":
                counters.update(zip((prefix + key for key in keys.split()),
                                    map(int, values.split(":")[1].split()), strict=True))
        return counters


@contextlib.contextmanager
def namespace(label: str) -> Iterator[Namespace]:
    """A fresh namespace with a name unique to this run, loopback up; deleted on exit."""
    ns = Namespace(f"sf-{label}-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    run(["ip", "netns", "add", ns.name])
    try:
        ns.ip("link", "set", "lo", "up")
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns.name], capture_output=True, check=False,
                       timeout=NS_COMMAND_TIMEOUT_S)


@dataclass(frozen=True, slots=True)
class Path:
    """One veth pair: ``device`` is its name on both sides."""

    device: str
    server_address: str
    client_address: str


@dataclass(frozen=True, slots=True)
class TwoPaths:
    server: Namespace
    client: Namespace
    paths: tuple[Path, Path]

    def announce_second_path(self) -> None:
        """Have the server signal its second address (ADD_ADDR), so clients open a
        second subflow to it over the second veth."""
        second = self.paths[1]
        self.server.ip("mptcp", "endpoint", "add", second.server_address, "dev",
                       second.device, "signal")

    def forget_second_path(self) -> None:
        self.server.ip("mptcp", "endpoint", "flush")

    def take_down(self, path: Path) -> None:
        """Cut ``path``: the client's end goes down, the server's loses its carrier."""
        self.client.ip("link", "set", path.device, "down")


PATHS = (Path("p1", "10.200.1.1", "10.200.1.2"), Path("p2", "10.200.2.1", "10.200.2.2"))


@contextlib.contextmanager
def two_paths(rate: str = "200mbit") -> Iterator[TwoPaths]:
    """Server and client namespaces joined by two rate-limited paths; the MPTCP limits
    allow two subflows and two accepted ADD_ADDRs on both sides."""
    with namespace("srv") as server, namespace("cli") as client:
        for path in PATHS:
            run(["ip", "link", "add", "name", path.device, "netns", server.name, "type",
                 "veth", "peer", "name", path.device, "netns", client.name])
            for ns, address in ((server, path.server_address),
                                (client, path.client_address)):
                ns.ip("addr", "add", f"{address}/24", "dev", path.device)
                ns.ip("link", "set", path.device, "up")
                ns.run("tc", "qdisc", "add", "dev", path.device, "root", "tbf", "rate",
                       rate, "burst", TBF_BURST, "latency", TBF_LATENCY)
        for ns in (server, client):
            ns.ip("mptcp", "limits", "set", "subflows", "2", "add_addr_accepted", "2")
        yield TwoPaths(server, client, PATHS)
