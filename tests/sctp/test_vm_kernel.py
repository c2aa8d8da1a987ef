"""The guest that scripts/vm-test boots really has kernel SCTP."""

from __future__ import annotations

import socket

import pytest

pytestmark = pytest.mark.kernel_sctp


def test_one_to_many_socket_opens() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_SEQPACKET, socket.IPPROTO_SCTP) as sock:
        sock.bind(("127.0.0.1", 0))
        assert sock.getsockname()[1] != 0
