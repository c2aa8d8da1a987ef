"""Build and drive ``usrsctp_peer.c``: usrsctp, an independent SCTP stack, over UDP."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

SOURCE = Path(__file__).with_name("usrsctp_peer.c")
HEADER = Path("/usr/include/usrsctp.h")


def build(directory: Path) -> Path | None:
    """Compile the peer into ``directory``; None when gcc or libusrsctp is missing."""
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None or not HEADER.exists():
        return None
    binary = directory / "usrsctp_peer"
    subprocess.run([compiler, "-O2", "-Wall", "-Werror", "-o", str(binary), str(SOURCE),
                    "-lusrsctp", "-lpthread"], check=True, capture_output=True, text=True)
    return binary


def free_udp_port() -> int:
    """usrsctp needs a UDP port number up front: take one the kernel just handed out."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class UsrsctpPeer:
    """One usrsctp_peer process: commands in, output lines out."""

    def __init__(self, process: asyncio.subprocess.Process, udp_port: int) -> None:
        self.process = process
        self.udp_port = udp_port
        self.lines: list[str] = []

    @classmethod
    async def start(cls, binary: Path, *, cpu: str | None = None) -> UsrsctpPeer:
        udp_port = free_udp_port()
        argv = [str(binary), str(udp_port)]
        if cpu is not None:
            argv = ["taskset", "-c", cpu, *argv]
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            env={**os.environ})
        peer = cls(process, udp_port)
        await peer.expect("READY")
        return peer

    async def command(self, text: str, timeout_s: float = 30.0) -> str:
        """Run one command; returns its OK line or raises with the peer's error."""
        assert self.process.stdin is not None
        self.process.stdin.write(text.encode() + b"\n")
        await self.process.stdin.drain()
        name = text.split(maxsplit=1)[0]
        line = await self.expect(rf"(OK|ERR) {name}\b", timeout_s)
        if line.startswith("ERR"):
            raise AssertionError(f"usrsctp peer: {line}")
        return line

    async def expect(self, pattern: str, timeout_s: float = 30.0) -> str:
        """The next output line matching ``pattern`` (earlier ones are kept in lines)."""
        assert self.process.stdout is not None
        async with asyncio.timeout(timeout_s):
            while True:
                raw = await self.process.stdout.readline()
                if not raw:
                    raise AssertionError(f"usrsctp peer ended; it said: {self.lines[-5:]}")
                line = raw.decode().strip()
                self.lines.append(line)
                if re.match(pattern, line):
                    return line

    async def close(self) -> None:
        if self.process.returncode is None:
            try:
                await self.command("QUIT", timeout_s=5)
                async with asyncio.timeout(10):
                    await self.process.wait()
            except (AssertionError, TimeoutError, ConnectionError):
                self.process.kill()
                await self.process.wait()


def fields(line: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in line.split() if "=" in item)


def pattern_bytes(length: int, seed: int) -> bytes:
    """What the peer's SEND puts on the wire: byte i is (seed + i) & 0xff."""
    cycle = bytes((seed + i) & 0xFF for i in range(256))
    return (cycle * (length // 256 + 1))[:length]
