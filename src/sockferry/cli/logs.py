"""The log format of every command: one record, one line, peers' text escaped."""

from __future__ import annotations

import logging
from typing import Any

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
