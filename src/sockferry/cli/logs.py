"""The log format of every command: one record, one line, peers' text escaped."""

from __future__ import annotations

import logging
from typing import Any

from sockferry.logfields import FIELDS
from sockferry.safe_text import escape


class EscapingFormatter(logging.Formatter):
    """Log lines with what peers sent escaped: one record is one line, whatever a client
    put in a path; tracebacks (``--debug``, internal errors) keep their line breaks."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        return "\n".join(map(escape, super().formatException(ei).split("\n")))

    def formatStack(self, stack_info: str) -> str:
        return "\n".join(map(escape, super().formatStack(stack_info).split("\n")))


class JsonFormatter(logging.Formatter):
    """One JSON object per line (ASCII only, so no peer's text can reach a terminal as
    control characters): time (UTC, RFC 3339), level, logger, event ("log" for a plain
    line), message, the FIELDS the record carries, and the traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        import json  # noqa: PLC0415
        import time  # noqa: PLC0415

        seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        out: dict[str, object] = {
            "time": f"{seconds}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "logger": record.name,
            "event": getattr(record, "event", "log"), "message": record.getMessage()}
        for name in FIELDS:
            if name in record.__dict__:
                out[name] = record.__dict__[name]
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=True, default=str)
