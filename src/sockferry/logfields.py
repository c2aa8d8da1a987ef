"""The structured fields of log records that are events (``--log-format json``).

The servers attach them with ``extra=fields(...)``; cli/logs.JsonFormatter writes them.
"""

from __future__ import annotations

# The fields of --log-format json beyond time, level, logger, event and message, in the
# order written; log sites give them with extra=fields(...). Documented in the README.
FIELDS = ("transport", "peer", "local", "path", "direction", "outcome",
          "bytes", "bytes_in", "bytes_out", "files", "duration", "error")


def fields(event: str, **values: object) -> dict[str, object]:
    """``extra=`` for a record that is an event (connection, transfer, association)."""
    unknown = set(values) - set(FIELDS)
    assert not unknown, f"undocumented log fields {unknown}"
    return {"event": event, **values}
