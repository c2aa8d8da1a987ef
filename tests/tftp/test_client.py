"""The client's errors keep what tells them apart: a refusal's TFTP code, a network
error's errno, under the message that names the file and the server.

The server here is a raw socket on loopback that answers the request by hand.
"""

from __future__ import annotations

import asyncio
import errno
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from sockferry.addresses import HostPort
from sockferry.errors import NetworkError, PeerRefused
from sockferry.tftp.client import ClientOptions, download
from sockferry.tftp.packets import (
    ErrorCode,
    TransferRequest,
    decode_packet,
    encode_data,
    encode_error,
)
from tests.tftp.udp_helpers import Addr, client_socket

WAIT_S = 5.0


@contextmanager
def hand_server(answer: Callable[[Addr], None]) -> Iterator[int]:
    """A request port on loopback whose first request gets ``answer(client)``."""
    listener = client_socket(WAIT_S)
    seen: list[object] = []

    def serve() -> None:
        data, client = listener.recvfrom(600)
        seen.append(decode_packet(data))
        answer(client)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        thread.join(WAIT_S)
        listener.close()
    assert len(seen) == 1 and isinstance(seen[0], TransferRequest)


def test_a_refusal_keeps_its_tftp_code(tmp_path: Path) -> None:
    def refuse(client: Addr) -> None:
        with client_socket() as tid:
            tid.sendto(encode_error(ErrorCode.ACCESS_VIOLATION, "not for you"), client)

    with hand_server(refuse) as port, pytest.raises(PeerRefused) as info:
        asyncio.run(download(HostPort("127.0.0.1", port), "secret", str(tmp_path / "s"),
                             ClientOptions()))
    assert info.value.code == ErrorCode.ACCESS_VIOLATION
    assert str(info.value) == f"127.0.0.1:{port} refused 'secret': not for you " \
        "(TFTP error 2, access violation)"
    assert isinstance(info.value.__cause__, PeerRefused)


def test_a_network_error_keeps_its_errno(tmp_path: Path) -> None:
    # DATA 1 from a TID that is closed at once: the client's ACK meets a closed port,
    # and the ICMP error comes back on the client's connected socket.
    def vanish(client: Addr) -> None:
        with client_socket() as tid:
            tid.sendto(encode_data(1, b"x" * 512), client)

    with hand_server(vanish) as port, pytest.raises(NetworkError) as info:
        asyncio.run(download(HostPort("127.0.0.1", port), "file", str(tmp_path / "f"),
                             ClientOptions()))
    error = info.value
    assert type(error) is NetworkError
    assert error.errno == errno.ECONNREFUSED
    assert error.address is not None and error.address.startswith("127.0.0.1:")
    assert str(error).startswith(f"transfer of 'file' with 127.0.0.1:{port} failed: ")
    cause = error.__cause__
    assert isinstance(cause, NetworkError) and cause.errno == errno.ECONNREFUSED
    assert not (tmp_path / "f").exists()
