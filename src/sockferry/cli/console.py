"""Where the command line writes: results to stdout, messages and progress to stderr.

Everything written here goes through ``safe_text.escape``: file names, error texts and
log lines quote what peers sent, and a peer must not be able to write control sequences
to the user's terminal or forge lines of output or of the log.
"""

from __future__ import annotations

import contextlib
from types import TracebackType
from typing import TYPE_CHECKING, TextIO

from sockferry.safe_text import escape

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID


class TransferProgress:
    """A progress bar (bytes, rate, ETA) that is silent when nobody watches."""

    def __init__(self, progress: Progress | None) -> None:
        self._progress = progress
        self._tasks: dict[str, TaskID] = {}

    def start(self, key: str, description: str, total: int | None) -> None:
        if self._progress is not None:
            from rich.markup import escape as markup_escape  # noqa: PLC0415 - with the bar

            # The bar's label is rich markup: a name like "[link=...]" must stay text.
            label = markup_escape(escape(description))
            self._tasks[key] = self._progress.add_task(label, total=total)

    def advance(self, key: str, nbytes: int) -> None:
        if self._progress is not None and key in self._tasks:
            self._progress.advance(self._tasks[key], nbytes)

    def finish(self, key: str) -> None:
        if self._progress is not None and key in self._tasks:
            task = self._tasks.pop(key)
            self._progress.remove_task(task)

    def __enter__(self) -> TransferProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.stop()


class Console:
    """stdout for results, stderr for errors, notices, summaries and progress bars.

    The one rule of every command: ``quiet`` (-q) leaves errors and the results asked for
    (an ``ls`` listing, ``token show``, received messages); a summary is written only on
    a terminal or with ``verbose`` (-v).
    """

    def __init__(self, stdout: TextIO, stderr: TextIO, *, quiet: bool = False,
                 verbose: bool = False) -> None:
        self.stdout = stdout
        self.stderr = stderr
        self.quiet = quiet
        self.verbose = verbose

    @property
    def interactive(self) -> bool:
        isatty = getattr(self.stderr, "isatty", None)
        return bool(isatty and isatty())

    def print(self, text: str = "") -> None:
        """One line on stdout (a result: an ``ls`` entry, a summary)."""
        self.stdout.write(escape(text) + "\n")
        self.stdout.flush()

    def notice(self, text: str) -> None:
        if self.quiet:
            return
        self.stderr.write(f"sockferry: {escape(text)}\n")
        self.stderr.flush()

    def summary(self, text: str) -> None:
        """What a command did (files, bytes, rate): for a person watching, or with -v."""
        if self.verbose or self.interactive:
            self.notice(text)

    def error(self, text: str) -> None:
        self.stderr.write(f"sockferry: error: {escape(text)}\n")
        self.stderr.flush()

    def progress(self, quiet: bool = False) -> TransferProgress:
        if quiet or self.quiet or not self.interactive:
            return TransferProgress(None)
        # rich costs a tenth of a second to import: only when a bar is shown.
        from rich.console import Console as RichConsole  # noqa: PLC0415
        from rich.progress import (  # noqa: PLC0415
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=RichConsole(file=self.stderr, highlight=False, soft_wrap=True),
            transient=True,
        )
        return TransferProgress(bar)

    def close(self) -> None:
        for stream in (self.stdout, self.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()

