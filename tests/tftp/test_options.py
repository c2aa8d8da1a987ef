"""Option negotiation, server side and client side."""

from __future__ import annotations

import pytest

from sockferry.errors import RemoteProtocolError
from sockferry.tftp.options import (
    ServerLimits,
    TransferOptions,
    accept_oack,
    negotiate,
    requested_options,
)
from sockferry.tftp.packets import ErrorCode

LIMITS = ServerLimits(blksize_max=1468, windowsize_max=32)


def server(requested: dict[str, str], *, is_read: bool = True, file_size: int | None = 1000,
           upload_limit: int | None = None) -> tuple[TransferOptions, dict[str, str]]:
    return negotiate(requested, is_read=is_read, file_size=file_size,
                     upload_limit=upload_limit, limits=LIMITS)


def test_no_options_means_no_oack() -> None:
    assert server({}) == (TransferOptions(), {})


def test_known_options_are_agreed_and_capped() -> None:
    options, oack = server({"blksize": "65464", "windowsize": "64", "timeout": "3",
                            "tsize": "0"})
    assert options == TransferOptions(blksize=1468, windowsize=32, timeout_s=3, tsize=1000)
    assert oack == {"blksize": "1468", "windowsize": "32", "timeout": "3", "tsize": "1000"}


@pytest.mark.parametrize("requested", [
    {"blksize": "7"}, {"blksize": "-1"}, {"blksize": "lots"}, {"blksize": "9" * 30},
    {"timeout": "0"}, {"timeout": "256"}, {"windowsize": "0"}, {"multicast": "1"},
    {"tsize": "x"},
])
def test_unusable_options_are_left_out(requested: dict[str, str]) -> None:
    assert server(requested) == (TransferOptions(), {})


def test_tsize_on_read_without_a_known_size_is_left_out() -> None:
    assert server({"tsize": "0"}, file_size=None) == (TransferOptions(), {})


def test_tsize_on_read_of_an_empty_file_is_left_out() -> None:
    # curl fails a download whose OACK says tsize=0 (tests/tftp/test_interop.py).
    assert server({"tsize": "0"}, file_size=0) == (TransferOptions(), {})
    assert server({"tsize": "0", "blksize": "1468"}, file_size=0)[1] == {"blksize": "1468"}


def test_tsize_on_write_is_echoed_or_refused() -> None:
    options, oack = server({"tsize": "500"}, is_read=False, upload_limit=1000)
    assert options.tsize == 500 and oack == {"tsize": "500"}
    with pytest.raises(RemoteProtocolError) as info:
        server({"tsize": "5000"}, is_read=False, upload_limit=1000)
    assert info.value.code == ErrorCode.DISK_FULL


def test_client_request_leaves_defaults_out() -> None:
    assert requested_options(blksize=512, windowsize=1, timeout_s=None, tsize=None) == {}
    assert requested_options(blksize=1468, windowsize=16, timeout_s=2, tsize=0) == {
        "blksize": "1468", "windowsize": "16", "timeout": "2", "tsize": "0"}


def test_client_accepts_smaller_values_and_defaults_for_missing_ones() -> None:
    asked = {"blksize": "1468", "windowsize": "16", "tsize": "0"}
    assert accept_oack(asked, {"blksize": "1024", "tsize": "77"}) == TransferOptions(
        blksize=1024, windowsize=1, tsize=77)


@pytest.mark.parametrize("oack", [
    {"blksize": "2048"},          # larger than asked
    {"windowsize": "32"},         # larger than asked
    {"timeout": "9"},             # RFC 2349: must be echoed unchanged
    {"multicast": "1"},           # never asked
    {"blksize": "abc"},
    {"blksize": "4"},
])
def test_client_refuses_bad_oack(oack: dict[str, str]) -> None:
    asked = {"blksize": "1468", "windowsize": "16", "timeout": "2"}
    with pytest.raises(RemoteProtocolError) as info:
        accept_oack(asked, oack)
    assert info.value.code == ErrorCode.OPTION_REFUSED
