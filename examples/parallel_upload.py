"""Upload many files over one connection at once, with progress, and handle a refusal.

Run it as ``python examples/parallel_upload.py``: it serves a temporary directory, sends
twenty files concurrently (their requests share the connection, pipelined), counts the
bytes as they move, then shows the error a read-only server gives.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import tempfile
from pathlib import Path

import sockferry


async def main() -> None:
    token = secrets.token_urlsafe(32)
    with tempfile.TemporaryDirectory() as served, tempfile.TemporaryDirectory() as here:
        files = []
        for i in range(20):
            path = Path(here, f"part-{i:02d}.bin")
            path.write_bytes(os.urandom(64 * 1024 * (i + 1)))
            files.append(path)
        moved = 0

        def count(nbytes: int) -> None:
            nonlocal moved
            moved += nbytes

        server = await sockferry.serve(served, "127.0.0.1", 0, token=token)  # port 0: any
        async with server, sockferry.connect("127.0.0.1", server.port,
                                             token=token) as client:
            done = await asyncio.gather(*(client.put(p, p.name, progress=count)
                                          for p in files))
        print(f"{len(done)} files, {sum(t.size for t in done)} bytes committed; "
              f"progress saw {moved} bytes")

        server = await sockferry.serve(served, "127.0.0.1", 0, token=token, read_only=True)
        async with server, sockferry.connect("127.0.0.1", server.port,
                                             token=token) as client:
            try:
                await client.put(files[0], "another.bin")
            except sockferry.PeerRefused as exc:
                print(f"refused as expected: {exc}")
            else:
                raise SystemExit("a read-only server took an upload")


if __name__ == "__main__":
    asyncio.run(main())
