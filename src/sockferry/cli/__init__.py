"""The ``sockferry`` command: argument parsing, exit codes, the one ``except``.

Each sub-module registers its sub-commands; this package is the only place that prints
or exits.  ``main`` takes ``argv``, ``stdout`` and ``stderr`` so tests can drive it.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from sockferry import __version__, errors
from sockferry.cli.console import Console
from sockferry.cli.runtime import ExitCode, exit_code_for

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
}


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so main() keeps control of stderr."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise errors.UsageError(f"{message} (see '{self.prog} --help')")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``command`` (a known command name) only its module is loaded."""
    parser = _Parser(
        prog="sockferry",
        description="Move files and messages over plain sockets: an scp-like TCP file "
        "transfer, a TFTP server and client, and SCTP messaging.",
        epilog="Run 'sockferry COMMAND --help' for a command's options. Exit codes: "
        "0 ok, 1 other failure, 2 usage, 3 network, 4 authentication, 5 refused by "
        "the peer, 6 local storage, 7 protocol or digest, 8 timeout, 9 not available "
        "here, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"sockferry {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show debug logs and the traceback of unexpected errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    if command in COMMANDS:
        importlib.import_module(f"sockferry.cli.{COMMANDS[command][0]}").register(sub)
    else:  # no command (--help, --version) or a wrong one: names and lines suffice
        for name, (_, summary) in COMMANDS.items():
            sub.add_parser(name, help=summary, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None, stdout: TextIO | None = None,
         stderr: TextIO | None = None) -> int:
    """Entry point of the ``sockferry`` command; returns the exit code."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    args_list = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args_list
    console = Console(out, err)
    try:
        with contextlib.redirect_stdout(out):  # --help goes where the caller said
            args = build_parser(_command_in(args_list)).parse_args(args_list)
    except errors.UsageError as exc:
        console.error(str(exc))
        return ExitCode.USAGE
    except SystemExit as exc:  # --help and --version
        return int(exc.code or 0)
    _configure_logging(err, debug)
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
    code = main()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            stream.flush()
    os._exit(code)


def _command_in(argv: list[str]) -> str | None:
    """The command word: the first argument that is not an option (top-level options
    take no values)."""
    return next((a for a in argv if not a.startswith("-")), None)


def _configure_logging(stream: TextIO, debug: bool) -> None:
    # Not at the top: --help and --version never log, and logging costs ~10 ms.
    import logging  # noqa: PLC0415

    from sockferry.cli.logs import EscapingFormatter  # noqa: PLC0415

    root = logging.getLogger("sockferry")
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(EscapingFormatter("%(asctime)s %(name)s %(levelname)s %(message)s",
                                           "%Y-%m-%dT%H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    root.propagate = False
