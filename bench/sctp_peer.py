"""The userspace SCTP side of the benchmark, one process per side.

    python bench/sctp_peer.py receive COUNT            prints READY PORT, then DONE
    python bench/sctp_peer.py send PORT UDP_PORT COUNT SIZE   prints UP, waits for GO

The receiver counts COUNT messages; the sender sends COUNT messages of SIZE bytes once
it reads GO on standard input, then shuts the association down.
"""

from __future__ import annotations

import asyncio
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from sockferry.addresses import HostPort
from sockferry.cli.runtime import run_async
from sockferry.sctp.endpoint import UserMessage
from sockferry.sctp.udp import UdpEndpoint


async def receive(count: int) -> None:
    async with await UdpEndpoint.open([HostPort("127.0.0.1", 0)]) as endpoint:
        print(f"READY {endpoint.sctp_port}", flush=True)
        got = total = 0
        while got < count:
            item = await endpoint.receive()
            if isinstance(item, UserMessage):
                got += 1
                total += len(item.data)
        print(f"DONE {total}", flush=True)
        while True:  # until the sender's SHUTDOWN completes
            item = await endpoint.receive()
            if not isinstance(item, UserMessage) and item.state.value != "COMM_UP":
                return


async def send(port: int, udp_port: int, count: int, size: int) -> None:
    async with await UdpEndpoint.open(peer_udp_port=udp_port) as endpoint:
        assoc = await endpoint.connect(HostPort("127.0.0.1", port))
        print("UP", flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.readline)
        block = os.urandom(size)
        for _ in range(count):
            await endpoint.send(block, to=assoc)
        await endpoint.shutdown(assoc)
        print("SENT", flush=True)


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    numbers = [int(a) for a in args]
    run_async(receive(*numbers) if mode == "receive" else send(*numbers))
