"""linux/sctp.h as laid out in sctp/linux_abi.py, checked against the C compiler.

A C program compiled here against the installed UAPI header prints every constant,
structure size and field offset that linux_abi defines; each must match.  Runs on any
Linux host: it needs the header and gcc, not a kernel with SCTP.
"""

from __future__ import annotations

import contextlib
import os
import struct
import subprocess
from enum import IntEnum, IntFlag

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sockferry.errors import MalformedPacket
from sockferry.sctp import linux_abi as abi
from tests.conftest import require_program

HEADER = "/usr/include/linux/sctp.h"

# Each enum of linux_abi and the prefix its members carry in C.
ENUMS: tuple[tuple[type[IntEnum] | type[IntFlag], str], ...] = (
    (abi.SockOpt, "SCTP_"), (abi.AssocGroup, "SCTP_"), (abi.CmsgType, "SCTP_"),
    (abi.SendFlag, "SCTP_"), (abi.NotificationType, "SCTP_"), (abi.SacState, "SCTP_"),
    (abi.SsfFlag, "SCTP_"), (abi.PeerAddrFlag, "SPP_"),
)
SINGLE_CONSTANTS = {
    "MSG_NOTIFICATION": abi.MSG_NOTIFICATION,
    "MSG_EOR": abi.MSG_EOR,
    "IPPROTO_SCTP": abi.IPPROTO_SCTP,
    "AF_INET": abi.AF_INET,
    "AF_INET6": abi.AF_INET6,
    "SCTP_PARTIAL_DELIVERY_ABORTED": abi.PARTIAL_DELIVERY_ABORTED,
}


def expected_values() -> dict[str, int]:
    """Every C expression with the value linux_abi gives it."""
    values = dict(SINGLE_CONSTANTS)
    for enum, prefix in ENUMS:
        for member in enum:
            assert member.name is not None
            values[prefix + member.name] = int(member)
    for layout in abi.LAYOUTS:
        if layout.c_type.startswith("struct "):
            values[f"sizeof({layout.c_type})"] = layout.size
        for field, offset in layout.offsets.items():
            values[f"offsetof({layout.c_type}, {field})"] = offset
    return values


@pytest.fixture(scope="module")
def c_values(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    """What the C compiler says for each expression of ``expected_values``."""
    if not os.path.exists(HEADER):
        if os.environ.get("SOCKFERRY_REQUIRE_PEERS") == "1":
            pytest.fail(f"{HEADER} is required (install linux-libc-dev)")
        pytest.skip(f"{HEADER} is not installed")
    gcc = require_program("gcc")
    names = list(expected_values())
    lines = [f'    printf("%lld\\n", (long long)({name}));' for name in names]
    source = "\n".join([
        "#include <stddef.h>", "#include <stdint.h>", "#include <stdio.h>",
        "#include <sys/socket.h>", "#include <netinet/in.h>", "#include <linux/sctp.h>",
        "int main(void) {", *lines, "    return 0;", "}", ""])
    work = tmp_path_factory.mktemp("abi")
    (work / "abi.c").write_text(source)
    subprocess.run([gcc, "-Wall", "-Werror", "-o", str(work / "abi"), str(work / "abi.c")],
                   check=True, capture_output=True, timeout=60)
    out = subprocess.run([str(work / "abi")], check=True, capture_output=True, text=True,
                         timeout=10).stdout.split()
    return dict(zip(names, map(int, out), strict=True))


@pytest.mark.parametrize("expression", list(expected_values()))
def test_matches_c(c_values: dict[str, int], expression: str) -> None:
    assert expected_values()[expression] == c_values[expression]


def test_every_layout_is_checked() -> None:
    checked = {name for name in expected_values() if name.startswith("sizeof(")}
    structs = [layout for layout in abi.LAYOUTS if layout.c_type.startswith("struct ")]
    assert len(checked) == len(structs) == len(abi.LAYOUTS) - 1  # the union: offsets only
    assert all(layout.offsets for layout in abi.LAYOUTS)


# ---------------------------------------------------------------------------------------
# Codecs


@pytest.mark.parametrize("address", [("127.0.0.1", 9), ("::1", 2345, 0, 0),
                                     ("fe80::1", 1, 0x12345, 3)])
def test_sockaddr_round_trip(address: abi.InetAddr) -> None:
    raw = abi.encode_sockaddr(address)
    assert abi.decode_sockaddr(raw) == (address, len(raw))


def test_ipv4_mapped_decodes_as_ipv4() -> None:
    raw = abi.encode_sockaddr(("127.0.0.1", 7, 0, 0))
    assert len(raw) == abi.SOCKADDR_IN6.size
    assert abi.decode_sockaddr(raw) == (("127.0.0.1", 7), len(raw))


def test_getaddrs_answer() -> None:
    addrs: list[abi.InetAddr] = [("127.0.0.1", 5), ("::1", 5, 0, 0)]
    raw = abi.GETADDRS.pack(0, 2) + b"".join(abi.encode_sockaddr(a) for a in addrs)
    assert abi.decode_getaddrs(raw + b"\0" * 64) == addrs


def test_ppid_travels_in_network_order() -> None:
    raw = abi.encode_sndinfo(stream=3, ppid=0x01020304, assoc_id=7,
                             flags=abi.SendFlag.UNORDERED)
    offset = abi.SNDINFO.offsets["snd_ppid"]
    assert raw[offset:offset + 4] == b"\x01\x02\x03\x04"
    rcv = bytearray(abi.RCVINFO.size)
    ppid_at = abi.RCVINFO.offsets["rcv_ppid"]
    rcv[ppid_at:ppid_at + 4] = b"\x01\x02\x03\x04"
    struct.pack_into("=i", rcv, abi.RCVINFO.offsets["rcv_assoc_id"], 9)
    info = abi.decode_rcvinfo(bytes(rcv))
    assert (info.ppid, info.assoc_id) == (0x01020304, 9)


def test_assoc_change_with_abort_chunk() -> None:
    abort = bytes.fromhex("06000008") + b"\0\x0c\0\x04"
    raw = abi.ASSOC_CHANGE.pack(abi.NotificationType.ASSOC_CHANGE, 0,
                                abi.ASSOC_CHANGE.size + len(abort),
                                abi.SacState.COMM_LOST, 0, 0, 0, 42) + abort
    note = abi.decode_notification(raw)
    assert note == abi.AssocChangeNote(abi.SacState.COMM_LOST, 0, 0, 0, 42, abort)


def test_shutdown_and_unknown_notifications() -> None:
    raw = abi.SHUTDOWN_EVENT.pack(abi.NotificationType.SHUTDOWN_EVENT, 0, 12, 5)
    assert abi.decode_notification(raw) == abi.ShutdownNote(5)
    other = abi.SN_HEADER.pack(abi.NotificationType.SENDER_DRY_EVENT, 0, 12) + b"\0" * 4
    assert abi.decode_notification(other) == abi.OtherNote(abi.NotificationType.SENDER_DRY_EVENT)


@given(st.binary(max_size=200))
def test_garbage_raises_only_malformed(data: bytes) -> None:
    for decode in (abi.decode_notification, abi.decode_rcvinfo, abi.decode_getaddrs,
                   abi.decode_sockaddr):
        with contextlib.suppress(MalformedPacket):
            decode(data)
