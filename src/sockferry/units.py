"""Human-readable sizes, durations and rates for logs and summaries."""

from __future__ import annotations

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def format_bytes(count: float) -> str:
    value = float(count)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def format_rate(count: float, seconds: float) -> str:
    if seconds <= 0:
        return "-"
    return f"{format_bytes(count / seconds)}/s"
