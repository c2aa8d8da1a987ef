"""Serve a directory and copy files to and from it, in one asyncio program.

Run it as ``python examples/copy_files.py``: it serves a temporary directory on a free
loopback port, uploads a file, lists, downloads it again and checks the bytes.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import tempfile
from pathlib import Path

import sockferry


async def main() -> None:
    token = secrets.token_urlsafe(32)  # 256 random bits: what server and clients share
    with tempfile.TemporaryDirectory() as served, tempfile.TemporaryDirectory() as here:
        report = Path(here, "report.bin")
        report.write_bytes(os.urandom(256 * 1024))
        server = await sockferry.serve(served, "127.0.0.1", 0, token=token)  # port 0: any
        async with server, sockferry.connect("127.0.0.1", server.port,
                                             token=token) as client:
            await client.mkdir("inbox")
            sent = await client.put(report, "inbox/report.bin")
            print(f"sent {sent.source} as {sent.target}: {sent.size} bytes")
            for entry in await client.list("inbox"):
                print(f"  {entry.kind.name.lower():9} {entry.size:>8} {entry.path}")
            back = await client.get("inbox/report.bin", Path(here, "copy.bin"))
            print(f"fetched {back.source} to {back.target}")
        assert Path(here, "copy.bin").read_bytes() == report.read_bytes()
        print("the copy is byte-identical")


if __name__ == "__main__":
    asyncio.run(main())
