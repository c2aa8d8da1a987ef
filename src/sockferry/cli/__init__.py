"""The ``sockferry`` command: argument parsing, exit codes, the one ``except``.

Each sub-module registers its sub-commands; this package is the only place that prints
or exits.  ``main`` takes ``argv``, ``stdout`` and ``stderr`` so tests can drive it.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from sockferry import __version__, errors
from sockferry.cli.console import Console
from sockferry.cli.runtime import ExitCode, asyncio_without_ssl, exit_code_for

# Each command: the module that registers it (one per family of sub-commands, each with
# register(subparsers)) and the line that `sockferry --help` shows for it.  Only the
# module of the command asked for is imported, so `sockferry send` does not load the
# TFTP and SCTP stacks and `sockferry --help` or `--version` loads none of them.  The
# lines equal the modules' own help= (tests/cli/test_startup.py checks).
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("ferry", "serve a directory to sockferry clients"),
    "send": ("ferry", "copy local files to a server"),
    "get": ("ferry", "copy files from a server"),
    "ls": ("ferry", "list a directory on a server"),
    "known-hosts": ("known_hosts", "list or forget the TLS certificates trusted on first use"),
    "token": ("token", "make a new shared token, or print the one a server uses"),
    "probe": ("probe", "resolve an address and try to connect to each of its addresses"),
    "sctp-serve": ("sctp", "one-to-many SCTP message server"),
    "sctp-send": ("sctp", "send messages to an SCTP server"),
    "tftp-serve": ("tftp", "serve a directory over TFTP (RFC 1350, 2347-2349, 7440)"),
    "tftp-get": ("tftp", "download a file from a TFTP server"),
    "tftp-put": ("tftp", "upload a file to a TFTP server"),
    "config": ("config", "show every setting a command would use and where it comes from"),
    "completion": ("completion",
                   "print a shell completion script (bash, zsh or fish) on standard output"),
}


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so main() keeps control of stderr."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise errors.UsageError(f"{message} (see '{self.prog} --help')")

    def _get_formatter(self) -> argparse.HelpFormatter:
        # argparse makes a formatter for every add_argument (only to check the argument)
        # and parse_intermixed_args formats the usage up front; its default width asks
        # shutil.get_terminal_size, and importing shutil (with bz2 and lzma) costs ~3 ms
        # of a command's start-up.  The same width, found the same way without it:
        return argparse.HelpFormatter(self.prog, width=_terminal_columns() - 2)


@functools.cache  # asked for every argument added: once per process is enough
def _terminal_columns() -> int:
    """shutil.get_terminal_size().columns: $COLUMNS, else stdout's terminal, else 80."""
    with contextlib.suppress(KeyError, ValueError):
        columns = int(os.environ["COLUMNS"])
        if columns > 0:
            return columns
    stdout = sys.__stdout__
    try:
        return (os.get_terminal_size(stdout.fileno()).columns or 80) if stdout else 80
    except (AttributeError, ValueError, OSError):
        return 80


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``command`` (a known command name) only its module is loaded."""
    return _parsers(command)[0]


def _parsers(command: str | None) -> tuple[argparse.ArgumentParser, Any]:
    """The top parser and its sub-parsers action (``choices`` maps names to parsers)."""
    parser = _Parser(
        prog="sockferry",
        description="Move files and messages over plain sockets: an scp-like TCP file "
        "transfer, a TFTP server and client, and SCTP messaging.",
        epilog="Run 'sockferry COMMAND --help' for a command's options. Options and "
        "arguments may come in any order; '--' ends the options. Exit codes: "
        "0 ok, 1 other failure, 2 usage, 3 network, 4 authentication, 5 refused by "
        "the peer, 6 local storage, 7 protocol or digest, 8 timeout, 9 not available "
        "here, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"sockferry {__version__}")
    _add_global_options(parser, default=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    if command in COMMANDS:
        with asyncio_without_ssl():
            module = importlib.import_module(f"sockferry.cli.{COMMANDS[command][0]}")
        module.register(sub)
        for name, command_parser in sub.choices.items():
            # The same options after the command; SUPPRESS keeps what came before it.
            _add_global_options(command_parser, default=argparse.SUPPRESS)
            command_parser.set_defaults(command=name)
    else:  # no command (--help, --version) or a wrong one: names and lines suffice
        for name, (_, summary) in COMMANDS.items():
            sub.add_parser(name, help=summary, add_help=False)
    return parser, sub


def command_parser(command: str) -> argparse.ArgumentParser:
    """The parser of one command (a name in COMMANDS)."""
    parser: argparse.ArgumentParser = _parsers(command)[1].choices[command]
    return parser


def _add_global_options(parser: argparse.ArgumentParser, default: object) -> None:
    group = parser.add_argument_group("global options (before or after the command)")
    group.add_argument("--debug", action="store_true", default=default,
                       help="show debug logs and the traceback of unexpected errors")
    group.add_argument("-q", "--quiet", action="store_true", default=default,
                       help="print nothing but errors and the results asked for: no "
                       "progress bar, no notice, no summary")
    group.add_argument("-v", "--verbose", action="store_true", default=default,
                       help="one line per file or message, and the summary even when "
                       "stderr is not a terminal")
    group.add_argument("--config", metavar="FILE", default=None if default is False else default,
                       help="read settings from this TOML file only (default: "
                       "/etc/sockferry/config.toml, then ~/.config/sockferry/config.toml; "
                       "--config /dev/null reads none)")


def parse_command_line(argv: Sequence[str]) -> argparse.Namespace:
    """Global options before the command, then the command's own options and arguments
    in any order (``parse_intermixed_args``); ``--`` ends the options."""
    args = list(argv)
    at = _command_index(args)
    if at is None or args[at] not in COMMANDS:
        # --help, --version, no command or a wrong one: the top parser says which.
        return build_parser(None).parse_args(args)
    head, command, tail = args[:at], args[at], args[at + 1:]
    namespace = build_parser(None).parse_args([*head, command])  # the stubs take nothing
    from sockferry.cli import config  # noqa: PLC0415

    parser = command_parser(command)
    defaults = config.hide_defaults(parser)  # to see what the command line set
    # parse_intermixed_args mishandles '--' (Python 3.11 drops the positionals after
    # it): arguments after '--' that look like options stand in as placeholders.
    stand_ins: dict[str, str] = {}
    if "--" in tail:
        cut = tail.index("--")
        rest = []
        for arg in tail[cut + 1:]:
            stand_in = arg
            if arg.startswith("-"):  # NUL cannot come from a real command line
                stand_in = f"\x00{len(stand_ins)}"
                stand_ins[stand_in] = arg
            rest.append(stand_in)
        tail = [*tail[:cut], *rest]
    parser.parse_intermixed_args(tail, namespace)
    for key, value in vars(namespace).items():
        if isinstance(value, str) and value in stand_ins:
            setattr(namespace, key, stand_ins[value])
        elif isinstance(value, list):
            setattr(namespace, key, [stand_ins.get(v, v) if isinstance(v, str) else v
                                     for v in value])
    files = config.read_files(namespace.config)
    config.check(files, command_parser, COMMANDS)
    config.resolve(command, parser, namespace, defaults, files, os.environ)
    return namespace


def main(argv: Sequence[str] | None = None, stdout: TextIO | None = None,
         stderr: TextIO | None = None, started: Callable[[], None] | None = None) -> int:
    """Entry point of the ``sockferry`` command; returns the exit code.  ``started``
    is called once the command line is parsed (and the command's modules imported),
    before the command runs."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    args_list = list(sys.argv[1:] if argv is None else argv)
    console = Console(out, err)
    try:
        with contextlib.redirect_stdout(out):  # --help goes where the caller said
            args = parse_command_line(args_list)
    except errors.UsageError as exc:
        console.error(str(exc))
        return ExitCode.USAGE
    except SystemExit as exc:  # --help and --version
        return int(exc.code or 0)
    if started is not None:
        started()
    debug: bool = args.debug
    console.quiet, console.verbose = args.quiet, args.verbose
    _configure_logging(err, debug, args.quiet, getattr(args, "log_format", "text"))
    try:
        handler: Callable[[argparse.Namespace, Console], int] = args.handler
        return handler(args, console)
    except errors.SockferryError as exc:
        console.error(str(exc))
        return exit_code_for(exc)
    except KeyboardInterrupt:
        console.error("interrupted")
        return ExitCode.INTERRUPTED
    except Exception as exc:  # a bug: say so in one line, details only with --debug
        if debug:
            import traceback  # noqa: PLC0415 - only a bug needs it

            traceback.print_exc(file=err)
        console.error(f"internal error: {type(exc).__name__}: {exc} — please report this "
                      "bug (run with --debug for details)")
        return ExitCode.FAILURE
    finally:
        console.close()


def run() -> None:
    """The console script and ``python -m sockferry``: ``main``, then exit at once.

    Once main has returned nothing is left to do but flush (argparse's --help and
    --version leave their text in stdout's buffer), yet interpreter finalization (tearing
    down every module, joining the resolver threads) takes ~20 ms after a transfer:
    ``os._exit`` skips it.  In-process callers use ``main``, which returns.
    """
    gc.disable()  # until the command runs: see _started
    code = main(started=_started)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            stream.flush()
    os._exit(code)


def _started() -> None:
    """The command line is parsed and the command's modules are imported: collect garbage
    from now on, but never look at what start-up made again.  Start-up allocates objects
    that live until exit (modules, classes, functions), so the ~40 collections it would
    trigger find nothing, and each later full collection would walk them all again (a
    no-op ``send -r -u`` of 10,000 files spent ~6 ms collecting during start-up, and
    twice as long afterwards as with them frozen)."""
    gc.freeze()
    gc.set_threshold(GC_YOUNG_OBJECTS)
    gc.enable()


# Objects allocated before the youngest generation is collected (Python's default: 700).
# A tree of small files makes a few objects a file that live to the end (its outcome):
# at 700, a no-op --update of 10,000 files collected 45 times (~4 ms), walking objects
# that all survive; only cyclic garbage waits longer for collection.
GC_YOUNG_OBJECTS = 20_000


def _command_index(argv: list[str]) -> int | None:
    """Where the command word is: the first argument that is not an option nor the value
    of --config (the only top-level option that takes one)."""
    after_config = False
    for i, arg in enumerate(argv):
        if after_config:
            after_config = False
        elif arg == "--config":
            after_config = True
        elif not arg.startswith("-"):
            return i
    return None


def _configure_logging(stream: TextIO, debug: bool, quiet: bool = False,
                       log_format: str = "text") -> None:
    # Not at the top: --help and --version never log, and logging costs ~10 ms.
    import logging  # noqa: PLC0415

    from sockferry.cli.logs import EscapingFormatter, JsonFormatter  # noqa: PLC0415

    root = logging.getLogger("sockferry")
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(stream)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(EscapingFormatter(
            "%(asctime)s %(name)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S"))
    # sctp-serve prints association changes on stdout; as text logs they would repeat.
    logging.getLogger("sockferry.association").setLevel(
        logging.NOTSET if log_format == "json" else logging.WARNING)
    root.addHandler(handler)
    # -q: a server logs its warnings and errors only.
    root.setLevel(logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO)
    root.propagate = False
