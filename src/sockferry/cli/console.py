"""Where the command line writes: results to stdout, messages and progress to stderr.

Everything written here goes through ``safe_text.escape``: file names, error texts and
log lines quote what peers sent, and a peer must not be able to write control sequences
to the user's terminal or forge lines of output or of the log.
"""

from __future__ import annotations

import contextlib
from types import TracebackType
from typing import TYPE_CHECKING, Any, TextIO

from sockferry.safe_text import escape
from sockferry.units import format_bytes, format_rate

if TYPE_CHECKING:
    from rich.progress import Progress, Task, TaskID


class TransferProgress:
    """Progress bars on stderr, silent when nobody watches.

    One row per file in flight and, for a copy of several files, an overall row above
    them (files done of started, bytes, rate, ETA).  Units are IEC, as in the summaries.
    A file's position counts its holes, but its rate and ETA count only the bytes that
    really moved; a file whose bytes are all through shows "verifying" until its digest
    is checked and it is committed.  The overall ETA appears only once every file has
    been started, when the totals are final.
    """

    def __init__(self, progress: Progress | None) -> None:
        self._progress = progress
        self._tasks: dict[str, TaskID] = {}
        self._overall: TaskID | None = None
        self._files_started = 0
        self._files_done = 0

    @property
    def shown(self) -> bool:
        """False when nobody watches (-q, or stderr not a terminal): nothing to update."""
        return self._progress is not None

    def start(self, key: str, description: str, total: int | None) -> None:
        if self._progress is None:
            return
        from rich.markup import escape as markup_escape  # noqa: PLC0415 - with the bar

        if self._overall is None:  # shown from the second file on
            self._overall = self._progress.add_task("", total=0, moved=0, sparse=0,
                                                    final=False, visible=False)
        self._files_started += 1
        overall = self._progress.tasks[self._overall]
        self._progress.update(self._overall, total=(overall.total or 0) + (total or 0),
                              visible=self._files_started > 1,
                              description=self._overall_label())
        # The bar's label is rich markup: a name like "[link=...]" must stay text.
        label = markup_escape(escape(description))
        self._tasks[key] = self._progress.add_task(label, total=total, moved=0, sparse=0,
                                                   final=True)

    def advance(self, key: str, nbytes: int, hole: bool = False) -> None:
        if self._progress is None or key not in self._tasks or self._overall is None:
            return
        for task_id in (self._tasks[key], self._overall):
            fields = self._progress.tasks[task_id].fields
            if hole:
                self._progress.update(task_id, advance=nbytes,
                                      sparse=fields["sparse"] + nbytes)
            else:
                self._progress.update(task_id, advance=nbytes, moved=fields["moved"] + nbytes)

    def finish(self, key: str) -> None:
        if self._progress is not None and key in self._tasks:
            task = self._tasks.pop(key)
            self._progress.remove_task(task)
            self._files_done += 1
            if self._overall is not None:
                self._progress.update(self._overall, description=self._overall_label())

    def all_started(self) -> None:
        if self._progress is not None and self._overall is not None:
            self._progress.update(self._overall, final=True,
                                  description=self._overall_label())

    def _overall_label(self) -> str:
        return f"{self._files_done}/{self._files_started} files"

    def __enter__(self) -> TransferProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.stop()


def amount_text(completed: float, total: float | None, sparse: float) -> str:
    """``1.2 GiB of 2.0 GiB (1.9 GiB sparse)``: the position, holes included."""
    text = format_bytes(completed) if total is None else \
        f"{format_bytes(completed)} of {format_bytes(total)}"
    return f"{text} ({format_bytes(sparse)} sparse)" if sparse else text


def rate_text(moved: float, elapsed: float | None) -> str:
    """The rate of the bytes that moved (IEC, as the summaries)."""
    if not elapsed or elapsed < 0.2:
        return ""
    return format_rate(moved, elapsed)


def eta_text(moved: float, elapsed: float | None, remaining: float, final: bool) -> str:
    """Time left at the rate so far, or nothing while it cannot be honest (totals still
    growing, too early to rate, or only the digest check left)."""
    if not final or not elapsed or elapsed < 1.0 or moved <= 0 or remaining <= 0:
        return ""
    seconds = int(remaining * elapsed / moved)
    return f"ETA {seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _columns() -> list[Any]:
    from rich.progress import BarColumn, ProgressColumn, TextColumn  # noqa: PLC0415
    from rich.text import Text  # noqa: PLC0415

    class Amount(ProgressColumn):
        def render(self, task: Task) -> Text:
            return Text(amount_text(task.completed, task.total, task.fields["sparse"]))

    class Rate(ProgressColumn):
        def render(self, task: Task) -> Text:
            return Text(rate_text(task.fields["moved"], task.elapsed))

    class State(ProgressColumn):
        def render(self, task: Task) -> Text:
            if task.total and task.completed >= task.total and task.fields["final"]:
                return Text("verifying")
            remaining = (task.total or 0) - task.completed
            return Text(eta_text(task.fields["moved"], task.elapsed, remaining,
                                 task.fields["final"]))

    return [TextColumn("[bold]{task.description}"), BarColumn(), Amount(), Rate(), State()]


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
        # rich costs a tenth of a second to import: only when a bar is shown.  It is the
        # cli extra's: without it the command runs the same, without a bar.
        try:
            from rich.console import Console as RichConsole  # noqa: PLC0415
            from rich.progress import Progress  # noqa: PLC0415
        except ImportError:
            return TransferProgress(None)

        bar = Progress(*_columns(),
                       console=RichConsole(file=self.stderr, highlight=False, soft_wrap=True),
                       transient=True)
        return TransferProgress(bar)

    def close(self) -> None:
        for stream in (self.stdout, self.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()

